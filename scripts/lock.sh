#!/usr/bin/env bash
# Re-pins every package scripts/setup.sh installs: resolves the extras setup.sh installs
# (`.[dev,bnb,rl-reference,wandb,mlflow,tensorboard,plot,serve,deploy,ray,deepspeed,gradio,lm-eval,torchao,came,optimi,grokadamw]`) afresh in a scratch
# venv (torch from TORCH_SPEC first, as setup does) and writes the versions it got to
# requirements/lock.txt, which setup.sh and CI install with `pip install -c`. This is the one
# way the pins change: run it on purpose, run `bash scripts/test.sh`, commit the lock if green.
#   bash scripts/lock.sh                          # the newest versions pyproject.toml allows
#   bash scripts/lock.sh 'transformers<5.25'      # hold a package back (recorded in the header)
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
. "$scratch/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
DS_BUILD_OPS=0 python -m pip install -q ".[dev,bnb,rl-reference,wandb,mlflow,tensorboard,plot,serve,deploy,ray,deepspeed,gradio,lm-eval,torchao,came,optimi,grokadamw]" "$@"
torch_version=$(python -c "import torch; print(torch.__version__)")
{
  echo "# Pinned versions for scripts/setup.sh and CI (pip install -c requirements/lock.txt)."
  echo "# Written by: bash scripts/lock.sh $*   on $(date -u +%Y-%m-%d), Python $(python -c 'import platform; print(platform.python_version())')"
  echo "# torch is installed before these (TORCH_SPEC; tested with $torch_version) and not pinned here."
  python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|axolotl-weave|pip|setuptools|wheel)(==| @)'
} > requirements/lock.txt.tmp
mv requirements/lock.txt.tmp requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages); now run: bash scripts/test.sh"
