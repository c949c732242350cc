#!/usr/bin/env bash
# Reproduce the shipped default checkpoint (about 2 h 40 min on a 2-core CPU), then copy it into
# the package. Stages (each config says why):
#   1  configs/default.yaml                   everything trains on QA + reconstruction (v1)
#   2  configs/ablation-frozen-decoder.yaml   adapter + encoder LoRA against a frozen decoder;
#                                             its step-250 checkpoint is what stage 3 takes
#   3  configs/default-3-recon.yaml           stage 1's decoder LoRA (frozen) + stage 2's adapter,
#                                             200 reconstruction steps
#   4  configs/default-4-joint.yaml           100 joint steps, everything trains
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
E=.venv/bin/e2llm
$E train --config configs/default.yaml
$E train --config configs/ablation-frozen-decoder.yaml
.venv/bin/python scripts/merge_checkpoints.py runs/default/model runs/frozen-decoder/checkpoints/step-000250 runs/merge-v1-frozen
$E train --config configs/default-3-recon.yaml
$E train --config configs/default-4-joint.yaml
cp runs/default-4/model/config.json runs/default-4/model/model.safetensors core/e2llm/checkpoints/default/
$E validate --checkpoint default
