# voxport for a CUDA host: `docker build -t voxport .` (deploy/kubernetes/ runs it under that name), then
#   docker run --gpus all -p 8000:8000 -v voxport-models:/models -v voxport-data:/data voxport
# No CUDA base image: torch's CUDA wheels from PyPI carry their own CUDA libraries, so a slim Python image
# plus the host's NVIDIA driver (the container toolkit mounts it) is all a GPU needs.
# scripts/check-image builds this file here (a Debian base, a CPU torch) and serves a request from the result.
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}

# The torch requirement (PyPI's build for Linux x86_64 is the CUDA one); the extras of pyproject.toml ("" on
# a CPU host); Debian packages on top of the base (Triton compiles its GPU launchers with a C compiler at
# run time; "" on a CPU host). The engine versions are scripts/dev's (tests/test_image.py keeps them equal).
ARG TORCH_SPEC=torch==2.13.0
ARG EXTRAS=gpu
ARG APT_PACKAGES="gcc libc6-dev"
ARG VOXCPM_VERSION=2.0.3
ARG NANOVLLM_VERSION=2.0.5
# pip's CA bundle, for a build behind a TLS-inspecting proxy (a path the build mounts); unset: the base's.
ARG PIP_CERT

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models \
    VOXPORT_HOST=0.0.0.0 \
    VOXPORT_PORT=8000 \
    VOXPORT_DATA_DIR=/data

RUN if [ -n "$APT_PACKAGES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $APT_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --create-home --uid 10001 voxport \
 && mkdir -p /models /data \
 && chown voxport:voxport /models /data \
 && python3 -m venv /opt/venv

# Dependencies first, from pyproject.toml's metadata alone, so that a code change reuses this layer (torch
# included). torch is asked for by itself first: nothing later pulls another build of it.
COPY pyproject.toml /tmp/voxport/pyproject.toml
RUN python -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
      extras = [e for e in sys.argv[2].split(",") if e]; \
      print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' \
      /tmp/voxport/pyproject.toml "$EXTRAS" >/tmp/voxport/requirements.txt \
 && pip install --no-cache-dir "$TORCH_SPEC" \
 && pip install --no-cache-dir -r /tmp/voxport/requirements.txt \
 && pip install --no-cache-dir --no-deps "voxcpm==$VOXCPM_VERSION" \
 && case ",$EXTRAS," in *,gpu,*) pip install --no-cache-dir --no-deps "nano-vllm-voxcpm==$NANOVLLM_VERSION";; esac \
 && rm -rf /tmp/voxport

# Then the code (not editable: the image needs no source tree).
COPY pyproject.toml README.md /tmp/voxport/
COPY src /tmp/voxport/src
RUN pip install --no-cache-dir --no-deps --no-compile /tmp/voxport \
 && python -m compileall -q /opt/venv/lib/python3*/site-packages/voxport \
 && rm -rf /tmp/voxport

USER voxport
WORKDIR /home/voxport
# /models: the Hugging Face cache (HF_HOME); /data: VOXPORT_DATA_DIR (voices, jobs, cache, numba's cache).
VOLUME ["/models", "/data"]
EXPOSE 8000
# The server listens once the model is loaded (the first start downloads it: minutes); then /health answers
# 200 as long as the process does (/ready is the one that says whether it takes traffic).
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('VOXPORT_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["voxport", "serve"]
