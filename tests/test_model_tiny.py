"""Tiny-model tier: the whole engine on random backbones built from configs (seconds)."""
import json
import threading

import pytest
import torch

from e2llm import E2LLM, CheckpointError, ConfigError, ContextTooLongError, InputError, SoftPrompts
from e2llm.checkpoint import WEIGHTS_NAME
from safetensors.torch import save_file

DOC = ("The red fox lives in the northern forest. It hunts at night.\n" * 12) + "The blue whale sings in the deep sea. " * 12


def test_encode_shapes_and_offsets(tiny_engine):
    sp = tiny_engine.encode(DOC)
    k, Dd = tiny_engine.config.adapter.tokens_per_chunk, tiny_engine.config.decoder.hidden_size
    assert sp.vectors.shape == (sp.num_chunks, k, Dd)
    assert "".join(c.text for c in sp.chunks) == DOC
    assert sp.compression_ratio > 5


def test_multi_document_groups(tiny_engine):
    sp = tiny_engine.encode([DOC, "A short second document.", DOC])
    groups = sp.groups()
    assert len(groups) == 3
    assert [c.doc_index for c in sp.chunks] == sorted(c.doc_index for c in sp.chunks)
    assert sum(g.shape[0] for g in groups) == sp.num_soft_tokens


def test_adapter_output_matches_decoder_embedding_scale(tiny_engine):
    sp = tiny_engine.encode(DOC)
    emb = tiny_engine.decoder.get_input_embeddings().weight
    soft_rms = sp.vectors.pow(2).mean().sqrt().item()
    emb_rms = emb.pow(2).mean().sqrt().item()
    assert 0.5 < soft_rms / emb_rms < 2.0


@pytest.mark.parametrize("kind, k", [("pma", 1), ("pma", 3), ("mlp", 2)])
def test_adapter_kinds(make_tiny_engine, kind, k):
    engine = make_tiny_engine(adapter={"kind": kind, "tokens_per_chunk": k})
    sp = engine.encode(DOC)
    assert sp.vectors.shape[1] == k
    r = engine.generate("Where does the fox live?", sp, return_result=True)
    assert r.soft_tokens == sp.num_chunks * k and r.new_tokens > 0


def test_cache_skips_the_encoder(make_tiny_engine):
    engine = make_tiny_engine()
    first = engine.encode(DOC)
    misses = engine.cache.misses
    calls = []
    real = engine._encoder_batches  # the one way into the encoder (or its bf16 inference copy)
    engine._encoder_batches = lambda texts, grad=True: calls.append(len(texts)) or real(texts, grad)
    again = engine.encode(DOC)
    assert calls == [] and engine.cache.misses == misses
    torch.testing.assert_close(first.vectors, again.vectors)


def test_inference_encoder_is_a_bf16_copy_that_follows_the_lora(make_tiny_engine):
    """Where bf16 pays, inference encodes with a merged bf16 copy of the encoder: within 2% of
    float32, its LoRA merged for soft prompts and left out for ranking, rebuilt when a weight changes."""
    import e2llm.model as model_module

    engine = make_tiny_engine()
    if not model_module._bf16_pays(engine.device, torch.float32):
        pytest.skip("no bf16 matmuls on this CPU: inference encodes in float32")
    texts = [c.text for c in engine.chunk(DOC)]

    def perturb_lora():
        with torch.no_grad():
            for name, p in engine.encoder.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)

    def encode(copy_):
        engine.encoder_copy = copy_
        engine.cache.clear()
        with torch.no_grad():
            if copy_:
                assert engine._bf16_encoder() is not None
            return engine.soft_prompts(texts), engine.retrieval_vectors(texts)

    def close(a, b):
        return float((a - b).norm() / b.norm()) < 0.02

    perturb_lora()
    (soft_fast, rank_fast), (soft_exact, rank_exact) = encode(True), encode(False)
    engine.autocast_encoder = False  # float32 all the way
    (soft_fp32, rank_fp32) = encode(False)
    engine.autocast_encoder = True
    assert close(soft_fast, soft_fp32) and close(rank_fast, rank_fp32) and close(soft_exact, soft_fp32)
    assert not torch.equal(soft_fast, soft_fp32)  # the bf16 copy did run
    engine.ranking_pass = "shared"  # the LoRA's own states: the ranking copy must differ from them
    engine.cache.clear()
    with torch.no_grad():
        assert not close(engine.ranking_vectors(texts), rank_fp32)
    engine.ranking_pass = "base"
    perturb_lora()  # in place, as an optimizer step: the copy is rebuilt
    soft_new, _ = encode(True)
    engine.autocast_encoder = False
    soft_new_fp32, _ = encode(False)
    assert close(soft_new, soft_new_fp32) and not close(soft_new, soft_fp32)


