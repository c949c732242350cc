"""Imports point down: no module of e2llm imports one that (directly or not) imports it back.

Every import statement counts, those inside functions too: a deferred import still ties the two
modules together, and it is how the circles bench <-> eval.systems and decoding <-> lean were
hidden. The layers, top to bottom: the command line, the benchmarks, the evaluation, training,
the engine. (test_eval.py keeps eval and train to each other's public names.)
"""
import ast
from pathlib import Path

import e2llm

ROOT = Path(e2llm.__file__).parent

# A module may import from its own layer or any below it, never from one above. The subcommand
# modules sit with the command line: `e2llm validate` reads eval's metrics, for instance.
LAYERS = [
    ("e2llm.cli", "e2llm.bench.cli", "e2llm.eval.cli", "e2llm.train.cli", "e2llm.train.validate"),
    ("e2llm.bench",),
    ("e2llm.eval",),
    ("e2llm.train",),
]
# Known upward imports, each with the one-line change that removes it (in files being edited by
# others when this test was written). Remove the entry with the change: the test then holds it.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("e2llm", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the e2llm modules it imports (a package importing from its parent, as in
    ``from . import defaults``, names the parent's submodule, not the parent package)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + ([base] if node.module else [])
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # e2llm.x.name -> e2llm.x
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a parent package is loaded anyway
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return len(LAYERS)  # the engine and everything else


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_imports_point_down_the_layers():
    wrong = [f"{m} imports {d}" for m, deps in import_graph().items() for d in deps
             if _layer(d) < _layer(m) and (m, d) not in KNOWN_UPWARD]
    assert wrong == []


def test_the_checks_see_a_circle_and_an_upward_import():
    """The two checks above would fail on the faults they guard."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "e2llm.lean" in graph["e2llm.decoding"]  # the graph sees top-level imports ...
    assert "e2llm.eval.tasks" in graph["e2llm.bench.measure"]  # ... and imports inside functions
    assert _layer("e2llm.eval.systems") > _layer("e2llm.bench.latency_bench") > _layer("e2llm.bench.cli") == _layer("e2llm.cli")
    assert _layer("e2llm.model") == len(LAYERS)
    assert all(d in import_graph()[m] for m, d in KNOWN_UPWARD)  # an entry whose import is gone must go too
