#!/usr/bin/env bash
# Sets everything up, then fine-tunes the bundled tiny llama (examples/quickstart.yml) on CPU or GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
weave train examples/quickstart.yml "$@"