def test_cache_is_bounded_by_bytes():
    from e2llm.cache import TensorCache

    cache = TensorCache(max_bytes=10 * 4 * 4)
    for i in range(20):
        cache.put(str(i), torch.zeros(4))
    assert len(cache) == 10 and cache.num_bytes <= 160
    assert cache.get("0") is None and cache.get("19") is not None


def test_generate_batch_equals_single(tiny_engine, monkeypatch):
    # float32 inference copies: the padding and masking of a batch must not change any row. (In
    # bf16 a padded row's attention sums its keys in other blocks than the unpadded one, so a
    # random model's near-tied logits can flip; tests/test_decoding.py bounds that drift.)
    import e2llm.decoding

    monkeypatch.setattr(e2llm.decoding, "fast_dtype", lambda device, dtype: dtype)
    qs = ["Where does the fox live?", "What does the whale do?", "Short?"]
    ctxs = [DOC, DOC[:300], ["A short document.", DOC[:200]]]
    batch = tiny_engine.generate_batch(qs, ctxs)
    assert batch == [tiny_engine.generate(q, c) for q, c in zip(qs, ctxs)]


def test_stream_equals_generate(tiny_engine):
    q = "Where does the fox live?"
    stream = tiny_engine.stream(q, DOC)
    pieces = list(stream)
    assert "".join(pieces) == tiny_engine.generate(q, DOC) == stream.result.text
    assert stream.result.new_tokens > 0


def test_stop_strings(tiny_engine):
    full = tiny_engine.generate("Where?", DOC, max_new_tokens=12)
    assert len(full) >= 3
    stop = full[1:3]
    cut = tiny_engine.generate("Where?", DOC, max_new_tokens=12, stop=[stop], return_result=True)
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    streamed = "".join(tiny_engine.stream("Where?", DOC, max_new_tokens=12, stop=[stop]))
    assert streamed == cut.text


def test_stream_never_takes_back_text_when_a_stop_string_ends_in_a_multibyte_character(tiny_engine):
    # CI caught this on a random model: ' s' then the bytes of '語' one at a time; while '語' was
    # incomplete ("\ufffd") the stream showed 's', then the stop string 's語' cut it away again.
    from e2llm.generation import _IncrementalText

    tok = tiny_engine.decoder_tokenizer
    ids = tok.encode(" s語!", add_special_tokens=False)
    assert len(ids) > 3 and tok.decode(ids[:2]).endswith("\ufffd")  # the character arrives in pieces
    for stop, expected in ([["s語"], " "], [["語!"], " s"], [[], " s語!"], [["s\ufffd"], " s語!"]):
        text = _IncrementalText(tok, eos_ids=set(), stop=stop)
        shown = "".join(text.feed([t]) for t in ids) + text.close()
        assert shown == text.text == expected
        assert text.finish_reason == ("stop" if expected != " s語!" else None)


def test_sampling_runs(tiny_engine):
    """Sampling draws from the model's distribution: a seed repeats its draw, other seeds draw
    other answers than greedy decoding, and a top_p so small that only the most likely token
    survives gives the greedy answer (so top_p is applied, not ignored)."""
    greedy = tiny_engine.generate("Where?", DOC, max_new_tokens=8, return_result=True)

    def sample(seed: int, **options):
        torch.manual_seed(seed)
        return tiny_engine.generate("Where?", DOC, do_sample=True, max_new_tokens=8, return_result=True, **options)

    first = sample(0, temperature=0.7, top_p=0.9)
    assert first.text == sample(0, temperature=0.7, top_p=0.9).text and 0 < first.new_tokens <= 8
    drawn = {sample(seed, temperature=1.5).text for seed in range(4)}
    assert len(drawn) > 1 and greedy.text not in drawn, (drawn, greedy.text)
    assert {sample(seed, temperature=1.5, top_p=1e-6).text for seed in range(3)} == {greedy.text}


