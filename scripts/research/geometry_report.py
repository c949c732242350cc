"""Issue 32's comparison: held-out content (loss with another chunk's soft prompt minus with its
own, the trainer's val_recon_content) against target tokens trained, one line per run, and the
same rows as a markdown table. Runs are the trainer's output folders (log.jsonl in each), kept
runs (scripts/keep_run.py) or log files.

    python scripts/research/geometry_report.py docs/geometry-content.png runs/i32-base runs/i32-local16 ... \
        [--unlike runs/i32-base:60:runs/val-base60-machine-docs.json ...]

--unlike RUN:STEP:JSON adds `e2llm validate --docs ... --json JSON` of that run's STEP checkpoint
(text unlike the training corpus) as a point at the tokens the run had trained by then.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def log_rows(run: Path) -> list[dict]:
    """The records of a run folder's (or a kept run's) log.jsonl, or of a log file itself."""
    log = run if run.is_file() else run / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_name(run: Path) -> str:
    return run.name.replace(".log.jsonl", "")


def curve(run: Path) -> list[dict]:
    """Each evaluation with the tokens trained up to its step (the nearest step record before it)."""
    rows = log_rows(run)
    tokens, elapsed, out = {}, {}, []
    for r in rows:
        if "train_tokens" in r:
            tokens[r["step"]], elapsed[r["step"]] = r["train_tokens"], r.get("elapsed_s")
    for r in rows:
        if "val_recon_content" in r:
            before = max((s for s in tokens if s <= r["step"]), default=None)
            out.append({**r, "train_tokens": tokens.get(before), "elapsed_s": elapsed.get(before)})
    return out


def main() -> int:
    args = sys.argv[1:]
    unlike = [args[i + 1] for i, a in enumerate(args) if a == "--unlike"]
    rest = [a for i, a in enumerate(args) if a != "--unlike" and (i == 0 or args[i - 1] != "--unlike")]
    png, runs = Path(rest[0]), [Path(a) for a in rest[1:]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), sharex=True)
    colour = {}
    print("| run | step | target tokens trained | held-out recon loss | content (nats/token) | spread |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        points = curve(run)
        name = run_name(run)
        for p in points:
            print(f"| {name} | {p['step']} | {p['train_tokens'] or 0:,} | {p['val_loss_recon']:.3f} | "
                  f"{p['val_recon_content']:.3f} | {p.get('val_soft_prompt_spread', float('nan')):.3f} |")
        if points:
            line, = ax.plot([p["train_tokens"] or 0 for p in points], [p["val_recon_content"] for p in points], "o-", label=name)
            colour[name] = line.get_color()
    # text unlike the training corpus: one line per run and text set, in the run's colour
    series: dict = {}
    for spec in unlike:
        run, step, path = spec.split(":")
        tokens = max((r["train_tokens"] for r in log_rows(Path(run)) if "train_tokens" in r and r["step"] <= int(step)),
                     default=0)
        v = json.loads(Path(path).read_text())
        content = v["loss_with_other_soft_prompt"] - v["loss_with_soft_prompt"]
        name = run_name(Path(run))
        print(f"| {name} on {v.get('docs')} (validate) | {step} | {tokens:,} | {v['loss_with_soft_prompt']:.3f} | "
              f"{content:.3f} | {v['soft_prompt_spread']:.3f} |")
        series.setdefault((name, Path(str(v.get("docs"))).name), []).append((tokens, content))
    for (name, docs), pts in series.items():
        pts.sort()
        ax2.plot(*zip(*pts), "s-" if "machine" in docs else "^--", color=colour.get(name), label=f"{name}, {docs}")
    if series:
        ax2.axhline(1.0, color="black", ls=":", lw=0.8, label="issue 32's target (1.0)")
    ax.set_title("held-out windows of the training kinds (trainer)", fontsize=10)
    ax2.set_title("text of kinds never trained on (e2llm validate --docs)", fontsize=10)
    for a in (ax, ax2):
        a.set_xlabel("target tokens trained (reconstruction + continuation)")
        a.set_ylabel("content, nats/token (another chunk's loss - own)")
        a.axhline(0, color="grey", lw=0.8)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
