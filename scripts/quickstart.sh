#!/usr/bin/env bash
# Set up (if needed), then answer a question about a long document (the Python language
# reference that ships with Python, cut to its first 160K characters: ~40K tokens) on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
mkdir -p build
.venv/bin/python - <<'PY'
import pydoc_data.topics as t
text = "\n\n".join(v.strip() for _, v in sorted(t.topics.items()))
open("build/python-reference.txt", "w", encoding="utf-8").write(text[:160_000])
PY
exec .venv/bin/e2llm ask --context build/python-reference.txt \
  --question "${1:-Which statement does Python use to handle exceptions?}" --stream --verbose
