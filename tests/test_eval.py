"""Evaluation harness: metrics, held-out tasks, systems, resumable runs, reports, loader, CLI (tiny models)."""
import json
import warnings

import pytest

from e2llm.eval import metrics
from e2llm.eval.report import aggregate, markdown_table, quality_targets, write_report
from e2llm.eval.runner import BASE_LABEL, Checkpoint, ResultStore, plan_jobs, run_eval
from e2llm.eval.systems import NA_WINDOW, SYSTEMS, SystemSettings, prepare_item, run_system, select_rag_chunks
from e2llm.errors import InputError
from e2llm.eval.tasks import EvalItem, format_length, length_bucket, load_dataset, parse_length
from e2llm.train import DataError

SENTENCES = ("The quick brown fox jumps over the lazy dog. A long document is split into chunks of text. "
             "Each chunk is encoded into one soft prompt vector. The decoder reads the soft prompts and the question. ")


# ---------------------------------------------------------------------------------- metrics


def test_text_metrics_on_known_pairs():
    assert metrics.normalize_answer("The  Cat, sat!") == "cat sat"
    assert metrics.exact_match("the Cat.", ["cat"]) == 1.0
    assert metrics.exact_match("a dog", ["cat", "Dog!"]) == 1.0
    assert metrics.exact_match("cat dog", ["cat"]) == 0.0
    # pred "cat sat on mat" vs ref "cat sat": common 2, P = 2/4, R = 1 -> F1 = 2/3
    assert metrics.token_f1("the cat sat on the mat", ["cat sat"]) == pytest.approx(2 / 3)
    assert metrics.token_f1("xyz", ["cat", "xyz"]) == 1.0
    assert metrics.token_f1("", ["cat"]) == 0.0
    # LCS("a b c d e", "a c e") = 3: P = 3/5, R = 1 -> 0.75 (articles are dropped: use other words)
    assert metrics.lcs_length("p q r s t".split(), "p r t".split()) == 3
    assert metrics.rouge_l("p q r s t", ["p r t"]) == pytest.approx(0.75)
    assert metrics.rouge_l("t s r q p", ["p q r s t"]) == pytest.approx(0.2)  # order matters, unlike F1
    assert metrics.token_f1("t s r q p", ["p q r s t"]) == 1.0


def test_contains_and_choice():
    assert metrics.contains_answer("The secret code of the otter is 4444865.", ["4444865"]) == 1.0
    assert metrics.contains_answer("It is 44448651.", ["4444865"]) == 0.0  # whole words only
    assert metrics.contains_answer("They sell Copper Bells there", ["copper bells"]) == 1.0
    choices = ["red fox", "blue whale", "green frog"]
    assert metrics.predict_choice("I think blue whale, not red fox", choices, letters=False) == 1
    assert metrics.predict_choice("(C) because", choices) == 2
    assert metrics.predict_choice("The answer is B.", choices) == 1
    assert metrics.predict_choice("nothing", choices) is None
    assert metrics.score("choice", "green frog", [], choices, 2) == 1.0


def test_abstain_recognises_the_usual_ways_of_saying_the_document_does_not_hold_it():
    for said in ("The document does not say.", "The text doesn't mention the secret code.",
                 "There is no information about the brave otter.", "It is not specified in the document.",
                 "I cannot find that in the document.", "Unknown."):
        assert metrics.score("abstain", said, ["The document does not say."]) == 1.0, said
    for answer in ("The secret code of the otter is 4444865.", "Paris", "It says the code is 12 (not 13)."):
        assert metrics.score("abstain", answer, ["The document does not say."]) == 0.0, answer


def test_wilson_interval():
    low, high = metrics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = metrics.wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert metrics.wilson_interval(10, 10)[1] == 1.0
    mean, low, high = metrics.summarize([1, 0, 1, 1], "contains")
    assert mean == 0.75 and low < 0.75 < high
    mean, low, high = metrics.summarize([0.5, 0.7], "f1")
    assert mean == pytest.approx(0.6) and 0 <= low < 0.6 < high <= 1


def test_lengths():
    assert parse_length("2K") == 2048 and parse_length("64k") == 65536 and parse_length("3000") == 3000
    assert format_length(16384) == "16K" and format_length(3000) == "3000"
    assert length_bucket(3000) == 4096 and length_bucket(10) == 1024
    from e2llm.errors import InputError

    with pytest.raises(InputError):
        parse_length("lots")


# ------------------------------------------------------------------------------------ tasks


