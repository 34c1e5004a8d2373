#!/usr/bin/env bash
# Sets everything up, checks lint and format (ruff), then runs the test suite (GPU-only tests
# are skipped without a GPU), then the GPTQ tests in a second process with the GPTQ backend on
# the path (scripts/setup-gptq.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# the Gradio page is tested in a real headless Chromium: Debian's package, driven by playwright
# (whose own browser download is never used); without root or apt that test is skipped
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium; } >/dev/null || echo "chromium: not installed"
fi
ruff check . && ruff format --check .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# one OpenMP thread per test process: the workers (and the runs they start) share the CPUs, and
# torch's spinning threads would otherwise fight over them (several times slower on 2 cores)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the tests run in parallel, one worker per CPU (pytest-xdist), each file on one worker so
# that its module fixtures (a training run, a tracking server) are built once
python -m pytest -n "${WEAVE_TEST_WORKERS:-auto}" --dist loadfile "$@"
bash scripts/setup-gptq.sh
status=0
# only the files that hold GPTQ tests (collecting every file on each worker costs more than
# the tests)
mapfile -t gptq_files < <(grep -l 'mark\.gptq' tests/test_*.py)
PYTHONPATH="$PWD/.gptq" python -m pytest -m gptq -n "${WEAVE_TEST_WORKERS:-auto}" --dist loadfile \
  "${gptq_files[@]}" "$@" || status=$?
if [[ $status -ne 0 && $status -ne 5 ]]; then  # 5: the arguments selected no GPTQ test
  exit "$status"
fi
