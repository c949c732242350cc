#!/usr/bin/env bash
# Reproduce the shipped default checkpoint (about 2 h 10 min on a 2-core CPU), then copy it into
# the package. Stages (each config says why):
#   1  configs/ablation-frozen-decoder.yaml     adapter + encoder LoRA against the frozen decoder:
#                                               reconstruction, then QA too (450 steps)
#   2  configs/ablation-qa-only-decoder.yaml    everything trains, but only the QA loss reaches
#                                               the decoder's LoRA (150 steps)
#   3  configs/ablation-qa-only-decoder-2.yaml  100 more such steps
# The package's config reads the 2 most similar chunks raw as well (hybrid reading, raw_top_n: 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
E=.venv/bin/e2llm
$E train --config configs/ablation-frozen-decoder.yaml
$E train --config configs/ablation-qa-only-decoder.yaml
$E train --config configs/ablation-qa-only-decoder-2.yaml
cp runs/qa-only-decoder-2/model/config.json runs/qa-only-decoder-2/model/model.safetensors core/e2llm/checkpoints/default/
.venv/bin/python - <<'PY'
from pathlib import Path
from e2llm.config import E2LLMConfig
path = Path("core/e2llm/checkpoints/default/config.json")
config = E2LLMConfig.model_validate_json(path.read_text())
config.raw_top_n = 2
path.write_text(config.to_json())
PY
$E validate --checkpoint default
