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
# the tests run in parallel, one worker per CPU (pytest-xdist), each file on one worker so
# that its module fixtures (a training run, a tracking server) are built once
python -m pytest -n "${WEAVE_TEST_WORKERS:-auto}" --dist loadfile "$@"
bash scripts/setup-gptq.sh
status=0
PYTHONPATH="$PWD/.gptq" python -m pytest -m gptq -n "${WEAVE_TEST_WORKERS:-auto}" --dist loadfile "$@" || status=$?
if [[ $status -ne 0 && $status -ne 5 ]]; then  # 5: the arguments selected no GPTQ test
  exit "$status"
fi
