"""The README's snippets run as printed and print what their comments say (issue 34).

Each ```python block runs in a fresh interpreter in an empty folder; a `# -> X` comment on a line
is what the output must hold at that point (the text before any parenthesis, parts split at
", ", case ignored), in order. The facts asked about are invented (tests/invented_facts.py), so
a snippet whose documents were ignored would fail. The command-line block's `ask` and `info`
lines run too, on a report.txt written here, with their [optional] flags left out.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def expectations(code: str) -> list[list[str]]:
    """[["Ida Varga"], ["48"], ...]: each `# -> X` comment's parts, in order."""
    found = []
    for match in re.finditer(r"#\s*->\s*([^\n(]+)", code):
        found.append([part.strip().lower() for part in match.group(1).split(", ") if part.strip()])
    return found


def check_output(stdout: str, expected: list[list[str]]) -> None:
    lines = [line.lower() for line in stdout.splitlines()]
    at = 0
    for parts in expected:
        while at < len(lines) and not all(p in lines[at] for p in parts):
            at += 1
        assert at < len(lines), f"no output line after the previous one holds {parts}; output:\n{stdout}"
        at += 1


def run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_checks_catch_a_wrong_answer():
    """The matcher itself: parts in one line, lines in order."""
    check_output("Ida Varga\n48\n", [["ida varga"], ["48"]])
    with pytest.raises(AssertionError):
        check_output("48\nIda Varga\n", [["ida varga"], ["48"]])
    with pytest.raises(AssertionError):
        check_output("Ida\nVarga\n", [["ida", "varga"]])
    assert expectations('print(x)  # -> 1911 (then more)\nprint(y)  # -> A, B\n# a comment') == [["1911"], ["a", "b"]]


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)), ids=lambda i: PYTHON_BLOCKS[i].split("import", 2)[1].split()[0])
def test_python_snippet_runs_as_printed(index, tmp_path):
    code = PYTHON_BLOCKS[index]
    expected = expectations(code)
    assert expected, "every README snippet says what it prints"
    proc = run([sys.executable, "-c", code], tmp_path)
    check_output(proc.stdout, expected)


def test_command_line_block_runs_as_printed(tmp_path, long_text):
    block = next(b for b in BASH_BLOCKS if b.lstrip().startswith("e2llm ask"))
    commands = [re.sub(r"\s*\[[^\]]*\]", "", line.split("  #")[0]).strip()
                for line in block.splitlines() if re.match(r"(cat report\.txt \| )?e2llm (ask|info)", line)]
    assert len(commands) == 3, commands
    (tmp_path / "report.txt").write_text(long_text[:24_000] + "\n\nThe contract was signed by Ada Moss on 3 May 2024.\n",
                                         encoding="utf-8")
    for command in commands:
        if command.startswith("cat report.txt | "):
            command = command.removeprefix("cat report.txt | ")
            proc = run(shlex.split(command), tmp_path, input=(tmp_path / "report.txt").read_text(encoding="utf-8"))
        else:
            proc = run(shlex.split(command), tmp_path)
        if " ask " in f" {command} ":
            assert "moss" in proc.stdout.lower(), proc.stdout
        else:
            assert "soft" in proc.stdout.lower(), proc.stdout