def test_threads_agree_with_sequential(tiny_engine):
    qs = [f"Question number {i}?" for i in range(4)]
    expected = [tiny_engine.generate(q, DOC) for q in qs]
    got = [None] * 4

    def run(i):
        got[i] = tiny_engine.generate(qs[i], DOC)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_no_context_and_result_accounting(tiny_engine):
    r = tiny_engine.generate("Hello?", None, return_result=True)
    assert r.soft_tokens == 0 and r.context_tokens == 0 and r.prompt_tokens > 0


def test_citations_are_a_distribution(tiny_engine):
    r = tiny_engine.generate("Where does the fox live?", [DOC[:400], DOC[-400:]], return_result=True, return_citations=True)
    assert len(r.chunk_scores) == len(r.chunks)
    assert abs(sum(r.chunk_scores) - 1) < 1e-4 and min(r.chunk_scores) >= 0


def test_stream_citations_match_generate(tiny_engine):
    ctx = [DOC[:400], DOC[-400:]]
    stream = tiny_engine.stream("Where does the fox live?", ctx, return_citations=True)
    "".join(stream)
    r = tiny_engine.generate("Where does the fox live?", ctx, return_result=True, return_citations=True)
    assert stream.result.chunk_scores == pytest.approx(r.chunk_scores, abs=1e-5)


def test_hybrid_reads_most_similar_chunks_raw(tiny_engine):
    doc = "Cats purr softly. " * 20 + "\nThe lazy fox jumps over the brown dog.\n" + "Birds sing loudly. " * 20
    # the question repeats that chunk's words: the same encoder input, so even a random encoder
    # ranks it first (a paraphrase would be left to the luck of random weights)
    question = "The lazy fox jumps over the brown dog."
    r = tiny_engine.generate(question, doc, raw_top_n=1, return_result=True)
    assert len(r.raw_chunks) == 1 and r.chunks[r.raw_chunks[0]].text.strip() == question
    plain = tiny_engine.generate(question, doc, return_result=True)
    assert r.prompt_tokens > plain.prompt_tokens


@pytest.mark.parametrize("bad", ["", "   \n\t ", []])
def test_empty_context_is_refused(tiny_engine, bad):
    with pytest.raises(InputError, match="empty|no documents"):
        tiny_engine.generate("Q?", bad)


def test_token_limit_and_batch_lists_are_one_line_errors(tiny_engine):
    for bad in (0, -3):  # 0 used to mean "the default" silently
        with pytest.raises(InputError, match=r"max_new_tokens must be a whole number >= 1.*pass None"):
            tiny_engine.generate("Q?", DOC, max_new_tokens=bad)
        with pytest.raises(InputError, match="max_new_tokens must be"):
            tiny_engine.stream("Q?", DOC, max_new_tokens=bad)
    with pytest.raises(InputError, match=r"one raw_texts list per question \(2 questions, 1 raw_texts lists\)"):
        tiny_engine.generate_batch(["Q1?", "Q2?"], [DOC, DOC], raw_texts=[["a passage"]])  # used to drop Q2 silently
    assert tiny_engine.generate("Q?", DOC, max_new_tokens=None) == tiny_engine.generate(
        "Q?", DOC, max_new_tokens=tiny_engine.config.prompt.max_new_tokens)


def test_empty_question_is_refused(tiny_engine):
    with pytest.raises(InputError, match="question is empty"):
        tiny_engine.generate("  ", DOC)


def test_document_too_long_says_what_fits(make_tiny_engine):
    engine = make_tiny_engine(decoder={"max_window_tokens": 160})
    long_doc = DOC * 10
    with pytest.raises(ContextTooLongError, match=r"needs \d+ chunks .* fits \d+ chunks"):
        engine.generate("Where?", long_doc)
    r = engine.generate("Where?", long_doc, overflow="truncate", return_result=True)
    assert r.dropped_chunks > 0 and r.prompt_tokens + r.soft_tokens + 8 <= 160


