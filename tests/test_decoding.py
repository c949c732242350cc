"""The decode loop (e2llm.decoding) against transformers' generate, and the inference copies."""
import pytest
import torch

from e2llm.decoding import DecodeSettings, PackedLinear, build_inference_copy, cpu_has_bf16, decode

DOC = "The quick brown fox lives in a quiet forest near the river. It eats berries in the summer."


@pytest.fixture
def lora_engine(make_tiny_engine):
    """A tiny engine whose decoder LoRA is not zero (a fresh LoRA's B is zero: merged == base)."""
    engine = make_tiny_engine(seed=3)
    with torch.no_grad():
        for name, p in engine.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return engine


def _spliced(engine, questions):
    prepared = [engine._prepare(q, DOC, max_new_tokens=8) for q in questions]
    return engine._splice(prepared)


def _hf(engine, spliced, settings: DecodeSettings, model=None):
    model = model or engine._decoder_base
    return model.generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                          max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens or None,
                          do_sample=settings.do_sample, temperature=settings.temperature if settings.do_sample else None,
                          top_p=settings.top_p if settings.do_sample else None, top_k=None,
                          eos_token_id=settings.eos_token_ids, pad_token_id=settings.pad_token_id)


@pytest.mark.parametrize("min_new", [0, 6])
def test_greedy_equals_transformers_generate_in_float32(lora_engine, min_new):
    engine = lora_engine
    engine.fast_decode = False  # the decoder itself, float32: the answers must be token for token those of generate()
    spliced = _spliced(engine, ["Where does the fox live?", "What does it eat in the summer, and where?"])  # padded batch
    settings = engine._gen_kwargs(10, False, 1.0, 1.0, None)
    settings.min_new_tokens = min_new
    ours = engine._run_generate(spliced, settings)
    theirs = _hf(engine, spliced, settings)
    assert ours.tolist() == theirs.tolist()


def test_sampling_equals_transformers_generate_with_the_same_seed(lora_engine):
    engine = lora_engine
    engine.fast_decode = False
    spliced = _spliced(engine, ["Where does the fox live?"])
    settings = engine._gen_kwargs(10, True, 0.7, 0.9, None)
    torch.manual_seed(11)
    ours = engine._run_generate(spliced, settings)
    torch.manual_seed(11)
    theirs = _hf(engine, spliced, settings)
    assert ours.tolist() == theirs.tolist()


def test_merged_copy_gives_the_logits_of_the_lora_decoder_and_the_plain_one_when_switched_off(lora_engine):
    engine = lora_engine
    spliced = _spliced(engine, ["Where does the fox live?"])
    args = dict(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask)
    with torch.no_grad():
        want_on = engine._decoder_base(**args).logits
        merged = build_inference_copy(engine.decoder, lora_on=True, dtype=torch.float32)
        assert torch.allclose(merged(**args).logits, want_on, atol=1e-4)
        with engine.decoder.disable_adapter():
            want_off = engine._decoder_base(**args).logits
            plain = build_inference_copy(engine.decoder, lora_on=False, dtype=torch.float32)
        assert torch.allclose(plain(**args).logits, want_off, atol=1e-4)
        assert not torch.allclose(want_on, want_off, atol=1e-3)  # the LoRA matters: the test can fail
        assert torch.allclose(engine._decoder_base(**args).logits, want_on)  # the original is left unmerged


def test_fast_path_follows_weight_changes_and_the_lora_switch(lora_engine):
    engine = lora_engine
    engine.fast_decode = True
    first = engine._inference_decoder()
    assert engine._inference_decoder() is first  # built once
    with engine.decoder.disable_adapter():
        off = engine._inference_decoder()
        assert off is not first
    with torch.no_grad():  # an optimizer step or a checkpoint load updates the weights in place
        next(p for n, p in engine.decoder.named_parameters() if "lora_B" in n).add_(0.5)
    assert engine._inference_decoder() is not first
    # the fast path still answers, streams the same text, and honours stop strings
    text = engine.generate("Where does the fox live?", DOC, max_new_tokens=8)
    assert "".join(engine.stream("Where does the fox live?", DOC, max_new_tokens=8)) == text