def test_synthetic_items_deterministic_and_held_out():
    from e2llm.eval.tasks import KNOWN_TASKS, SPLIT_SEED, TASKS, VAL_FRACTION, synthetic_items
    from e2llm.train.corpus import load_corpus, split_documents

    train, val = split_documents(load_corpus(), SPLIT_SEED, VAL_FRACTION)
    prose_tasks = [t for t in KNOWN_TASKS if t != "real_field"]  # real_field needs structured text (test_synth)
    a, skipped = synthetic_items(prose_tasks, [600], [0.0, 1.0], 2, tokens_per_word=1.8, docs=val)
    b, _ = synthetic_items(prose_tasks, [600], [0.0, 1.0], 2, tokens_per_word=1.8, docs=val)
    assert not skipped and [i.content_hash for i in a] == [i.content_hash for i in b]
    assert {i.task for i in a} == set(prose_tasks) and "mention" not in TASKS  # opt-in only
    # on Python's docs real_field has nothing to ask: the cell is skipped with the reason, the run goes on
    none, skipped = synthetic_items(["real_field"], [600], [0.5], 1, tokens_per_word=1.8, docs=val)
    assert not none and skipped == ["real_field at 600: no changelog entry, package metadata or copyright stanza "
                                    "in the drawn text; real_field needs such documents"]
    val_ids, train_ids = {d.doc_id for d in val}, {d.doc_id for d in train}
    used = {d for item in a for d in item.meta["doc_ids"]}
    assert used <= val_ids and not used & train_ids
    singles = [i for i in a if i.task == "single_fact"]
    assert sorted(i.depth for i in singles) == [0.0, 1.0]
    assert singles[0].answers[0] in singles[0].context
    for item in a:
        if item.metric == "choice":
            assert item.choices[item.answer_index] == item.answers[0]
    # another seed gives other items
    c, _ = synthetic_items(["two_chunk"], [600], [0.5], 1, tokens_per_word=1.8, docs=val, seed=7)
    assert c[0].content_hash != [i for i in a if i.task == "two_chunk"][0].content_hash


