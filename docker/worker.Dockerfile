# The replica image: Python, the serve loop (workers/serve.py + workers/protocol.py +
# workers/redis_wire.py) and its three requirements (hiredis, cloudpickle, orjson). Nothing of
# the web app: a replica runs user code and holds no database
# credentials. Build from the repository root:
#
#   docker build -f docker/worker.Dockerfile -t launch-worker:cpu .
#   docker build -f docker/worker.Dockerfile --build-arg VARIANT=cuda -t launch-worker:cuda .
#
# The CUDA variant is the same slim Python with the NVIDIA runtime's environment: frameworks
# installed from PyPI (torch, jax, ...) bring their own CUDA libraries, and the NVIDIA
# container runtime adds the driver. For a CUDA base image instead, pass e.g.
# --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 (Python is installed from the
# distribution when the base has none). Keep the Python minor version equal to the one your
# clients pickle bundles with (cloudpickle ties a bundle to it).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=cpu
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin launch \
    && chown -R launch /opt/venv

# `python` is the venv's: derived images (a bundle's requirements) run
# `python -m pip install ...` as this user.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# What the NVIDIA runtime exposes when a container asks for GPUs (ignored without GPUs).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER launch
RUN python -m pip install --no-cache-dir hiredis==3.5.0 cloudpickle==3.1.2 orjson==3.13.0

WORKDIR /app
COPY --chown=launch workers/__init__.py workers/allocator.py workers/protocol.py workers/redis_wire.py workers/serve.py \
    workers/forwarder.py /app/workers/

LABEL org.opencontainers.image.title="launch-worker" launch.variant="${VARIANT}"
CMD ["python", "-m", "workers.serve"]