def test_no_parameter_or_state_dict_entry_is_added_by_the_copies(lora_engine):
    engine = lora_engine
    keys = set(engine.state_dict())
    engine.generate("Where does the fox live?", DOC, max_new_tokens=2)
    assert set(engine.state_dict()) == keys


@pytest.mark.skipif(not cpu_has_bf16(), reason="the CPU has no bf16 units")
def test_packed_linear_matches_a_bf16_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    packed = PackedLinear(lin)
    for rows in (1, 3, 40):  # packed (few rows) and plain (many rows) products
        x = torch.randn(2, rows, 64)
        want = lin(x)
        got = packed(x.bfloat16()).float()
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=0.05 * want.abs().max().item())


def test_packed_linear_in_float32_gives_the_plain_product():
    # the path of CPUs without bf16 units: packed float32 weights, a few rows (drafts) and many (prefill)
    from e2llm.packed import PACKED_MAX_ROWS

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    packed = PackedLinear(lin, dtype=torch.float32)
    assert packed.weight.dtype == torch.float32
    for rows in (1, 2, 9, PACKED_MAX_ROWS + 1):
        x = torch.randn(1, rows, 64)
        assert torch.allclose(packed(x), lin(x), atol=1e-5), rows


def test_float32_copy_packs_its_products_and_decodes_the_tokens_of_the_model():
    import copy

    from e2llm.lean import LeanDecoder

    model = _tiny_causal_lm("llama")
    lean = LeanDecoder(build_inference_copy(copy.deepcopy(model), lora_on=False, dtype=torch.float32))
    products = [m for m in lean.modules() if isinstance(m, PackedLinear)]
    assert products and all(m.weight.dtype == torch.float32 for m in products)  # fused q/k/v and gate/up too
    plain = LeanDecoder(build_inference_copy(copy.deepcopy(model), lora_on=False, dtype=torch.float32, pack=False))
    assert not any(isinstance(m, PackedLinear) for m in plain.modules())
    torch.manual_seed(2)
    embeds, mask = torch.randn(1, 9, 64), torch.ones(1, 9, dtype=torch.long)
    s = DecodeSettings(max_new_tokens=16, eos_token_ids=[7], pad_token_id=0, min_new_tokens=16)
    with torch.no_grad():
        assert torch.allclose(lean.prefill(embeds, mask, 40), plain.prefill(embeds, mask, 40), atol=1e-4)
    assert decode(lean, embeds, mask, s).tolist() == decode(plain, embeds, mask, s).tolist()


@pytest.mark.skipif(not cpu_has_bf16(), reason="the CPU has no bf16 units")
def test_encoder_copy_runs_an_exact_gelu_inside_the_packed_product():
    import transformers

    def bert(act):
        cfg = transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, hidden_act=act)
        torch.manual_seed(0)
        return transformers.BertModel(cfg).eval()

    model = bert("gelu")
    fused = build_inference_copy(model, lora_on=False, dtype=torch.bfloat16, pack=False, fuse_gelu=True)
    apart = build_inference_copy(model, lora_on=False, dtype=torch.bfloat16, pack=False)
    assert all(isinstance(layer.intermediate.dense, PackedLinear) and layer.intermediate.dense.gelu
               for layer in fused.encoder.layer)
    ids = torch.randint(0, 99, (3, 70))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
        err_fused = (fused(input_ids=ids).last_hidden_state.float() - want).abs().max().item()
        err_apart = (apart(input_ids=ids).last_hidden_state.float() - want).abs().max().item()
    assert err_fused <= 1.5 * err_apart + 1e-3, (err_fused, err_apart)  # bf16 rounding (without the GELU: O(1))
    tanh = build_inference_copy(bert("gelu_new"), lora_on=False, dtype=torch.bfloat16, pack=False, fuse_gelu=True)
    assert not any(isinstance(m, PackedLinear) for m in tanh.modules())  # only the exact GELU is fused


