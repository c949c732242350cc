"""The reconstruction curriculum and the continuation objective (issue 32): pure, no models."""
import numpy as np

from e2llm.train.batches import StepBatches, Tokenized
from e2llm.train.config import DataConfig
from e2llm.train.corpus import Document
from e2llm.train.data import build_data
from e2llm.train.synth import make_continuation_pairs, make_reconstruction_texts


def _recon_tok(chunk_counts):
    """Reconstruction rows with the given chunk counts (ids do not matter here)."""
    n = len(chunk_counts)
    offsets = np.concatenate([[0], np.cumsum(chunk_counts)]).astype(np.int64)
    return Tokenized(np.zeros(n, np.int8), np.ones(3 * n, np.int32), np.arange(0, 3 * n + 1, 3, dtype=np.int64),
                     np.ones(n, np.int32), offsets, np.ones(int(offsets[-1]), np.int32),
                     np.arange(int(offsets[-1]) + 1, dtype=np.int64))


def _empty():
    return _recon_tok([])


def test_curriculum_draws_one_chunk_windows_first_then_longer():
    counts = [1, 4, 2, 1, 3, 4, 2, 1, 3, 2] * 5
    b = StepBatches(_recon_tok(counts), _empty(), 8, 1, 0, 1.0, None, False, 0, 1, 0, 0, curriculum_steps=100)
    assert b.recon_chunk_limit(0) == 1 and b.recon_chunk_limit(50) == 2 and b.recon_chunk_limit(100) is None
    assert all(counts[r] == 1 for step in range(5) for r in b.recon_rows(step))
    assert all(counts[r] <= 2 for r in b.recon_rows(60))
    late = {counts[r] for step in range(100, 140) for r in b.recon_rows(step)}
    assert late == {1, 2, 3, 4}  # after the curriculum: any window
    assert b.recon_rows(7) == b.recon_rows(7)  # a pure function of the step: resuming is exact


def test_no_curriculum_keeps_the_old_draws():
    counts = [1, 4, 2, 1, 3]
    with_zero = StepBatches(_recon_tok(counts), _empty(), 4, 1, 0, 1.0, None, False, 0, 1, 0, 0)
    from e2llm.train.data import sample_indices

    assert with_zero.recon_rows(3) == sample_indices(5, 3, 4, 0, "recon")


def _docs():
    text = " ".join(f"Sentence number {i} says that item {i} weighs {i * 3} grams." for i in range(400))
    return [Document(f"d{j}", f"doc {j}", text, "test") for j in range(3)]


def test_continuation_pairs_are_consecutive_text():
    for first, rest in make_continuation_pairs(_docs(), 10, 0, 20):
        whole = _docs()[0].text
        at = whole.find(first)
        assert at >= 0 and whole[at + len(first):].lstrip().startswith(rest[:30])
        assert 10 <= len(first.split()) <= 21 and 10 <= len(rest.split()) <= 21


def test_path_windows_defaults_draw_what_they_drew_before(tmp_path):
    for j, d in enumerate(_docs() * 4):
        (tmp_path / f"d{j}.txt").write_text(d.text.replace("item", f"item{j}"))
    data = build_data(DataConfig(recon_paths=[str(tmp_path)], builtin=None), "Repeat.")
    from e2llm.train.corpus import iter_text_files, split_documents

    tr, _ = split_documents(list(iter_text_files([str(tmp_path)], "skip")), 0, 0.1)
    assert [s.answer for s in data.recon_train] == [t.strip() for t in make_reconstruction_texts(tr, 4 * len(tr), 0, 40)]


def test_continuation_fraction_and_window_sizes(tmp_path):
    for j, d in enumerate(_docs() * 4):
        (tmp_path / f"d{j}.txt").write_text(d.text.replace("item", f"item{j}"))
    cfg = DataConfig(recon_paths=[str(tmp_path)], builtin=None, recon_words=(20, 100), continuation_fraction=0.5,
                     recon_windows_per_doc=10)
    data = build_data(cfg, "Repeat.", "Continue.")
    cont = [s for s in data.recon_train if s.prompt == "Continue."]
    recon = [s for s in data.recon_train if s.prompt == "Repeat."]
    assert abs(len(cont) - len(recon)) <= 10 and cont and recon
    assert all(s.kind == "recon" and s.answer not in s.context for s in cont)  # the target is the text after it
    lengths = sorted(len(s.answer.split()) for s in recon)
    assert lengths[0] <= 25 and lengths[-1] >= 80
    assert all(s.prompt == "Repeat." for s in data.recon_val)  # validation measures reconstruction only


def test_describe_says_the_micro_batch_size_the_step_really_uses():
    """The start line's micro-batch size is what memory depends on (batch_size counts each
    objective: 8 + 8 samples at grad_accum 2 are micro-batches of 8, not 4)."""
    counts = [1, 4, 2, 1, 3, 4, 2, 1, 3, 2]
    for grad_accum, separate in ((2, True), (4, True), (2, False), (8, True)):
        b = StepBatches(_recon_tok(counts), _recon_tok(counts), 8, grad_accum, 0, 1.0, 0, separate, 0, 1, 0, 0)
        most = max(len(part) for part in b.micro_batches(b.step_rows(3)))
        assert f"8 reconstruction + 8 QA samples, micro-batches of up to {most} a process" in b.describe(3)
    assert "micro-batches of up to 8 a process" in StepBatches(_recon_tok(counts), _empty(), 8, 1, 0, 1.0, None, True, 0, 1, 0, 0).describe(3)
    two = StepBatches(_recon_tok(counts), _recon_tok(counts), 8, 2, 0, 1.0, 0, True, 1, 2, 0, 0)  # rank 1 of 2
    assert "micro-batches of up to 4 a process" in two.describe(3)
    assert max(len(part["weight"]) for part in two[3] if part is not None) == 4