def test_question_longer_than_window(make_tiny_engine):
    engine = make_tiny_engine(decoder={"max_window_tokens": 64})
    with pytest.raises(ContextTooLongError, match="shorten the question"):
        engine.generate("why " * 100, DOC)


def test_softprompts_reuse(tiny_engine):
    sp = tiny_engine.encode(DOC)
    assert isinstance(sp, SoftPrompts)
    assert tiny_engine.generate("Where?", sp) == tiny_engine.generate("Where?", DOC)


# ------------------------------------------------------------------ checkpoints
def _perturb(engine):
    with torch.no_grad():
        for p in engine.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


def test_save_load_round_trip_identical(make_tiny_engine, tmp_path):
    engine = make_tiny_engine()
    _perturb(engine)  # LoRA B starts at zero: make every trained tensor matter
    engine.save_pretrained(tmp_path / "ck")
    loaded = E2LLM.from_pretrained(tmp_path / "ck")
    for k, v in engine.trained_state_dict().items():
        torch.testing.assert_close(loaded.trained_state_dict()[k], v, rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode(DOC).vectors, engine.encode(DOC).vectors, rtol=0, atol=0)
    assert loaded.generate("Where does the fox live?", DOC) == engine.generate("Where does the fox live?", DOC)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", WEIGHTS_NAME]


def test_save_is_atomic_over_an_existing_checkpoint(make_tiny_engine, tmp_path, monkeypatch):
    engine = make_tiny_engine()
    engine.save_pretrained(tmp_path / "ck")
    before = (tmp_path / "ck" / WEIGHTS_NAME).read_bytes()
    import e2llm.checkpoint as ckpt

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    _perturb(engine)
    with pytest.raises(OSError):
        engine.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / WEIGHTS_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp folder left behind
    E2LLM.from_pretrained(tmp_path / "ck")


def test_checkpoint_missing_file(make_tiny_engine, tmp_path):
    make_tiny_engine().save_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        E2LLM.from_pretrained(tmp_path / "ck")


def test_checkpoint_truncated(make_tiny_engine, tmp_path):
    make_tiny_engine().save_pretrained(tmp_path / "ck")
    w = tmp_path / "ck" / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        E2LLM.from_pretrained(tmp_path / "ck")


def test_nan_weights_are_neither_saved_nor_loaded(make_tiny_engine, tmp_path):
    engine = make_tiny_engine()
    engine.save_pretrained(tmp_path / "ck")
    before = (tmp_path / "ck" / WEIGHTS_NAME).read_bytes()
    with torch.no_grad():
        next(engine.adapter.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to save .* 1 tensors hold NaN or inf .* is kept"):
        engine.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / WEIGHTS_NAME).read_bytes() == before  # the good checkpoint survives
    tensors = {k: v.clone() for k, v in engine.trained_state_dict().items()}
    save_file(tensors, str(tmp_path / "ck" / WEIGHTS_NAME))  # as a diverged run without the check would have
    with pytest.raises(CheckpointError, match="1 tensors hold NaN or inf .*diverged: load an earlier checkpoint"):
        E2LLM.from_pretrained(tmp_path / "ck")


def test_checkpoint_for_other_shapes(make_tiny_engine, tmp_path):
    make_tiny_engine(adapter={"tokens_per_chunk": 2}).save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["adapter"]["tokens_per_chunk"] = 1  # config edited by hand: tensors no longer fit
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        E2LLM.from_pretrained(tmp_path / "ck")


def test_checkpoint_for_another_backbone(make_tiny_engine, tmp_path):
    make_tiny_engine().save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["decoder"]["hidden_size"] = 999
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="decoder of width 999"):
        E2LLM.from_pretrained(tmp_path / "ck")


def test_checkpoint_unknown_config_key(make_tiny_engine, tmp_path):
    make_tiny_engine().save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["adapter"]["colour"] = "blue"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    from e2llm import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'adapter.colour'"):
        E2LLM.from_pretrained(tmp_path / "ck")


def test_missing_backbone_offline(tmp_path):
    from e2llm import E2LLMConfig, ModelNotFoundError

    cfg = E2LLMConfig.model_validate({"encoder": {"name_or_path": str(tmp_path / "nope")}})
    with pytest.raises(ModelNotFoundError, match="could not load the encoder"):
        E2LLM.build(cfg)


