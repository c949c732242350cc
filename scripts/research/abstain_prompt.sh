#!/usr/bin/env bash
# Issue 32: can the shipped default say "the document does not say" when told to, without
# training? A copy of the default whose system prompt adds that instruction, beside the default
# as shipped, on questions the document cannot answer (unanswerable) and on real questions it can
# (real_field), over runs/machine-docs (Debian changelogs, licences, package metadata).
#   bash scripts/research/abstain_prompt.sh [OUT_PREFIX]
set -euo pipefail
out=${1:-runs/abstain}
ck=$out-checkpoint
python - "$ck" <<'PY'
import json, shutil, sys
from pathlib import Path
import e2llm
src, dst = Path(e2llm.__file__).parent / "checkpoints" / "default", Path(sys.argv[1])
if not dst.exists():
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["prompt"]["system"] += " If the document does not say, answer: The document does not say."
    (dst / "config.json").write_text(json.dumps(config, indent=1))
PY
common=(--docs runs/machine-docs --threads "${THREADS:-2}" --no-progress --max-new-tokens 64 --systems e2llm_hybrid)
# the default as shipped on real_field, the same items and settings: runs/real-field64 (docs/defaults.md)
e2llm eval --checkpoint default "${common[@]}" --output "$out-shipped" --tasks unanswerable --lengths 512 2K 8K --items "${ITEMS:-30}"
e2llm eval --checkpoint "$ck" "${common[@]}" --output "$out-told" --tasks unanswerable real_field --lengths 512 2K 8K --items "${ITEMS:-30}"
