"""Model matrix: tiny random models of several decoder and encoder families, built from configs
(no downloads), each through encode -> generate -> one training step -> save -> load -> the
same greedy answer; citations checked against full attention on every decoder family."""
import pytest
import torch

from e2llm import E2LLM, ConfigError
from e2llm.citations import answer_attention
from e2llm.testing import (DECODER_FAMILIES, build_tiny_decoder, build_tiny_encoder, eager_attentions, tiny_config,
                           tiny_decoder_tokenizer)

DOC = ("The red fox lives in the northern forest. It hunts at night.\n" * 6) + "The blue whale sings in the deep sea. " * 6
Q = "Where does the fox live?"

# decoder family, encoder family, encoder pooling written in its sentence-transformers folder,
# LoRA targets (None: the architecture's default), adapter kind
CASES = [
    ("llama", "bert", "cls", None, None, "mlp"),  # BGE-style: CLS-pooled
    ("qwen2", "roberta", "mean", None, None, "pma"),
    ("mistral", "mpnet", None, ["q", "v"], None, "pma"),  # named targets
    ("gemma2", "xlm-roberta", None, None, None, "mlp"),  # soft-capping, sliding window, eager attention
    ("phi3", "bert", None, None, ["qkv_proj", "o_proj"], "pma"),  # fused qkv
    # peft has no LoRA default for Phi-3 or MPNet: every linear layer of their attention and MLP blocks
    ("phi3", "mpnet", "mean", None, None, "pma"),
    ("llama", "mpnet", None, ["all-linear"], ["all-linear"], "mlp"),  # peft's spelling, resolved to names
    ("gpt2", "mpnet", None, None, None, "pma"),  # Conv1D layers, learned positions
    ("gemma", "xlm-roberta", None, None, None, "mlp"),  # a scaled embedding
]

# what the defaults (and "all-linear") resolve to where peft has no table
LAYER_LINEARS = {"phi3": ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"],
                 "mpnet": ["q", "k", "v", "o", "intermediate.dense", "output.dense"],
                 "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                 "bert": ["query", "key", "value", "output.dense", "intermediate.dense"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root, built = tmp_path_factory.mktemp("families"), {}

    def get(kind, family, pooling=None):
        key = (kind, family, pooling)
        if key not in built:
            where = root / f"{kind}-{family}-{pooling}"
            built[key] = build_tiny_encoder(where, family, pooling=pooling) if kind == "enc" else \
                build_tiny_decoder(where, family) if family in DECODER_FAMILIES else _build_decoder(where, family)
        return built[key]

    return get


def _build_decoder(folder, family, hidden=32):
    """The decoder families e2llm.testing does not build (GPT-2, Gemma), the same way: 2 random
    layers, the tiny byte-level tokenizer, a wide init so answers depend on the input."""
    from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config

    torch.manual_seed(0)
    tok = tiny_decoder_tokenizer()
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               tie_word_embeddings=True, initializer_range=0.3)
    if family == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=2, n_head=4, n_positions=1024, **ids)
    else:
        config = GemmaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=hidden // 4, intermediate_size=2 * hidden, max_position_embeddings=1024, **ids)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _lora(targets):
    return {"r": 4, "alpha": 8, "target_modules": targets or []}


def _full_attention_rows(base, embeds, rows):
    return eager_attentions(base, embeds)[:, :, rows].sum((0, 1, 2))  # (T,)


def _train_one_step(engine):
    from e2llm.train.data import Sample
    from e2llm.train.trainer import ObjectiveLoss, set_trainable

    groups = set_trainable(engine, "all")
    opt = torch.optim.AdamW([p for g in groups for p in g["params"]], lr=1e-2)
    ce, n = ObjectiveLoss(engine)([Sample("reason", DOC, Q, "In the northern forest.")])
    loss = ce.sum() / n.sum()
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    engine.eval()
    engine.cache.clear()  # soft prompts cached before the step are stale