def _write_docs(folder, count=6, words=400):
    """A folder of small real-looking documents of another kind (changelog entries)."""
    folder.mkdir()
    for n in range(count):
        lines = [f"Release {n}.{i}: fixed the parser when the input ended early; updated the build scripts "
                 f"and the translations for module{n}-{i}." for i in range(words // 20)]
        (folder / f"changelog-{n}.txt").write_text("\n\n".join(lines))
    return folder


def test_docs_folder_builds_the_tasks_and_rewords_the_fact(tmp_path):
    from e2llm.eval.tasks import REWORDINGS, folder_documents, synthetic_items

    docs = folder_documents(_write_docs(tmp_path / "docs"))
    assert len(docs) == 6 and all(d.doc_id.startswith("file:changelog-") for d in docs)
    items, skipped = synthetic_items(["single_fact", "reworded_fact", "two_chunk"], [600], [0.5], 3,
                                     tokens_per_word=1.5, docs=docs)
    assert not skipped and {i.task for i in items} == {"single_fact", "reworded_fact", "two_chunk"}
    assert all(d.startswith("file:changelog-") for i in items for d in i.meta["doc_ids"])
    plain = [i for i in items if i.task == "single_fact"]
    reworded = [i for i in items if i.task == "reworded_fact"]
    for m, (a, b) in enumerate(zip(plain, reworded)):  # the same needle and haystack, other words
        assert a.answers == b.answers and b.answers[0] in b.context and b.depth == a.depth
        assert not b.question.startswith("What is the ") and b.question != a.question
        template = f"is {a.answers[0]}."  # the training template ends "... of the <entity> is <value>."
        assert template in a.context and template not in b.context
        assert REWORDINGS[m % len(REWORDINGS)][0].split("{")[0] in b.context
    with pytest.raises(InputError, match="no such folder"):
        folder_documents(tmp_path / "missing")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("x " * 300)
    with pytest.raises(InputError, match="1 document"):
        folder_documents(tmp_path / "one")


def test_eval_and_train_meet_only_through_public_names():
    """e2llm.eval imports from the e2llm.train package (its __init__), never from its modules,
    and train never imports e2llm.eval's modules: the two change independently."""
    import ast
    from pathlib import Path

    import e2llm

    root = Path(e2llm.__file__).parent
    for package, other in (("eval", "train"), ("train", "eval")):
        for path in (root / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    name = "." * node.level + node.module
                    assert not name.startswith(f"..{other}."), f"{path.name} imports {name}: use e2llm.{other}'s public names"
                    assert not name.startswith(f"e2llm.{other}."), f"{path.name} imports {name}"


# ---------------------------------------------------------------------------------- systems


def _item(item_id="q1", words=60, task="single_fact", length=1024, answer="4444865", depth=0.5):
    context = (SENTENCES * (words // 40 + 1)) + f" The secret code of the calm otter is {answer}. " + SENTENCES
    return EvalItem(task, length, item_id, context, "What is the secret code of the calm otter?", [answer],
                    "contains", depth=depth)


def test_rag_budget_rule():
    tokens = {0: 50, 1: 30, 2: 40, 3: 60}
    # rank order 2, 0, 3, 1: take 2 (40), then 0 (90 >= 80): stop, in document order
    assert select_rag_chunks([2, 0, 3, 1], tokens.get, 80) == ([0, 2], 90)
    assert select_rag_chunks([2, 0, 3, 1], tokens.get, 40) == ([2], 40)
    assert select_rag_chunks([3, 1], tokens.get, 0) == ([3], 60)  # always at least one chunk


def test_rag_reads_about_what_e2llm_reads(tiny_engine):
    item = _item(words=400)
    settings = SystemSettings(max_new_tokens=4)
    prepared = prepare_item(tiny_engine, item.context, SYSTEMS)
    e2 = run_system(tiny_engine, "e2llm", item.question, item.context, prepared, settings)
    rag = run_system(tiny_engine, "rag", item.question, item.context, prepared, settings)
    none = run_system(tiny_engine, "none", item.question, item.context, prepared, settings)
    assert e2.status == rag.status == "ok" and e2.soft_tokens > 0
    assert rag.rag_budget_tokens == e2.soft_tokens and rag.soft_tokens == 0
    tok = tiny_engine.decoder_tokenizer
    tokens = [len(tok(c.text, add_special_tokens=False)["input_ids"]) for c in prepared.chunks]
    order = tiny_engine.rank_chunks(item.question, prepared.chunks)
    picked = rag.raw_chunks
    assert picked == sorted(order[:len(picked)]) and len(picked) < len(prepared.chunks)
    assert sum(tokens[i] for i in picked) >= e2.soft_tokens > sum(tokens[i] for i in order[:len(picked) - 1])
    assert rag.prompt_tokens > none.prompt_tokens + e2.soft_tokens  # the passages are in the prompt
    hybrid = run_system(tiny_engine, "e2llm_hybrid", item.question, item.context, prepared, settings)
    assert len(hybrid.raw_chunks) == 2 and hybrid.soft_tokens == e2.soft_tokens
    assert e2.latency_s >= e2.call_s + prepared.encode_s - 1e-9
    # RAG at the hybrid's budget: the hybrid's raw chunks, then more raw text in place of the soft tokens
    wide = run_system(tiny_engine, "rag_hybrid_budget", item.question, item.context, prepared, settings)
    raw_tokens = sum(tokens[i] for i in order[:2])
    assert wide.rag_budget_tokens == e2.soft_tokens + raw_tokens and wide.soft_tokens == 0
    assert set(order[:2]) <= set(wide.raw_chunks) and len(wide.raw_chunks) > len(picked)
    assert sum(tokens[i] for i in wide.raw_chunks) >= wide.rag_budget_tokens


def test_controls_read_hybrids_raw_chunks(tiny_engine, monkeypatch):
    """e2llm_raw and rag_top_n read exactly hybrid's raw chunks and no soft prompts (tuned and
    plain decoder); e2llm_swapped reads them with another document's soft prompts."""
    item, other = _item(words=400), _item("q2", words=200, answer="1234567")
    settings = SystemSettings(max_new_tokens=3)
    prepared = prepare_item(tiny_engine, item.context, SYSTEMS, other.context)
    assert prepared.other_soft is not None and prepared.other_soft.num_chunks != prepared.soft.num_chunks
    lora_states = []
    import e2llm.eval.systems as systems_module

    real = systems_module.decoder_lora
    monkeypatch.setattr(systems_module, "decoder_lora", lambda engine, enabled: (lora_states.append(enabled),
                                                                                  real(engine, enabled))[1])
    out = {s: run_system(tiny_engine, s, item.question, item.context, prepared, settings)
           for s in ("e2llm_hybrid", "e2llm_raw", "rag_top_n", "e2llm_swapped", "none")}
    assert lora_states == [True, True, False, True, False]
    hybrid = out["e2llm_hybrid"]
    assert len(hybrid.raw_chunks) == 2
    for name in ("e2llm_raw", "rag_top_n", "e2llm_swapped"):
        assert out[name].raw_chunks == hybrid.raw_chunks, name
    assert out["e2llm_raw"].soft_tokens == out["rag_top_n"].soft_tokens == 0
    assert out["e2llm_raw"].prompt_tokens == hybrid.prompt_tokens  # same passages, same prompt, minus the soft ones
    assert out["e2llm_swapped"].soft_tokens == prepared.other_soft.num_soft_tokens
    alone = prepare_item(tiny_engine, item.context, ["e2llm_swapped"])
    with pytest.raises(ValueError, match="other_context"):
        run_system(tiny_engine, "e2llm_swapped", item.question, item.context, alone, settings)


def test_soft_prompts_max_tokens_reads_the_raw_chunks_alone_beyond_it(tiny_engine):
    """Hybrid reading of a document longer than config.soft_prompts_max_tokens reads hybrid's raw
    chunks without soft prompts (the e2llm_raw control's prompt, token for token); shorter
    documents and compressed-only reading keep their soft prompts; eval's cache tells them apart."""
    from e2llm.eval.runner import Checkpoint, settings_signature

    item = _item(words=400)
    settings = SystemSettings(max_new_tokens=3)
    prepared = prepare_item(tiny_engine, item.context, SYSTEMS)
    context_tokens = sum(c.num_tokens for c in prepared.chunks)
    ck = Checkpoint("k", tiny_engine, "src", identity="tiny")
    before = settings_signature("e2llm_hybrid", ck, "k", settings)
    try:
        tiny_engine.config.soft_prompts_max_tokens = context_tokens  # not beyond: soft prompts read
        within = run_system(tiny_engine, "e2llm_hybrid", item.question, item.context, prepared, settings)
        tiny_engine.config.soft_prompts_max_tokens = context_tokens - 1
        beyond = run_system(tiny_engine, "e2llm_hybrid", item.question, item.context, prepared, settings)
        raw = run_system(tiny_engine, "e2llm_raw", item.question, item.context, prepared, settings)
        compressed = run_system(tiny_engine, "e2llm", item.question, item.context, prepared, settings)
        from_text = tiny_engine.generate(item.question, item.context, raw_top_n=2, max_new_tokens=3, return_result=True)
        after = settings_signature("e2llm_hybrid", ck, "k", settings)
    finally:
        tiny_engine.config.soft_prompts_max_tokens = None
    assert within.soft_tokens == prepared.soft.num_soft_tokens > 0
    assert beyond.soft_tokens == 0 and beyond.raw_chunks == raw.raw_chunks == within.raw_chunks
    assert (beyond.prompt_tokens, beyond.text) == (raw.prompt_tokens, raw.text)
    assert compressed.soft_tokens == within.soft_tokens  # raw_top_n = 0: not hybrid, soft prompts kept
    assert from_text.soft_tokens == 0 and from_text.text == raw.text
    assert from_text.raw_only and from_text.dropped_chunks == 0  # skipped by design, not dropped by overflow
    assert before != after and before == settings_signature("e2llm_hybrid", ck, "k", settings)


def test_swapped_reads_another_document_of_the_same_cell():
    from e2llm.eval.runner import other_item

    items = [_item("a", 60), _item("b", 80, task="two_chunk"), _item("c", 200), _item("d", 300, length=2048)]
    assert other_item(items, 0).item_id == "c" and other_item(items, 2).item_id == "a"  # same task and length
    assert other_item(items, 1).item_id == "c"  # else the same length, another document
    assert other_item(items, 3).item_id == "a"  # else any other document
    assert other_item(items[:1], 0).item_id == "a"  # nothing else: itself


def test_hybrid_reads_as_many_raw_chunks_as_the_checkpoint_ships_with(tiny_engine):
    # `e2llm eval` without --raw-top-n evaluates a checkpoint the way it answers by default
    from e2llm.eval.runner import Checkpoint, settings_signature

    item = _item(words=400)
    prepared = prepare_item(tiny_engine, item.context, SYSTEMS)
    shipped = tiny_engine.config.raw_top_n
    try:
        counts = {}
        for own, asked in ((0, None), (3, None), (3, 1)):
            tiny_engine.config.raw_top_n = own
            settings = SystemSettings(raw_top_n=asked, max_new_tokens=2)
            out = run_system(tiny_engine, "e2llm_hybrid", item.question, item.context, prepared, settings)
            ck = Checkpoint("k", tiny_engine, "src", identity="tiny")
            counts[(own, asked)] = (len(out.raw_chunks), settings_signature("e2llm_hybrid", ck, "k", settings))
    finally:
        tiny_engine.config.raw_top_n = shipped
    assert [n for n, _ in counts.values()] == [2, 3, 1]  # none of its own -> 2; its own 3; the flag wins
    assert len({sig for _, sig in counts.values()}) == 3  # each n is its own cache entry


def test_full_is_na_beyond_the_window(tiny_engine):
    item = _item(words=4000)  # far beyond the tiny 1024-token window
    prepared = prepare_item(tiny_engine, item.context, ["full"])
    out = run_system(tiny_engine, "full", item.question, item.context, prepared, SystemSettings(max_new_tokens=4))
    assert out.status == NA_WINDOW and out.text == ""
    rows = [{"task": "single_fact", "length": 8192, "system": "full", "item_id": "x", "checkpoint": BASE_LABEL,
             "status": NA_WINDOW, "metric": "contains", "score": None, "latency_s": 0, "peak_mem_mb": 0,
             "decoder_tokens": 0}]
    assert "n/a (exceeds window)" in markdown_table(aggregate(rows))


# ------------------------------------------------------------------------------ runner


def _count_generate(engine, monkeypatch):
    calls = []
    original = engine.generate

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "generate", counted)
    return calls


def test_resume_skips_done_items_and_survives_a_cut_line(make_tiny_engine, monkeypatch, tmp_path):
    engine = make_tiny_engine()
    calls = _count_generate(engine, monkeypatch)
    items = [_item("a", 60), _item("b", 80, depth=0.0), _item("c", 40, task="two_chunk")]
    cks = [Checkpoint("k1", engine, "tiny")]
    settings = SystemSettings(max_new_tokens=3)
    rows = run_eval(cks, items, ["e2llm", "rag", "none"], settings, tmp_path, progress=False)
    assert len(rows) == 9 and len(calls) == 9
    again = run_eval(cks, items, ["e2llm", "rag", "none"], settings, tmp_path, progress=False)
    assert len(calls) == 9 and [r["prediction"] for r in again] == [r["prediction"] for r in rows]
    path = tmp_path / "items.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # killed mid-write: the last line is cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = run_eval(cks, items, ["e2llm", "rag", "none"], settings, tmp_path, progress=False)
    assert [str(w.message) for w in caught if "unreadable result line" in str(w.message)], caught
    assert len(calls) == 10 and len(rows) == 9
    lines = path.read_text().splitlines()
    assert len(lines) == 9 and json.loads(lines[-1])["item_id"] == "c"  # the cut line is gone, the redone one added
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, not again
        assert len(ResultStore(path).rows) == 9
    # changed settings are not served from the cache
    run_eval(cks, items[:1], ["none"], SystemSettings(max_new_tokens=2), tmp_path, progress=False)
    assert len(calls) == 11
    path.write_bytes(path.read_bytes()[:-10])  # cut again, and append without rereading: a fresh line
    store = ResultStore.__new__(ResultStore)
    store.path, store.rows = path, {}
    store.append(json.loads(lines[0]))
    assert path.read_text().splitlines()[-1] == lines[0]


def test_shared_baselines_and_labels(make_tiny_engine):
    from e2llm.eval.runner import checkpoint_labels

    a, b = make_tiny_engine(), make_tiny_engine(adapter={"tokens_per_chunk": 2})
    labels = checkpoint_labels([a, b, b])
    assert labels == ["k1", "k2", "k2-2"]
    cks = [Checkpoint(l, e, str(i)) for i, (l, e) in enumerate(zip(labels[:2], [a, b]))]
    jobs = [(ck.label, s, lab) for ck, s, lab in plan_jobs(cks, SYSTEMS, SystemSettings())]
    assert ("k1", "full", BASE_LABEL) in jobs and ("k2", "rag", "k2") in jobs
    assert not any(ck == "k2" and s in ("full", "none") for ck, s, _ in jobs)
    jobs_on = plan_jobs(cks, SYSTEMS, SystemSettings(baseline_lora=True))
    assert len(jobs_on) == 2 * len(SYSTEMS)  # no shared baselines with the LoRA on


# ---------------------------------------------------------------------------------- report


def _row(system, task, length, score, ck="k1", item="i", tokens=100, depth=None):
    return {"task": task, "length": length, "system": system, "item_id": item, "checkpoint": ck, "status": "ok",
            "metric": "contains", "score": score, "latency_s": 0.5, "peak_mem_mb": 10.0, "decoder_tokens": tokens,
            "depth": depth}


def test_quality_targets_report_numbers():
    rows = []
    for i in range(4):
        for task in ("two_chunk", "aggregation", "single_fact"):
            rows += [_row("e2llm", task, 16384, i < 3, item=str(i)), _row("e2llm_hybrid", task, 16384, i < 3, item=str(i)),
                     _row("rag", task, 16384, i < 1, item=str(i))]
        rows += [_row("e2llm", "topic", 4096, i < 2, item=str(i), tokens=150),
                 _row("e2llm_hybrid", "topic", 4096, i < 1, item=str(i), tokens=280),
                 _row("full", "topic", 4096, i < 2, ck=BASE_LABEL, item=str(i), tokens=4200),
                 _row("none", "topic", 4096, 0, ck=BASE_LABEL, item=str(i), tokens=60)]
    lines = quality_targets(rows)
    text = "\n".join(lines)
    assert "PASS (a) [k1] two_chunk 16K-64K" in text and "0.750 vs rag 0.250" in text
    assert "PASS (a) [k1] single_fact" in text
    assert "PASS (b) [k1] 4K: e2llm 0.500 = 100% of full 0.500" in text and "28.0x" in text
    assert "FAIL (b) [k1] 4K: hybrid 0.250 = 50% of full 0.500" in text and "15.0x" in text
    assert "PASS (c) [k1] e2llm" in text
    rows = [dict(r, score=0) if r["system"] == "e2llm" else r for r in rows]
    assert "FAIL (b)" in "\n".join(quality_targets(rows))
    # with RAG at the hybrid's budget present, hybrid is held against it, not against rag
    rows += [_row("rag_hybrid_budget", task, 16384, i < 3, item=str(i)) for i in range(4)
             for task in ("two_chunk", "aggregation", "single_fact")]
    text = "\n".join(quality_targets(rows))
    assert "FAIL (a) [k1] two_chunk 16K-64K: best hybrid 0.750 vs rag at hybrid's budget 0.750" in text
    assert "PASS (a) [k1] single_fact 16K-64K: hybrid 0.750 vs rag at hybrid's budget 0.750" in text


def test_report_files(tmp_path):
    rows = [_row(s, "single_fact", n, (i + d) % 2, ck=BASE_LABEL if s in ("full", "none") else "k1", item=f"{d}-{i}",
                 depth=d / 2) for s in SYSTEMS for n in (2048, 8192) for d in range(3) for i in range(2)]
    rows += [_row(s, "topic", 2048, 1, item="t") for s in ("e2llm", "rag")]
    rows.append(dict(_row("full", "topic", 8192, None, ck=BASE_LABEL, item="t"), status=NA_WINDOW))
    only_na = write_report([rows[-1]], tmp_path / "na")  # nothing scored: still a table and a plot
    assert "n/a (exceeds window)" in only_na["markdown"].read_text() and only_na["accuracy_plot"].exists()
    paths = write_report(rows, tmp_path, settings={"quick": True}, skipped=["topic at 64K: too few documents"])
    for key in ("accuracy_plot", "heatmap"):
        assert paths[key].exists() and paths[key].stat().st_size > 1000
        assert paths[key].read_bytes()[:4] == b"\x89PNG"
    md = paths["markdown"].read_text()
    assert "| single_fact | 2K | e2llm | contains | 6 |" in md and "Quality targets" in md and "too few documents" in md
    data = json.loads(paths["json"].read_text())
    assert data["settings"] == {"quick": True} and len(data["cells"]) == 2 * len(SYSTEMS) + 3


# ---------------------------------------------------------------------------------- loader


def test_loader_longbench_styles(tmp_path):
    path = tmp_path / "mix.jsonl"
    records = [
        {"context": "Paris is the capital of France.", "input": "What is the capital of France?",
         "answers": ["Paris"], "dataset": "qa", "_id": "x1"},
        {"context": "A story about a cat.", "question": "Who is it about?", "choice_A": "a dog",
         "choice_B": "a cat", "choice_C": "a cow", "choice_D": "a bird", "answer": "B", "_id": "v2"},
        {"context": "Long report text.", "input": "", "answers": ["A short summary."], "dataset": "gov_report"},
        {"context": "Needle: 42.", "input": "What is the needle?", "outputs": ["42"], "index": 7},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    items = load_dataset(path)
    assert [i.metric for i in items] == ["f1", "choice", "rougeL", "f1"]
    assert items[0].task == "qa" and items[0].answers == ["Paris"] and items[0].item_id == "qa:x1"
    mc = items[1]
    assert mc.answer_index == 1 and mc.letters and "(B) a cat" in mc.question and mc.task == "mix"
    assert items[2].question == "Summarize the document."
    assert items[3].answers == ["42"] and items[3].item_id == "mix:7"
    assert load_dataset(path, max_items=2, metric="em")[0].metric == "em"


@pytest.mark.parametrize("line, needle", [
    ('{"context": "x", "input": "q", "answers": ["a"]', "invalid JSON"),
    ('{"input": "q", "answers": ["a"]}', "'context'"),
    ('{"context": "x", "input": "q"}', "answers"),
    ('{"context": "x", "input": "q", "choices": ["a", "b"], "answer": "Z"}', "not a choice"),
])
def test_loader_names_the_bad_line(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"context": "ok", "input": "q", "answers": ["a"]}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=needle) as e:
        load_dataset(path)
    assert f"{path}:2:" in str(e.value)


# -------------------------------------------------------------------------------------- CLI


@pytest.fixture(autouse=True)
def _eval_registered(monkeypatch):
    """``e2llm eval`` through the real main(); registered here if e2llm.cli does not (yet)."""
    import argparse

    import e2llm.cli as cli

    original = cli.build_parser
    sub = next(a for a in original()._actions if isinstance(a, argparse._SubParsersAction))
    if "eval" not in sub.choices:
        def build():
            parser = original()
            from e2llm.eval.cli import add_parser

            add_parser(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)))
            return parser

        monkeypatch.setattr(cli, "build_parser", build)


def _cli(*args):
    import contextlib
    import io

    from e2llm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _one_line_error(code, err, needle):
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.startswith("e2llm: error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_cli_errors(tmp_path):
    _one_line_error(*_cli("eval", "--systems", "e2llm", "gpt5", "--output", tmp_path)[::2], "unknown system(s) gpt5")
    _one_line_error(*_cli("eval", "--tasks", "haystack", "--output", tmp_path)[::2], "unknown task(s) haystack")
    _one_line_error(*_cli("eval", "--output", "")[::2], "--output is empty")
    _one_line_error(*_cli("eval", "--lengths", "big", "--output", tmp_path)[::2], "bad context length")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "input": "q", "answers": ["a"]}\n{"context": \n')
    _one_line_error(*_cli("eval", "--data", bad, "--output", tmp_path / "o")[::2], f"{bad}:2:")
    _one_line_error(*_cli("eval", "--data", tmp_path / "nope.jsonl", "--output", tmp_path / "o")[::2], "no such file")
    _one_line_error(*_cli("eval", "--docs", tmp_path / "nope", "--output", tmp_path / "o")[::2], "no such folder")
    _one_line_error(*_cli("eval", "--docs", tmp_path, "--data", bad, "--output", tmp_path / "o")[::2], "--docs and --data")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    _one_line_error(*_cli("eval", "--docs", tmp_path / "docs", "--output", tmp_path / "o")[::2], "not valid UTF-8")


def test_cli_runs_on_data(tiny_backbones, tmp_path):
    from e2llm import E2LLM
    from e2llm.testing import tiny_config

    ck = tmp_path / "ck"
    E2LLM.build(tiny_config(*tiny_backbones)).save_pretrained(ck)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"context": SENTENCES * 4 + f"The code is {n}.", "input": "What is the code?",
                                          "answers": [str(n)], "_id": str(n)}) for n in (11, 22)) + "\n")
    out = tmp_path / "out"
    code, stdout, err = _cli("eval", "--checkpoint", ck, "--data", data, "--output", out, "--systems", "e2llm", "rag",
                             "full", "none", "--max-new-tokens", "3", "--no-progress")
    assert code == 0, err
    assert "| d | 1K | e2llm | f1 | 2 |" in stdout
    assert (out / "results.md").exists() and (out / "accuracy_vs_length.png").stat().st_size > 0
    assert len((out / "items.jsonl").read_text().splitlines()) == 8
    assert json.loads((out / "run.json").read_text())["checkpoints"] == {"k1": str(ck)}


