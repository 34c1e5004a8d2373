#!/usr/bin/env bash
# Sets everything up, checks lint and format (ruff), then runs the test suite (GPU-only tests
# are skipped without a GPU), then the GPTQ tests in a second process with the GPTQ backend on
# the path (scripts/setup-gptq.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check . && ruff format --check .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest "$@"
bash scripts/setup-gptq.sh
status=0
PYTHONPATH="$PWD/.gptq" python -m pytest -m gptq "$@" || status=$?
if [[ $status -ne 0 && $status -ne 5 ]]; then  # 5: the arguments selected no GPTQ test
  exit "$status"
fi
