#!/usr/bin/env bash
# Installs the GPTQ backend (scripts/gptq-requirements.txt) into .gptq/, outside .venv, so that
# the main test run sees a machine without it (and tests the message naming what to install)
# and a second run with PYTHONPATH=$PWD/.gptq tests GPTQ itself: pytest -m gptq. Needs .venv
# (scripts/setup.sh) and a C++ compiler (gptqmodel builds its CPU kernels on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
stamp=.gptq/.installed-$(sha256sum scripts/gptq-requirements.txt | cut -c1-16)
if [[ ! -f $stamp ]]; then
  rm -rf .gptq
  python -m pip install -q --no-deps --target .gptq -r scripts/gptq-requirements.txt
  touch "$stamp"
fi
PYTHONPATH=$PWD/.gptq python -c "import gptqmodel, optimum" >/dev/null 2>&1 \
  || { echo "setup-gptq: .gptq/ does not import (gptqmodel, optimum)" >&2; exit 1; }
echo "GPTQ backend ready in .gptq (use: PYTHONPATH=$PWD/.gptq)"