@pytest.mark.parametrize("dec, enc, pooling, enc_targets, dec_targets, adapter", CASES, ids=[f"{c[0]}+{c[1]}" for c in CASES])
def test_family_round_trip(folders, tmp_path, dec, enc, pooling, enc_targets, dec_targets, adapter):
    torch.manual_seed(0)
    cfg = tiny_config(folders("enc", enc, pooling), folders("dec", dec),
                      encoder={"lora": _lora(enc_targets), "pooling": None}, decoder={"lora": _lora(dec_targets)},
                      adapter={"kind": adapter, "tokens_per_chunk": 1, "num_heads": 4, "mlp_hidden_size": 32}, raw_top_n=1)
    engine = E2LLM.build(cfg)
    assert engine.config.encoder.pooling == (pooling or "mean")
    assert engine.config.encoder.lora.target_modules and engine.config.decoder.lora.target_modules  # resolved, recorded
    for part, family, targets in (("encoder", enc, enc_targets), ("decoder", dec, dec_targets)):
        if targets == ["all-linear"] or (targets is None and family in ("phi3", "mpnet")):
            assert getattr(engine.config, part).lora.target_modules == LAYER_LINEARS[family], part
    lora_layers = {n.rsplit(".lora_A", 1)[0] for n, _ in engine.named_parameters() if ".lora_A." in n}
    assert lora_layers and not any(x in n for n in lora_layers for x in ("lm_head", "embed", "pooler"))
    sp = engine.encode(DOC)
    assert sp.vectors.shape == (sp.num_chunks, 1, engine.config.decoder.hidden_size) and torch.isfinite(sp.vectors).all()
    assert engine.generate(Q, sp, return_result=True).new_tokens > 0

    before = {k: v.clone() for k, v in engine.trained_state_dict().items()}
    _train_one_step(engine)
    after = engine.trained_state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in after if ".lora_B." in k or k.startswith("adapter."))

    answer = engine.generate(Q, DOC, return_result=True)
    engine.save_pretrained(tmp_path / "ck")
    loaded = E2LLM.from_pretrained(tmp_path / "ck")
    again = loaded.generate(Q, DOC, return_result=True)
    assert again.text == answer.text and again.new_tokens == answer.new_tokens > 0

    # citations: the answer rows only, equal to every layer's full attention matrix
    base = loaded._decoder_base
    embeds = torch.randn(1, 80, loaded.config.decoder.hidden_size) * loaded.config.adapter.output_rms
    rows = slice(60, 79)  # beyond the sliding window of 48 where a family has one
    torch.testing.assert_close(answer_attention(base, embeds, rows), _full_attention_rows(base, embeds, rows), rtol=1e-4, atol=1e-4)
    cited = loaded.generate(Q, DOC, return_citations=True, return_result=True)
    assert abs(sum(c.score for c in cited.citations) - 1) < 1e-4 and any(c.kind == "raw" for c in cited.citations)


@pytest.mark.parametrize("kind, family", [("enc", "mpnet"), ("dec", "phi3")])
def test_without_a_peft_default_every_layer_linear_is_adapted_and_said_once(folders, caplog, monkeypatch, kind, family):
    """Where peft has no LoRA table, LoRA adapts every linear layer of the attention and MLP
    blocks (never the head, embeddings or pooler), said once per architecture; the same names
    as ["all-linear"]. The names match only those layers (BERT's "dense" would take its pooler)."""
    import logging

    from transformers import AutoModel, AutoModelForCausalLM

    from e2llm import backbones
    from e2llm.config import LoraSettings

    monkeypatch.setattr(backbones, "_logged_defaults", set())
    model = (AutoModel if kind == "enc" else AutoModelForCausalLM).from_pretrained(folders(kind, family))
    part = "encoder" if kind == "enc" else "decoder"
    with caplog.at_level(logging.WARNING, logger="e2llm"):
        for _ in range(2):
            assert backbones.lora_targets(model, LoraSettings(), part) == LAYER_LINEARS[family]
    said = [r.getMessage() for r in caplog.records if "no LoRA default" in r.getMessage()]
    assert len(said) == 1 and f"'{family}'" in said[0] and f"{part}.lora.target_modules" in said[0]
    assert backbones.lora_targets(model, LoraSettings(target_modules=["all-linear"]), part) == LAYER_LINEARS[family]
    with pytest.raises(ConfigError, match="'all-linear' means every linear layer .* give it alone"):
        backbones.lora_targets(model, LoraSettings(target_modules=["all-linear", "q"]), part)


def test_layer_linears_skip_the_pooler_head_and_embeddings(folders):
    from transformers import AutoModel

    from e2llm.backbones import layer_linear_targets

    bert = AutoModel.from_pretrained(folders("enc", "bert"))
    names = layer_linear_targets(bert)
    assert names == LAYER_LINEARS["bert"] and "dense" not in names  # "dense" alone would match pooler.dense
    matched = {n for n, _ in bert.named_modules() if any(n == t or n.endswith("." + t) for t in names)}
    assert matched and all(".layer." in n for n in matched) and len(matched) == 2 * 6  # 2 layers x q, k, v, 2 outputs, intermediate


def test_unknown_lora_target_names_the_choices(folders):
    cfg = tiny_config(folders("enc", "bert"), folders("dec", "llama"), decoder={"lora": _lora(["query"])})
    with pytest.raises(ConfigError, match=r"decoder.lora.target_modules: 'query' matches no layer of this llama model; "
                                          r"its linear layers are: .*q_proj"):
        E2LLM.build(cfg)