def test_decode_stops_on_a_stop_string_and_pads_finished_rows(lora_engine):
    engine = lora_engine
    engine.fast_decode = False
    spliced = _spliced(engine, ["Where does the fox live?", "What does it eat?"])
    free = engine._run_generate(spliced, engine._gen_kwargs(12, False, 1.0, 1.0, None))
    text = engine.decoder_tokenizer.decode(free[0].tolist(), skip_special_tokens=True)
    assert len(text) > 3
    stop = text[1:3]
    settings = engine._gen_kwargs(12, False, 1.0, 1.0, [stop])
    cut = decode(engine._decoder_base, spliced.inputs_embeds, spliced.attention_mask, settings)
    row0 = engine.decoder_tokenizer.decode(cut[0].tolist(), skip_special_tokens=True)
    assert stop in row0 and len(cut[0]) <= len(free[0])
    assert cut[0, :3].tolist() == free[0, :3].tolist()


@pytest.mark.slow
def test_fast_decode_keeps_the_float32_greedy_answers_of_the_real_model(default_engine):
    """bf16 (where the CPU has bf16 units) against float32 on held-out items: the issue asks for
    the same greedy text on >= 95% of answers; a handful here, the full check is `e2llm bench decode`."""
    from e2llm.bench import decode_agreement

    same, total, diffs = decode_agreement(default_engine, items=5, new_tokens=16)
    assert total == 5
    assert same >= 4, diffs


# ---------------------------------------------------------------- the lean Llama-family forward
def _tiny_causal_lm(family: str, **extra):
    import transformers

    cls_cfg, cls_lm = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                       "mistral": ("MistralConfig", "MistralForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM")}[family]
    cfg = getattr(transformers, cls_cfg)(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                         head_dim=16, **extra)
    torch.manual_seed(5)
    model = getattr(transformers, cls_lm)(cfg).eval()
    with torch.no_grad():  # random biases (Qwen2's q/k/v), so a missed bias fails the test
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("family,extra", [("llama", {}), ("qwen2", {}), ("mistral", {"sliding_window": None}),
                                          ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}})])
def test_lean_forward_gives_transformers_logits_and_greedy_tokens(family, extra):
    import copy

    from e2llm.lean import LeanDecoder, supports

    model = _tiny_causal_lm(family, **extra)
    assert supports(model)
    lean = LeanDecoder(copy.deepcopy(model))
    torch.manual_seed(0)
    embeds = torch.randn(3, 9, 64)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :4] = 0  # left padding, as generate_batch splices
    mask[2, :1] = 0
    with torch.no_grad():
        want = model(inputs_embeds=embeds, attention_mask=mask,
                     position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        got = lean.prefill(embeds, mask, 20)
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        settings = DecodeSettings(max_new_tokens=8, eos_token_ids=[], pad_token_id=0)
        ours = decode(lean, embeds, mask, settings)
        theirs = decode(model, embeds, mask, settings)  # transformers' forward, the same loop
    assert ours.tolist() == theirs.tolist()
    assert len(set(ours.flatten().tolist())) > 1  # not a constant sequence: the comparison can fail


def test_lean_forward_is_not_used_where_its_arithmetic_is_not_the_model_s():
    from e2llm.lean import supports

    assert not supports(_tiny_causal_lm("mistral", sliding_window=4))
    assert not supports(_tiny_causal_lm("gemma2"))
    assert not supports(_tiny_causal_lm("llama", hidden_act="gelu"))


def test_fast_path_of_a_llama_engine_runs_the_lean_forward(lora_engine):
    from e2llm.lean import LeanDecoder

    lora_engine.fast_decode = True
    assert isinstance(lora_engine._inference_decoder(), LeanDecoder)


def test_lean_bf16_padded_rows_stay_within_bf16_rounding_of_unpadded_ones():
    # bf16 batching is not bit-exact (a padded row's attention sums its keys in other blocks), but
    # the drift must stay at rounding level: a mask that let padding in would move logits by O(1).
    import copy

    from e2llm.decoding import build_inference_copy
    from e2llm.lean import LeanDecoder

    lean = LeanDecoder(build_inference_copy(_tiny_causal_lm("llama"), lora_on=False, dtype=torch.bfloat16))
    torch.manual_seed(0)
    embeds = torch.randn(2, 40, 64)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :13] = 0  # row 1 is row 0's last 27 positions, left-padded
    embeds[1, 13:] = embeds[0, 13:]
    embeds[1, :13] *= 30  # loud padding: any leak through the mask shows
    alone = copy.copy(lean)  # shares the weights, gets its own cache
    ids = torch.tensor([3, 3])
    with torch.no_grad():
        batch, single = lean.prefill(embeds, mask, 60)[1], alone.prefill(embeds[1:, 13:], mask[1:, 13:], 60)[0]
        drift, scale = [(batch - single).abs().max().item()], single.abs().max().item()
        for step in range(12):  # teacher-forced: both rows read the same tokens
            batch, single = lean.step(ids)[1], alone.step(ids[1:])[0]
            drift.append((batch - single).abs().max().item())
            ids = torch.full((2,), int(single.argmax()))
    assert max(drift) <= 0.03 * scale, (drift, scale)