def test_choice_answers_script_splits_right_other_and_off_list(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from e2llm.eval.tasks import synthetic_items

    run = {"tasks": ["aggregation"], "lengths": [600], "depths": [0.5], "items_per_task": 3, "seed": 1000,
           "tokens_per_word": 1.8}
    items, _ = synthetic_items(["aggregation"], [600], [0.5], 3, tokens_per_word=1.8, seed=1000)
    right, wrong = items[0].choices[items[0].answer_index], items[1].choices[1 - items[1].answer_index]
    answers = [f"The {right} is mentioned most.", wrong, "a purple zeppelin"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "items.jsonl").write_text("".join(
        json.dumps({"task": i.task, "length": i.length, "item_id": i.item_id, "system": "rag", "checkpoint": "k1",
                    "status": "ok", "prediction": p}) + "\n" for i, p in zip(items, answers)))
    script = Path(__file__).resolve().parents[1] / "scripts" / "research" / "choice_answers.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| aggregation | rag | k1 | 1/3 | 1/3 | 1/3 | – |" in done.stdout
    rerun = items[2]  # a rerun appends a second row for an answer: the last one counts, once
    with open(tmp_path / "items.jsonl", "a") as f:
        f.write(json.dumps({"task": rerun.task, "length": rerun.length, "item_id": rerun.item_id, "system": "rag",
                            "checkpoint": "k1", "status": "ok", "prediction": rerun.choices[rerun.answer_index]}) + "\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert "| aggregation | rag | k1 | 2/3 | 1/3 | 0/3 | – |" in done.stdout, done.stdout
    # with no-context answers: how many of rag's are word for word the same (here the second)
    with open(tmp_path / "items.jsonl", "a") as f:
        for i, p in zip(items, ["something else", f" {wrong} ", "nothing"]):
            f.write(json.dumps({"task": i.task, "length": i.length, "item_id": i.item_id, "system": "none",
                                "checkpoint": "k1", "status": "ok", "prediction": p}) + "\n")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert "| aggregation | rag | k1 | 2/3 | 1/3 | 0/3 | 1/3 |" in done.stdout, done.stdout
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 1 and "no run.json" in bad.stderr and "Traceback" not in bad.stderr
    # a line cut short by a kill, and settings that are not an eval run's: one line each, files kept
    with open(tmp_path / "items.jsonl", "a") as f:
        f.write('{"task": "aggreg')
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "items.jsonl:8: not a JSON line" in bad.stderr and "Traceback" not in bad.stderr
    assert (tmp_path / "items.jsonl").read_text().endswith('{"task": "aggreg')
    (tmp_path / "run.json").write_text(json.dumps({"tasks": ["aggregation"]}))
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "run.json lacks lengths" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "run.json").write_text('{"tasks": ["aggreg')
    bad = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "not a readable JSON file" in bad.stderr and "Traceback" not in bad.stderr
    assert (tmp_path / "run.json").read_text() == '{"tasks": ["aggreg'


def test_plot_k_script_pools_lengths_per_k(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    def cell(length, system, ck, acc, n=10):
        return {"task": "two_chunk", "length": length, "system": system, "checkpoint": ck, "n": n, "n_na": 0,
                "accuracy": acc}
    run, ref = tmp_path / "run", tmp_path / "ref"
    run.mkdir(), ref.mkdir()
    (run / "results.json").write_text(json.dumps({"cells": [
        cell(16384, "e2llm", "k1", 0.1), cell(32768, "e2llm", "k1", 0.2),
        cell(16384, "e2llm", "k4", 0.3), cell(32768, "e2llm", "k4", 0.5)]}))
    (ref / "results.json").write_text(json.dumps({"cells": [cell(16384, "rag", "base", 0.4, n=20)]}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "research" / "plot_k.py"
    png = tmp_path / "k.png"
    done = subprocess.run([sys.executable, str(script), str(png), str(run), "--reference", str(ref)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| two_chunk | e2llm | 3/20 | 8/20 | – |" in done.stdout
    assert "| two_chunk | rag | – | – | 8/20 |" in done.stdout
    assert png.stat().st_size > 0
    bad = subprocess.run([sys.executable, str(script), str(png), str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 1 and "not an e2llm eval results file" in bad.stderr and "Traceback" not in bad.stderr


def test_soft_prompts_min_tokens_reads_short_documents_raw(tiny_engine):
    """A document of at most config.soft_prompts_min_tokens context tokens is read hybrid's raw
    chunks alone (issue 32: on short documents soft prompts cost answers); one token longer reads
    them; compressed-only reading keeps them at any length."""
    from e2llm.config import E2LLMConfig

    cfg = E2LLMConfig(soft_prompts_min_tokens=100, soft_prompts_max_tokens=1000)
    assert [cfg.soft_prompts_skipped(n) for n in (1, 100, 101, 1000, 1001)] == [True, True, False, False, True]
    item = _item(words=400)
    context_tokens = sum(c.num_tokens for c in tiny_engine.chunk(item.context))
    try:
        tiny_engine.config.soft_prompts_min_tokens = context_tokens
        short = tiny_engine.generate(item.question, item.context, raw_top_n=2, max_new_tokens=3, return_result=True)
        compressed = tiny_engine.generate(item.question, item.context, raw_top_n=0, max_new_tokens=3, return_result=True)
        tiny_engine.config.soft_prompts_min_tokens = context_tokens - 1
        longer = tiny_engine.generate(item.question, item.context, raw_top_n=2, max_new_tokens=3, return_result=True)
    finally:
        tiny_engine.config.soft_prompts_min_tokens = None
    assert short.raw_only and short.soft_tokens == 0 and len(short.raw_chunks) == 2
    assert compressed.soft_tokens > 0 and not compressed.raw_only
    assert not longer.raw_only and longer.soft_tokens > 0
