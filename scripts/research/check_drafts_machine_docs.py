"""Drafts from the prompt on text unlike the training corpus: Debian changelogs, copyright files and package
metadata (runs/machine-docs, built by the script in docs/defaults.md), three questions each, answered with
engine.draft_tokens = 0 and 8 (interleaved), and by the float32 decoder: identical answers, differing texts, and
decode ms a token after the first.
    python scripts/research/check_drafts_machine_docs.py [docs]"""
import dataclasses
import sys
from pathlib import Path

from e2llm import E2LLM
from e2llm.bench import _StepClock

engine = E2LLM.from_pretrained("default")
files = sorted(Path("runs/machine-docs").glob("*.txt"))
n_docs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
files = files[:: max(1, len(files) // n_docs)][:n_docs]
questions = ("Who maintains this package?", "What is the latest version mentioned?", "Which license applies?")
totals, same, total, exact = {0: [0.0, 0], 8: [0.0, 0]}, 0, 0, {0: 0, 8: 0}
tok = engine.decoder_tokenizer
for path in files:
    doc = path.read_text(encoding="utf-8", errors="replace")[:20000]
    for q in questions:
        spliced = engine._splice([engine._prepare(q, doc, max_new_tokens=32, overflow="truncate")])
        settings, outs = engine._gen_kwargs(32, False, 1.0, 1.0, None), {}
        for k in totals:
            clock = _StepClock()
            outs[k] = engine._run_generate(spliced, dataclasses.replace(settings, draft_tokens=k), streamer=clock)[0].tolist()
            if len(clock.times) > 1:
                totals[k][0] += clock.times[-1] - clock.times[0]
                totals[k][1] += len(clock.times) - 1
        engine.fast_decode = False
        f32 = engine._run_generate(spliced, settings)[0].tolist()
        engine.fast_decode = True
        for k in exact:
            exact[k] += outs[k] == f32
        same += outs[0] == outs[8]
        total += 1
        if outs[0] != outs[8]:
            print(f"{path.name} | {q} | one a pass {tok.decode(outs[0], skip_special_tokens=True)!r} | "
                  f"drafts {tok.decode(outs[8], skip_special_tokens=True)!r} | float32 {tok.decode(f32, skip_special_tokens=True)!r}")
for k, (seconds, n) in totals.items():
    print(f"draft_tokens={k}: {1000 * seconds / max(1, n):.1f} ms a token over {n} tokens")
print(f"identical tokens with and without drafts: {same}/{total} answers ({len(files)} documents)")
print(f"identical to float32: one token a pass {exact[0]}/{total}, with drafts {exact[8]}/{total}")