def test_bench_rows_and_full_context_switches_lora_off_only_for_itself(make_tiny_engine):
    from e2llm import bench

    engine = make_tiny_engine()
    with torch.no_grad():  # a LoRA that changes answers, so "off" is visible
        for name, p in engine.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    with_lora = engine.generate("Q?", None)
    doc = bench.make_document(engine.decoder_tokenizer, 200)
    other = []
    t = threading.Thread(target=lambda: other.extend(engine.generate("Q?", None) for _ in range(3)))
    t.start()
    full = bench.run_full(engine, doc, new_tokens=4)
    t.join()
    assert other == [with_lora] * 3  # the switch is held under the engine's lock
    assert engine.generate("Q?", None) == with_lora
    compressed = bench.run_e2llm(engine, doc, new_tokens=4, cached=False)
    for row in (full, compressed):
        assert 0 < row.ttft_s <= row.total_s and row.context_tokens == full.context_tokens
    assert compressed.decoder_tokens < full.decoder_tokens


def test_set_prompt_changes_later_calls_and_validates(make_tiny_engine):
    engine = make_tiny_engine()
    before = engine.layout.ids("Who?", [])
    engine.set_prompt(user="Read: {document}\nAsk: {question}")
    assert engine.config.prompt.user == "Read: {document}\nAsk: {question}"
    assert engine.layout.ids("Who?", []) != before  # later calls template with the new text
    with pytest.raises(ConfigError, match="set_prompt: .*colour"):
        engine.set_prompt(colour="red")
    with pytest.raises(ConfigError, match=r"\{document\} exactly once"):
        engine.set_prompt(user="no slots")
    assert engine.config.prompt.user == "Read: {document}\nAsk: {question}"  # a failed call changes nothing


def test_bench_decode_rows_time_one_token_passes_and_drafted_ones(make_tiny_engine):
    from e2llm import bench

    engine = make_tiny_engine()
    speed = bench.decode_speed(engine, document_tokens=120, new_tokens=6, rounds=1)
    assert {"e2llm decode, fast, one token a pass", f"e2llm decode, fast + drafts from the prompt "
            f"({engine.draft_tokens} a pass, as shipped)"} <= set(speed)
    assert all(wall > 0 and cpu > 0 for wall, cpu in speed.values())
    answers, tokens = bench.answer_decode_speed(engine, items=2, new_tokens=6, length=256)
    assert set(answers) == set(speed)
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in answers.values()) and tokens >= 0


def test_length_sorted_batches():
    from e2llm.model import length_sorted_batches

    assert length_sorted_batches([5, 2, 9, 2, 7], 2) == [[1, 3], [0, 4], [2]]
    assert length_sorted_batches([], 4) == []


def test_encoder_batches_sort_by_length_and_results_come_back_in_text_order(make_tiny_engine):
    """Batches of similar length pad less; every result must still belong to its own text."""
    engine = make_tiny_engine(encoder={"chunks_per_batch": 2})
    engine.autocast_encoder = False  # float32 throughout: a batch's padding changes nothing but rounding
    texts = ["fox den", "a", "the red fox", "x y", "the red sea bed"]
    lengths = [len(x) for x in engine.encoder_tokenizer(texts)["input_ids"]]
    assert max(lengths) <= engine.config.chunking.tokens_per_chunk + 2 and len(set(lengths)) == len(texts)  # no truncation
    seen = []
    real = engine._encoder_batches
    engine._encoder_batches = lambda t, grad=True: ((seen.append(mask.sum(1).tolist()) or (r, s, mask, i)) for r, s, mask, i in real(t, grad))
    together = engine.soft_prompts(texts, encoder_grad=False)
    assert seen == [sorted(lengths)[0:2], sorted(lengths)[2:4], sorted(lengths)[4:]]  # shortest first, two a batch
    one_by_one = torch.cat([engine.soft_prompts([t], encoder_grad=False) for t in texts])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)
    vectors = engine.retrieval_vectors(texts)
    engine.cache.clear()
    torch.testing.assert_close(vectors, torch.cat([engine.retrieval_vectors([t]) for t in texts]), atol=1e-5, rtol=1e-4)
