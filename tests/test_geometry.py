"""Soft-prompt geometry options (issue 32): local pooling, the mean-embedding anchor, and the
decoder's own backbone as the encoder. Pure functions first, then tiny random models."""
import pytest
import torch

from e2llm.adapter import PMAAdapter, span_means, span_parts
from e2llm.config import AdapterConfig
from e2llm.errors import ConfigError


def test_span_parts_split_real_tokens_evenly_whatever_the_padding():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0]])
    parts = span_parts(mask, 4)  # (2, 4, 8)
    assert parts[0].long().tolist() == [[1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0],
                                        [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]]
    assert parts[1].long().tolist() == [[0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0],
                                        [0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0]]
    assert not (parts & ~mask.bool()[:, None]).any()  # never padding


def test_span_parts_an_empty_part_takes_the_whole_chunk():
    parts = span_parts(torch.tensor([[1, 1, 0]]), 4)  # 2 real tokens, 4 parts
    assert parts.any(-1).all()  # no part attends over nothing (SDPA would give NaN)
    assert parts.sum(-1).tolist() == [[1, 2, 1, 2]]  # parts 1 and 3 got no token of their own


def test_span_means_are_part_means_at_the_given_rms():
    embeds = torch.arange(8.0).view(1, 4, 2)  # (1, L=4, D=2)
    out = span_means(embeds, torch.ones(1, 4), 2, rms=3.0)
    want = torch.stack([embeds[0, :2].mean(0), embeds[0, 2:].mean(0)])
    want = want * (3.0 / want.pow(2).mean(-1, keepdim=True).sqrt())
    torch.testing.assert_close(out[0], want)


def test_local_pma_soft_token_depends_only_on_its_own_part():
    torch.manual_seed(0)
    ad = PMAAdapter(8, 16, k=2, num_heads=2, ffn_mult=2, output_rms=1.0, local=True)
    states, mask = torch.randn(1, 6, 8), torch.ones(1, 6)
    changed = states.clone()
    changed[0, 4] += 5.0  # a token of the second half
    a, b = ad(states, mask), ad(changed, mask)
    torch.testing.assert_close(a[0, 0], b[0, 0])  # the first soft token does not see it
    assert not torch.allclose(a[0, 1], b[0, 1])
    glob = PMAAdapter(8, 16, k=2, num_heads=2, ffn_mult=2, output_rms=1.0, local=False)
    assert not torch.allclose(glob(states, mask)[0, 0], glob(changed, mask)[0, 0])  # chunk-wide pooling does


def test_anchored_adapter_starts_near_its_anchor():
    torch.manual_seed(0)
    ad = PMAAdapter(8, 16, k=2, num_heads=2, ffn_mult=2, output_rms=1.0, local=True, anchored=True)
    anchor = torch.randn(3, 2, 16)
    out = ad(torch.randn(3, 5, 8), torch.ones(3, 5), anchor)
    rel = (out - anchor).pow(2).mean().sqrt() / anchor.pow(2).mean().sqrt()
    assert 0.02 < float(rel) < 0.2  # a small learned correction, not nothing and not noise as large as the anchor


def test_options_need_the_pma_adapter():
    with pytest.raises(ValueError, match="adapter.span: local needs adapter.kind: pma"):
        AdapterConfig(kind="mlp", span="local")
    with pytest.raises(ValueError, match="adapter.anchor"):
        AdapterConfig(kind="mlp", anchor="mean_embedding")


def test_anchor_refuses_an_encoder_with_its_own_vocabulary(make_tiny_engine):
    with pytest.raises(ConfigError, match="encoder.name_or_path: decoder"):
        make_tiny_engine(adapter={"anchor": "mean_embedding", "tokens_per_chunk": 2})


@pytest.fixture
def icae_engine(make_tiny_engine):
    return make_tiny_engine(encoder={"name_or_path": "decoder", "chunks_per_batch": 8,
                                     "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
                            adapter={"tokens_per_chunk": 2, "span": "local", "anchor": "mean_embedding", "num_heads": 2})


def test_decoder_as_encoder_reads_chunks_with_the_decoders_tokenizer(icae_engine):
    e = icae_engine
    assert e.encoder_tokenizer.get_vocab() == e.decoder_tokenizer.get_vocab()
    assert e.config.encoder.hidden_size == e.config.decoder.hidden_size
    assert e.config.encoder.name_or_path == "decoder"  # a checkpoint records the choice, not a path
    soft = e.encode("The museum was founded in 1911. It holds four thousand maps. " * 3)
    assert soft.vectors.shape[1:] == (2, e.config.decoder.hidden_size)
    assert torch.isfinite(soft.vectors).all()


def test_anchor_is_the_decoders_mean_embedding_of_each_part(icae_engine):
    e = icae_engine
    text = "The museum was founded in 1911."
    ids = e.encoder_tokenizer([text], return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    table = e._decoder_base.get_input_embeddings()
    want = span_means(table(ids).float(), mask, 2, e.config.adapter.output_rms)
    states = torch.zeros(1, ids.shape[1], e.config.encoder.hidden_size)
    with torch.no_grad():
        for p in e.adapter.ffn.parameters():  # adapter output = norm2(h) only; zero its gain: anchor alone
            p.zero_()
        e.adapter.norm2.weight.zero_()
        e.adapter.norm2.bias.zero_()
        torch.testing.assert_close(e.adapt(states, mask, ids), want)


def test_decoder_as_encoder_checkpoint_round_trips(icae_engine, tmp_path):
    from e2llm import E2LLM

    text = "Ida Varga founded the museum in Tallberg in 1911."
    before = icae_engine.encode(text).vectors
    icae_engine.save_pretrained(tmp_path / "ck")
    again = E2LLM.from_pretrained(tmp_path / "ck")
    torch.testing.assert_close(again.encode(text).vectors, before)


def test_encoder_num_layers_keeps_the_first_layers_and_round_trips(make_tiny_engine, tmp_path):
    from e2llm import E2LLM

    full = make_tiny_engine(encoder={"name_or_path": "decoder", "lora": {"r": 0}})
    cut = make_tiny_engine(encoder={"name_or_path": "decoder", "num_layers": 1, "lora": {"r": 0}})
    total = full.encoder.config.num_hidden_layers
    assert total > 1 and cut.encoder.config.num_hidden_layers == 1
    ids = cut.encoder_tokenizer(["The museum was founded in 1911."], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the same first layer: the cut model's output is the full model's after layer 1
        states = full.encoder(input_ids=ids, output_hidden_states=True).hidden_states[1]
        last = cut.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(last, full.encoder.norm(states))
    cut.save_pretrained(tmp_path / "ck")
    again = E2LLM.from_pretrained(tmp_path / "ck")
    assert again.encoder.config.num_hidden_layers == 1
    torch.testing.assert_close(again.encode("Ida Varga founded it.").vectors, cut.encode("Ida Varga founded it.").vectors)


def test_encoder_num_layers_beyond_the_model_is_a_config_error(make_tiny_engine):
    with pytest.raises(ConfigError, match="encoder.num_layers is 99"):
        make_tiny_engine(encoder={"num_layers": 99})
