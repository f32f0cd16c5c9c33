# bids_parcellate BIDS-App image.
#
#   docker build -t bids_parcellate .
#   docker run --rm --read-only --tmpfs /tmp -v /data/ds:/data:ro -v /data/out:/out \
#       bids_parcellate /data /out participant
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module: an official Python
# image (default) or a Debian image with python3 + python3-venv (the CI builds one with
# debootstrap: scripts/ci_container.sh). docs/containers.md has docker, podman and
# Apptainer/Singularity instructions.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# Non-root user. Its HOME is readable (not writable) by any UID: docker --user and
# Apptainer run as the caller's UID, so nothing may need to be written under HOME;
# every cache points to /tmp (writable even with --read-only plus a tmpfs on /tmp).
RUN groupadd --gid 1000 bidsapp \
    && useradd --uid 1000 --gid 1000 --no-log-init --create-home \
       --home-dir /home/bidsapp --shell /bin/sh bidsapp \
    && chmod 0755 /home/bidsapp

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/bidsapp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    NILEARN_DATA=/tmp/nilearn_data \
    NILEARN_SHARED_DATA=/tmp/nilearn_data \
    BIDS_PARCELLATE_CONTAINER_TYPE=docker

# Dependencies first (own layer, rebuilt only when the lock changes): exactly the pinned
# versions the tests ran with, no resolver (--no-deps), then a consistency check.
COPY requirements/runtime.lock /opt/bids_parcellate/runtime.lock
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-deps -r /opt/bids_parcellate/runtime.lock \
    && pip check

# The package itself (pip builds it in an isolated environment, so no build tools stay
# in the image). pip byte-compiles what it installs: read-only runs need no .pyc writes.
COPY pyproject.toml README.md /opt/bids_parcellate/src/
COPY bids_parcellate /opt/bids_parcellate/src/bids_parcellate
COPY boilerplate /opt/bids_parcellate/src/boilerplate
RUN pip install --no-deps /opt/bids_parcellate/src \
    && pip check \
    && rm -rf /opt/bids_parcellate/src \
    && bids_parcellate --version

# Metadata last: build arguments change with every commit, and a changed argument
# invalidates the cache of every RUN after its declaration.
ARG VERSION=0.1.0
ARG IMAGE_NAME=ghcr.io/bids-parcellate/bids_parcellate
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown

LABEL org.opencontainers.image.title="bids_parcellate" \
      org.opencontainers.image.description="BIDS-App: data-driven brain parcellations from fMRIPrep derivatives" \
      org.opencontainers.image.source="https://github.com/bids-parcellate/bids_parcellate" \
      org.opencontainers.image.url="https://github.com/bids-parcellate/bids_parcellate" \
      org.opencontainers.image.documentation="https://github.com/bids-parcellate/bids_parcellate/blob/main/docs/containers.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}"

# outputs.in_container() reads this: dataset_description.json's GeneratedBy.Container.
ENV BIDS_PARCELLATE_CONTAINER_IMAGE=${IMAGE_NAME}:${VERSION}

# Numeric, so that runtimes can check "non-root" without reading /etc/passwd (DL3066).
USER 1000:1000
WORKDIR /home/bidsapp
ENTRYPOINT ["bids_parcellate"]
CMD ["--help"]
