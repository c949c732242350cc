"""How close bf16 fast decoding comes to the float32 decoder's greedy text on text unlike the training
corpus (Debian changelogs, copyright files, package descriptions in runs/machine-docs; docs/defaults.md
builds it), three questions each, 32 new tokens, drafts on as shipped. Variants of the lean bf16 copy:
  bf16          the residual stream in bf16 (as shipped)
  f32-residual  bf16 weights, residual stream and norms in float32 (LeanDecoder.float_residual)
  f32-res+head  as f32-residual, and a float32 lm_head
Prints, for each, answers identical to float32 and decode ms a token after the first (interleaved).
    git checkout e5659b3 -- core/e2llm/lean.py   # the float_residual knob, removed after this probe
    python scripts/research/probe_bf16_agreement.py [docs]"""
import sys
from pathlib import Path

import torch

from e2llm import E2LLM
from e2llm.bench import _StepClock
from e2llm.decoding import build_inference_copy, lora_enabled

engine = E2LLM.from_pretrained("default")
lean = engine._inference_decoder()
bf16_head = lean.lm_head
f32_copy = build_inference_copy(engine.decoder, lora_enabled(engine.decoder), torch.float32, pack=False)
f32_head = f32_copy.lm_head


def variant(name):
    lean.float_residual = name != "bf16"
    lean.lm_head = f32_head if name == "f32-res+head" else bf16_head


files = sorted(Path("runs/machine-docs").glob("*.txt"))
n_docs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
files = files[:: max(1, len(files) // n_docs)][:n_docs]
questions = ("Who maintains this package?", "What is the latest version mentioned?", "Which license applies?")
names = ("bf16", "f32-residual", "f32-res+head")
same, clock_ms, tokens, total = dict.fromkeys(names, 0), dict.fromkeys(names, 0.0), dict.fromkeys(names, 0), 0
tok = engine.decoder_tokenizer
for path in files:
    doc = path.read_text(encoding="utf-8", errors="replace")[:20000]
    for q in questions:
        spliced = engine._splice([engine._prepare(q, doc, max_new_tokens=32, overflow="truncate")])
        settings = engine._gen_kwargs(32, False, 1.0, 1.0, None)
        engine.fast_decode = False
        f32 = engine._run_generate(spliced, settings)[0].tolist()
        engine.fast_decode = True
        total += 1
        for name in names:
            variant(name)
            clock = _StepClock()
            out = engine._run_generate(spliced, settings, streamer=clock)[0].tolist()
            if len(clock.times) > 1:
                clock_ms[name] += 1e3 * (clock.times[-1] - clock.times[0])
                tokens[name] += len(clock.times) - 1
            same[name] += out == f32
            if out != f32:
                print(f"{name:13s} {path.name} | {q} | {tok.decode(out, skip_special_tokens=True)!r} | "
                      f"float32 {tok.decode(f32, skip_special_tokens=True)!r}", flush=True)
for name in names:
    print(f"{name:13s} identical to float32 {same[name]}/{total}; "
          f"{clock_ms[name] / max(1, tokens[name]):.1f} ms a token over {tokens[name]} tokens")