# ---------------------------------------------------------------- drafts copied from the prompt
def test_prompt_lookup_drafts_what_followed_the_latest_copy_of_the_longest_tail():
    from e2llm.decoding import PromptLookup

    look = PromptLookup([5, 6, 7, 8, 9, -1, 1, 6, 7, 2, 3])
    assert look.draft(4) == []  # 3 appears once: nothing to copy
    look.append(6)
    assert look.draft(4) == [7, 2, 3, 6]  # "6" last followed by "7 2 3" (the latest copy), then itself
    look.append(7)
    assert look.draft(2) == [2, 3]
    look = PromptLookup([1, 2, 3, 9, 2, 3, 4, 1, 2, 3])
    assert look.draft(1) == [9]  # "1 2 3" (three tokens) beats the later "2 3" (two)
    look = PromptLookup([4, 8, -1, -1, 2, 4])
    assert look.draft(5) == [8]  # no draft runs into a soft token
    assert PromptLookup([4, 3, -1]).draft(3) == []  # after a position without an id, nothing to match
    assert PromptLookup([4, 3, 4]).draft(0) == []


def test_lean_extend_and_rewind_give_the_logits_of_one_token_steps():
    import copy

    from e2llm.lean import LeanDecoder

    lean = LeanDecoder(copy.deepcopy(_tiny_causal_lm("llama")))
    torch.manual_seed(0)
    embeds, mask = torch.randn(1, 7, 64), torch.ones(1, 7, dtype=torch.long)
    ids = torch.tensor([[3, 9, 27, 4]])
    with torch.no_grad():
        lean.prefill(embeds, mask, 20)
        one = torch.stack([lean.step(ids[:, t])[0] for t in range(4)])  # (4, V)
        lean.prefill(embeds, mask, 20)
        lean.extend(torch.tensor([[50, 51, 52]]))  # a wrong draft ...
        lean.rewind(3)  # ... forgotten
        many = lean.extend(ids)[0]
    assert torch.allclose(many, one, atol=1e-4), (many - one).abs().max()


@pytest.mark.parametrize("min_new", [0, 12])
def test_drafted_greedy_decoding_gives_the_tokens_of_one_token_steps_in_fewer_passes(min_new):
    import copy

    from e2llm.lean import LeanDecoder

    lean = LeanDecoder(copy.deepcopy(_tiny_causal_lm("llama")))
    torch.manual_seed(1)
    embeds, mask = torch.randn(1, 6, 64), torch.ones(1, 6, dtype=torch.long)
    prompt_ids = torch.tensor([[-1, -1, 11, 12, 13, 14]])
    passes = []
    for name in ("step", "extend"):
        original = getattr(lean, name)
        setattr(lean, name, lambda ids, _f=original: passes.append(1) or _f(ids))
    s = DecodeSettings(max_new_tokens=24, eos_token_ids=[7], pad_token_id=0, min_new_tokens=min_new)
    plain = decode(lean, embeds, mask, s, prompt_ids=prompt_ids)
    one_token_passes, passes[:] = len(passes), []
    s.draft_tokens = 5
    drafted = decode(lean, embeds, mask, s, prompt_ids=prompt_ids)
    assert drafted.tolist() == plain.tolist()
    assert len(passes) < one_token_passes  # a tiny random model repeats itself: drafts were accepted
