"""Content against steps for issue 23's long CPU reconstruction run: a markdown table from the
trainer's log and a PNG beside the short probes' validate figures (docs/research-log.md).
    python scripts/research/long_recon_report.py runs/long-recon-cpu/log.jsonl docs/long-recon-cpu.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROBES = [(120, 0.025, "probe, 120 steps"), (360, 0.129, "probe, 360 steps"), (720, 0.197, "probe, 360 + 360 steps")]
# The same config's first run (2026-12-02 07:39-09:47 UTC, AMD EPYC, stopped at 540; its log was
# lost with that checkout, the figures are docs/training.md's table).
EARLIER = [(60, 0.037), (120, 0.087), (180, 0.092), (240, 0.116), (300, 0.125), (360, 0.127), (420, 0.155),
           (480, 0.150), (540, 0.159)]

log, png = sys.argv[1], sys.argv[2]
rows = [json.loads(line) for line in open(log)]
evals = [r for r in rows if "val_recon_content" in r]
print("| step | held-out recon loss (own soft prompt) | content: another chunk's - own (nats/token) | spread |")
print("|---:|---:|---:|---:|")
for r in evals:
    print(f"| {r['step']} | {r['val_loss_recon']:.3f} | {r['val_recon_content']:.3f} | {r.get('val_soft_prompt_spread', float('nan')):.3f} |")
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([r["step"] for r in evals], [r["val_recon_content"] for r in evals], "o-", label="second run, 1,620 steps (Intel AMX CPU; constant lr, 32 held-out windows)")
ax.plot(*zip(*EARLIER), "x--", color="grey", label="first run of the same config (AMD CPU, stopped at 540)")
for step, content, label in PROBES:
    ax.plot(step, content, "s", label=f"{label} (cosine lr, e2llm validate)")
ax.set_xlabel("reconstruction steps (8 windows each)")
ax.set_ylabel("content, nats/token")
ax.set_title("Own-chunk content of soft prompts, held-out text (CPU, min_spread 0.2)", fontsize=10)
ax.axhline(0.024, color="grey", ls=":", label="shipped checkpoint (0.024)")
ax.legend(fontsize=7)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(png, dpi=120)
print(f"wrote {png}")
