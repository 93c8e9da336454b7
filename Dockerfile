# voxport for a CUDA host. Build: docker build -t voxport .
# Run:   docker run --gpus all -p 8000:8000 -v voxport-models:/models -v voxport-data:/data voxport
# Not built in voxport's CI (no Docker engine, no GPU there); see docs/configuration.md.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models \
    VOXPORT_VENV=/opt/venv \
    VOXPORT_GPU=1 \
    VOXPORT_HOST=0.0.0.0 \
    VOXPORT_PORT=8000 \
    VOXPORT_DATA_DIR=/data

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential curl ffmpeg \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 voxport \
 && mkdir -p /app /models /data /opt/venv \
 && chown -R voxport:voxport /app /models /data /opt/venv

WORKDIR /app
USER voxport
# Dependencies first, so that code changes do not reinstall torch.
COPY --chown=voxport:voxport pyproject.toml README.md ./
COPY --chown=voxport:voxport scripts/dev scripts/dev
COPY --chown=voxport:voxport src/voxport/__init__.py src/voxport/__init__.py
RUN scripts/dev --version
COPY --chown=voxport:voxport . .
RUN scripts/dev --version

VOLUME ["/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${VOXPORT_PORT}/health" | grep -q '"ready":true' || exit 1
ENTRYPOINT ["scripts/dev", "serve"]
