#!/usr/bin/env bash
# Creates .venv (if missing) and installs Axolotl Weave into it, with the test tools and
# bitsandbytes (QLoRA and 8-bit LoRA are tested on the CPU), torchao (its low-bit AdamW, on the
# CPU too), CAME, torch-optimi and GrokAdamW (their optimizers), TRL (the reference the
# preference losses are tested against) and the trackers and plotting (wandb, mlflow,
# tensorboard, matplotlib: tested for real), the server and the cloud recipes' clients (serve,
# deploy: fastapi, uvicorn, modal), Ray and DeepSpeed (both run on the CPU, gloo), and Gradio
# with playwright (the chat page's test drives Debian's Chromium: scripts/test.sh installs it).
# Versions come from requirements/lock.txt (re-pinned on purpose by scripts/lock.sh).
# Needs only Python >= 3.10. Torch is installed first so that no package pulls a CUDA build
# you did not ask for: an existing torch in .venv is kept; set TORCH_SPEC to choose one
# (default: torch==2.13.0 when the package index has it, else the newest torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" || python -m pip install -q torch
fi
DS_BUILD_OPS=0 python -m pip install -q -c requirements/lock.txt -e ".[dev,bnb,rl-reference,wandb,mlflow,tensorboard,plot,serve,deploy,ray,deepspeed,gradio,lm-eval,torchao,came,optimi,grokadamw]"
python -c "import axolotl_weave, torch; print(f'axolotl-weave {axolotl_weave.__version__} with torch {torch.__version__} ready in .venv')"
