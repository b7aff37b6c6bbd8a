# syntax=docker/dockerfile:1
#
# ckptserve: TorchServe + the ckptserve handler + the demo model's archive (code and config, no weights).
#
#   CPU (default):  docker build -t ckptserve:0.1.0 .
#   GPU:            docker build -t ckptserve:0.1.0-cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#     The CUDA wheel of torch carries the CUDA user-space libraries; the node only provides the driver
#     (NVIDIA container toolkit / device plugin). Pick the cuXYZ index your nodes' driver supports.
#     To build on an NVIDIA CUDA base image instead (same result, larger image; one with apt, where the
#     python3.11 package exists, e.g. Ubuntu 22.04):
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
#   Without the training demo's scikit-learn:  --build-arg EXTRAS=
#
# Weights are not in the image: the archive's config (k8s/image/model-config.yaml) watches
# /checkpoints, the volume training writes to. See k8s/README.md.

# bookworm, not the floating 3.11-slim tag: Debian 13 (trixie) has no openjdk-17 package.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------
# pybase: the interpreter every later stage shares, so the virtualenv copied from the builder runs as is.
FROM ${BASE_IMAGE} AS pybase
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1
# python:*-slim ships python3.11 with venv; a CUDA base image gets it from apt.
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---------------------------------------------------------------------------------------------------
# builder: the virtualenv and the model archive. Nothing of this stage but those two reaches the image.
FROM pybase AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=demo
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# torch first, alone, pinned by the constraints file: its layer (hundreds of MB) stays cached while the
# project's code changes. The torch index first, so "torch==2.13.0" resolves to its CPU (or CUDA) build
# and not to PyPI's default CUDA wheel; PyPI for everything else.
COPY constraints.txt ./
RUN pip install --no-cache-dir -c constraints.txt \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        torch

COPY pyproject.toml README.md ./
COPY serving ./serving
COPY handlers ./handlers
COPY model_store ./model_store
# A regular (non-editable) install: the image must not depend on /src. EXTRAS=demo adds scikit-learn,
# which the training Job example (k8s/examples/train-job.yaml) needs for its data set.
RUN pip install --no-cache-dir -c constraints.txt \
        --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        ".${EXTRAS:+[${EXTRAS}]}"

# The demo archive, built once here instead of at every container start. No --checkpoint: the config
# watches /checkpoints, so the archive holds code, labels and config only.
COPY k8s/image/model-config.yaml ./k8s/image/model-config.yaml
RUN mkdir -p /models /checkpoints \
    && ckptserve package digits \
        --architecture model:DigitsCNN \
        --model-file model_store/digits/model.py \
        --extra-files model_store/digits/index_to_name.json \
        --config k8s/image/model-config.yaml \
        --model-store /models \
    && test -f /models/digits.mar

# ---------------------------------------------------------------------------------------------------
# runtime: the image that runs.
FROM pybase AS runtime
# TorchServe's frontend is Java: the headless JRE is all it needs. The man1 folder: slim images drop
# it, and the JRE's update-alternatives links its man pages there (its install fails without it).
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid: Kubernetes can only verify runAsNonRoot for a numeric USER, and the
# training Job and the servers share the checkpoint volume as this user.
# 10001 is repeated in k8s/ (runAsUser, runAsGroup, fsGroup): change them together.
RUN groupadd --gid 10001 ckptserve \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin ckptserve \
    && mkdir -p /checkpoints /var/log/ckptserve \
    && chown 10001:10001 /checkpoints /var/log/ckptserve

COPY --from=builder /opt/venv /opt/venv
# Code, archive and training script are owned by root: the server user can read them, not change them.
COPY --from=builder /models /models
COPY --from=builder /src/model_store /app/model_store

# TEMP/TMPDIR: TorchServe's pid file, worker sockets and unpacked archives; LOG_LOCATION and
# METRICS_LOCATION: TorchServe's log files (its log4j2 config reads them). All writable places, so the
# root filesystem can be read-only (Kubernetes mounts emptyDirs there); the installed packages were
# compiled by pip, so nothing tries to write .pyc files at run time. NVIDIA_DRIVER_CAPABILITIES only
# matters on a GPU node: it asks the container toolkit for the CUDA driver libraries.
# OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep after each parallel region instead of spinning on cores
# that sibling workers need (libgomp reads it when torch is imported, before the handler runs; see
# docs/performance.md). `ckptserve serve` sets the same default for any install.
ENV PATH=/opt/venv/bin:$PATH \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TEMP=/tmp \
    TMPDIR=/tmp \
    LOG_LOCATION=/var/log/ckptserve \
    METRICS_LOCATION=/var/log/ckptserve \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The training Job runs `python model_store/digits/train.py ...` from here.
WORKDIR /app
USER 10001:10001

# 8080 HTTP inference (/ping, /predictions, /v2), 7070 TorchServe gRPC inference,
# 8001 Open Inference Protocol v2 gRPC, 8082 Prometheus /metrics.
# Not the management APIs (8081 HTTP, 7071 gRPC): they register models and scale workers, so they
# are not published (the Kubernetes Service and NetworkPolicy leave them out too).
EXPOSE 8080 7070 8001 8082

# Healthy = every model serves a checkpoint on a READY worker, as the Kubernetes readiness probe asks.
# Not /ping: it answers 200 while a worker still waits for training's first checkpoint and every
# request gets 503. `ckptserve status --ready` asks the management API on loopback with the key from
# its runtime directory (none with --no-token-auth). start-period covers the JVM start plus the first
# checkpoint load; a server that waits for training longer shows as unhealthy until it serves.
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["ckptserve", "status", "--ready", "--quiet"]

# Token authorization is on (0.0.0.0 is beyond loopback): clients send the inference key from
# /tmp/ckptserve-10001/key_file.json (`docker exec ... cat` it). Append --no-token-auth to `docker run`
# only where the network itself decides who connects (k8s/base/deployment.yaml does, and says why).
# ckptserve stops TorchServe (and its workers) on SIGTERM and exits when TorchServe exits: PID 1 safe.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ckptserve", "serve", "--foreground", "--host", "0.0.0.0", "--model-store", "/models", "--models", "ALL"]
