"""docs/recipes.png: the research log's (docs/research-log.md) recipe ablations, soft-prompt gain vs 12K hybrid QA.

The numbers are the research log table's (each row measured with `e2llm validate` and the 12K
`e2llm eval` command given there); add a row here when the table gets one.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# name, soft prompt's gain (nats/token), 12K QA answered in hybrid mode (of 30), shipped, label offset
RECIPES = [
    ("v1 (stage 1)", 0.032, 15, False, (6, 6)),
    ("stages 1-3", 0.117, 11, False, (6, 6)),
    ("stages 1-3, k = 4", 0.146, 12, False, (6, 6)),
    ("previous default (stages 1-4)", 0.141, 17, False, (6, 6)),
    ("frozen decoder + QA", 0.477, 8, False, (-40, 8)),
    ("+ decoder stage", 0.530, 8, False, (6, -12)),
    ("frozen decoder, then QA-only decoder LoRA", 0.865, 13, False, (-200, 8)),
    ("shipped: + 100 more steps", 1.100, 16, True, (-130, 8)),
]
RAG, NONE = 10, 1

fig, ax = plt.subplots(figsize=(7.5, 4.2))
for name, gain, qa, shipped, offset in RECIPES:
    ax.plot(gain, qa, "o", color="tab:red" if shipped else "tab:blue", markersize=7)
    ax.annotate(name, (gain, qa), textcoords="offset points", xytext=offset, fontsize=8)
ax.axhline(RAG, color="gray", ls="--", lw=1)
ax.text(0.75, RAG + 0.3, f"RAG, same budget ({RAG}/30)", color="gray", fontsize=8)
ax.axhline(NONE, color="gray", ls=":", lw=1)
ax.text(0.75, NONE + 0.3, f"no context ({NONE}/30)", color="gray", fontsize=8)
ax.set(xlim=(0, 1.2), ylim=(0, 20), xlabel="soft prompt's gain on held-out chunks (nats/token, e2llm validate)",
       ylabel="12K QA answered, hybrid (of 30)", title="Recipes: what soft prompts carry vs questions answered")
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("docs/recipes.png", dpi=110)
print("wrote docs/recipes.png")
