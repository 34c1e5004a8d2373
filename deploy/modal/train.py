"""Modal app: `weave train` on a Modal GPU, in the image of this repository's Dockerfile.

From the repository root:

    modal run deploy/modal/train.py --config examples/quickstart.yml
    WEAVE_MODAL_GPU=A100-80GB modal run deploy/modal/train.py --config my-config.yml
    modal volume get axolotl-weave-runs quickstart ./outputs/quickstart

The config is read here and sent to the container; there the run starts in the image's copy of
this repository (so `examples/...` and other files of the checkout resolve as they do here) and
writes its output_dir to the `axolotl-weave-runs` volume, under the config's name. The Hugging
Face cache is a second volume, so models download once. Secrets (HF_TOKEN, WANDB_API_KEY...)
come from the Modal secrets named in WEAVE_MODAL_SECRETS (comma-separated). See docs/deploy.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

ROOT = Path(__file__).resolve().parents[2]
"""The repository: the Dockerfile's build context."""
SOURCE = "/opt/axolotl-weave"
"""Where the Dockerfile copies the repository inside the image."""
RUNS = "/runs"
GPU = os.environ.get("WEAVE_MODAL_GPU", "L40S")
SECRETS = [name for name in os.environ.get("WEAVE_MODAL_SECRETS", "").split(",") if name]
TIMEOUT_S = int(os.environ.get("WEAVE_MODAL_TIMEOUT_S", str(24 * 3600)))

image = modal.Image.from_dockerfile(
    ROOT / "Dockerfile",
    context_dir=ROOT,
    build_args={
        "CUDA_VERSION": os.environ.get("CUDA_VERSION", "12.8.1"),
        "TORCH_VERSION": os.environ.get("TORCH_VERSION", "2.13.0"),
        "TORCH_CUDA": os.environ.get("TORCH_CUDA", "cu128"),
    },
).entrypoint([])  # Modal runs its own entry point; the image's is `weave`

runs = modal.Volume.from_name("axolotl-weave-runs", create_if_missing=True)
hf_cache = modal.Volume.from_name("axolotl-weave-hf-cache", create_if_missing=True)

app = modal.App("axolotl-weave")


@app.function(
    image=image,
    gpu=GPU,
    timeout=TIMEOUT_S,
    volumes={RUNS: runs, "/root/.cache/huggingface": hf_cache},
    secrets=[modal.Secret.from_name(name) for name in SECRETS],
)
def train(config_text: str, run_name: str, overrides: list[str]) -> str:
    """Write the config into the run's folder on the volume and train with it there."""
    import subprocess

    out = Path(RUNS) / run_name
    out.mkdir(parents=True, exist_ok=True)
    config = out / "input-config.yml"
    config.write_text(config_text)
    command = ["weave", "train", str(config), "--output_dir", str(out), *overrides]
    try:
        subprocess.run(command, cwd=SOURCE, check=True)
    finally:
        runs.commit()  # what was saved, also when the run failed
    return str(out)


@app.local_entrypoint()
def main(config: str = "examples/quickstart.yml", overrides: str = "") -> None:
    """`modal run deploy/modal/train.py --config FILE [--overrides "--key value ..."]`."""
    path = Path(config)
    out = train.remote(path.read_text(), path.stem, overrides.split())
    print(f"done: the run is in the volume axolotl-weave-runs at {out}")
    print(f"  modal volume get axolotl-weave-runs {path.stem} ./outputs/{path.stem}")
