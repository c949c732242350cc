"""Accuracy against k (soft tokens per chunk), per question kind: the research log's (docs/research-log.md) k ablation.

    python scripts/research/plot_k.py OUT.png RUN [RUN ...] [--reference RUN]

Each RUN is an ``e2llm eval`` output folder run with several checkpoints (labels k1, k2, k4);
its e2llm systems are drawn against k, pooled over the run's lengths. ``--reference`` adds an
earlier run on the same questions (e.g. the shipped checkpoint with the RAG baselines): its
systems are drawn as horizontal lines. The pooled counts are printed as a table too.
"""
import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from e2llm.eval.systems import E2LLM_SYSTEMS as _E2LLM_SYSTEMS  # noqa: E402

E2LLM_SYSTEMS = sorted(_E2LLM_SYSTEMS)  # drawn in this order: e2llm, e2llm_hybrid


def pooled(run: Path) -> dict[tuple[str, str, str], tuple[float, int]]:
    """(task, system, checkpoint) -> (right answers, questions), summed over lengths."""
    path = run / "results.json"
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: {path}: not an e2llm eval results file ({e}); run e2llm eval --output {run} first")
    out: dict = defaultdict(lambda: [0.0, 0])
    for c in cells:
        n = c["n"] - c.get("n_na", 0)
        key = (c["task"], c["system"], c["checkpoint"])
        out[key][0] += c["accuracy"] * n
        out[key][1] += n
    return {k: (round(v[0], 6), v[1]) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--reference", type=Path)
    args = p.parse_args()
    counts = {}
    for run in args.runs:
        counts.update(pooled(run))
    reference = pooled(args.reference) if args.reference else {}
    tasks = list(dict.fromkeys(t for t, _, _ in counts))  # first-seen order
    ks = sorted({int(m.group(1)) for _, _, ck in counts if (m := re.fullmatch(r"k(\d+)", ck))})
    if not ks:
        sys.exit("error: no checkpoint labelled k<N> in these runs; run e2llm eval with --checkpoint per k")

    systems = E2LLM_SYSTEMS + sorted({s for _, s, _ in reference} - set(E2LLM_SYSTEMS))
    colors = {s: f"C{i}" for i, s in enumerate(systems)}
    print("| question kind | system | " + " | ".join(f"k = {k}" for k in ks) + " | reference |")
    print("|---|---|" + "---:|" * (len(ks) + 1))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for system in E2LLM_SYSTEMS:
            cells = [counts.get((task, system, f"k{k}")) for k in ks]
            ref = [v for (t, s, _), v in reference.items() if t == task and s == system]
            if not any(cells) and not ref:
                continue
            xs = [k for k, c in zip(ks, cells) if c]
            ys = [c[0] / c[1] for c in cells if c]
            if xs:
                ax.plot(xs, ys, "o-", color=colors[system], label=system)
            text = ["–" if c is None else f"{c[0]:.0f}/{c[1]}" for c in cells]
            print(f"| {task} | {system} | " + " | ".join(text) + " | " +
                  (f"{ref[0][0]:.0f}/{ref[0][1]}" if ref else "–") + " |")
        for (t, system, _), (right, n) in sorted(reference.items()):
            if t == task and n:
                ax.axhline(right / n, color=colors[system], ls="--", lw=1, label=f"{system} (reference)")
                if system not in E2LLM_SYSTEMS:
                    print(f"| {task} | {system} | " + " | ".join("–" for _ in ks) + f" | {right:.0f}/{n} |")
        ax.set(title=task, xlabel="soft tokens per chunk (k)", xticks=ks, ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
