#!/usr/bin/env bash
# The prepared accelerator check (issue 20 part 7, issue 33 part 7): on a machine with NVIDIA GPUs,
# in well under 8 minutes: the tiny models on CUDA in bf16, torchrun with one process per visible GPU
# (NCCL DDP, then FSDP2 with the decoder sharded over them, validation with generation checks), and a
# reconstruction + QA step's throughput on the real default models; one JSON report. Exit code 1 when
# any part fails, a training loss that is not finite or does not fall included.
# On a CPU it runs every part there (two gloo processes, float32) and the report says so.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default: $OUT on the device machine, else build/
#
# On the device machine (no network, python3 with torch there): e2llm's own code runs from core/
# (PYTHONPATH); its few missing packages come as wheels (carry build/gpu-carry/wheels, made by
# scripts/gpu_train.sh pack, or run gpu_train.sh setup first), and the real models as the parts
# gpu_train.sh receives; without the models the profile part fails alone, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-build}}"
mkdir -p "$out"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
if ! $PY -c "import pydantic" 2>/dev/null && ls build/gpu-carry/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/e2llm-site build/gpu-carry/wheels/*.whl || exit 1
fi
[ -d /tmp/e2llm-site ] && export PYTHONPATH="/tmp/e2llm-site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD/core:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d /tmp/e2llm-models/cache ] && export E2LLM_CACHE=/tmp/e2llm-models/cache  # the decoder, converted (gpu_train.sh)
[ -d /tmp/e2llm-models/site ] && export PYTHONPATH="/tmp/e2llm-models/site:$PYTHONPATH"  # the encoder package
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec timeout 470 $PY scripts/gpu_check.py --out "$out/gpu_check.json" "${@:2}"
