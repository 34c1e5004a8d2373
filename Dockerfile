# Axolotl Weave on an NVIDIA GPU: CUDA, a CUDA build of torch, and this checkout installed with
# its GPU extras. The entry point is `weave`.
#
#   docker build -t axolotl-weave .
#   docker build -t axolotl-weave:cu126 --build-arg CUDA_VERSION=12.6.3 --build-arg TORCH_CUDA=cu126 .
#   docker run --gpus all --rm -v "$PWD:/workspace" axolotl-weave train examples/quickstart.yml
#
# The build arguments: CUDA_VERSION and UBUNTU_VERSION pick the nvidia/cuda base image;
# TORCH_VERSION and TORCH_CUDA the torch wheel (TORCH_CUDA names the index of
# download.pytorch.org/whl/, which must match the CUDA major.minor: cu126, cu128, cu130...);
# EXTRAS the optional dependencies installed with the project. See docs/deploy.md.
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION}

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG EXTRAS=bnb,torchao,wandb,mlflow,tensorboard,plot

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/root/.cache/huggingface

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip setuptools wheel

# torch first, from the CUDA index the build arguments name, so that nothing pulls another build
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"

# the project (not editable: the wheel carries the bundled examples), versions from the lock file
WORKDIR /opt/axolotl-weave
COPY . .
RUN pip install -c requirements/lock.txt ".[${EXTRAS}]" \
    && python -c "import axolotl_weave, torch; print('axolotl-weave', axolotl_weave.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
    && weave plugin list > /dev/null

WORKDIR /workspace
ENTRYPOINT ["weave"]
CMD ["--help"]
