#!/usr/bin/env bash
# Container check of .ci/run, for a Debian 12 machine without a Docker engine.
#
# Installs podman (+ runc, debootstrap) with apt when missing, builds a Debian bookworm
# base image offline-style with debootstrap from the machine's own apt mirror, builds
# our image on it with `--build-arg BASE_IMAGE=...`, and runs scripts/container_smoke.sh
# on it (version, participant and group levels, read-only input, validator). Every step
# prints its wall time; the image size is printed too.
#
# Everything podman stores (image layers, the rootfs) lives under $CI_CONTAINER_DIR
# (default /var/tmp/bids_parcellate-ci), outside the repository, with its own podman
# configuration: the machine's /etc/containers is not modified.
#
# Environment:
#   CI_CONTAINER_DIR   state folder (default /var/tmp/bids_parcellate-ci)
#   REUSE_BASE=1       keep an existing base image instead of rebuilding it (local reruns)
#   STORAGE_DRIVER     overlay (default) or vfs
#
# If podman cannot run containers on this machine, the script says so with podman's own
# error and exits 1: this check never passes silently.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${CI_CONTAINER_DIR:-/var/tmp/bids_parcellate-ci}
BASE_IMAGE=localhost/bids_parcellate-base:bookworm
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' bids_parcellate/__init__.py)
IMAGE=localhost/bids_parcellate:${VERSION}
SUITE=bookworm

say() { printf '::: container: %s\n' "$*"; }
die() {
    printf '\n!!!!!!!! CONTAINER CHECK FAILED: %s\n\n' "$*" >&2
    exit 1
}
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
timed() {
    local name=$1; shift
    local start=$EPOCHREALTIME rc=0
    "$@" || rc=$?
    printf '::: container: %-34s %6s s (exit %d)\n' "$name" "$(since "$start")" "$rc"
    [ "$rc" -eq 0 ] || die "$name: exit $rc"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then sudo "$@"
    else die "'$*' needs root (no passwordless sudo): cannot install podman/debootstrap"
    fi
}

install_tools() {
    local missing=()
    command -v podman > /dev/null || missing+=(podman)
    command -v runc > /dev/null || missing+=(runc)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    command -v newuidmap > /dev/null || missing+=(uidmap)
    if [ ${#missing[@]} -eq 0 ]; then say "podman, runc, debootstrap already installed"; return; fi
    say "installing ${missing[*]} with apt"
    # (installs all four: apt skips those already there)
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends podman runc debootstrap uidmap containernetworking-plugins \
        > "$STATE/apt.log" 2>&1 || { tail -20 "$STATE/apt.log" >&2; return 1; }
}

# Private podman configuration: runc (Debian's podman depends on crun | runc; runc is
# the one installed and known to work here); default file limits below the machine's
# hard limit (podman's default, 1048576, is above it and runc then fails with "error
# setting rlimit type 7: operation not permitted"); storage under $STATE.
configure_podman() {
    local driver=${STORAGE_DRIVER:-overlay}
    cat > "$STATE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=16384:16384"]

[engine]
runtime = "runc"
EOF
    cat > "$STATE/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$STATE/storage-$driver"
runroot = "$STATE/run-$driver"
EOF
    export CONTAINERS_CONF=$STATE/containers.conf
    export CONTAINERS_STORAGE_CONF=$STATE/storage.conf
    podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' \
        > "$STATE/podman-info.txt" 2>&1 || { cat "$STATE/podman-info.txt" >&2; return 1; }
    say "podman $(podman version --format '{{.Client.Version}}'): runtime and storage:" \
        "$(cat "$STATE/podman-info.txt")"
}

# The apt mirror this machine uses (deb822 or one-line format), else Debian's default.
debian_mirror() {
    local uri
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2> /dev/null \
        | grep -v -- '-security' | head -1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            2> /dev/null | grep -v -- '-security' | awk '{print $2}' | head -1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
    if [ "${REUSE_BASE:-0}" = 1 ] && podman image exists "$BASE_IMAGE"; then
        say "REUSE_BASE=1: reusing $BASE_IMAGE (its build time is not measured here)"
        return
    fi
    local rootfs=$STATE/rootfs mirror
    mirror=$(debian_mirror)
    say "debootstrap $SUITE from $mirror"
    as_root rm -rf "$rootfs"
    as_root debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates,passwd \
        "$SUITE" "$rootfs" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap.log" >&2; return 1; }
    # The machine's extra CA certificates (an HTTPS proxy's, for instance), so that pip
    # inside the image build reaches the package index exactly as on the host.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
        as_root cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        as_root chroot "$rootfs" update-ca-certificates > /dev/null 2>&1
    fi
    # Like Debian's official slim images: no package caches, documentation or locales.
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    as_root tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > /dev/null
    as_root rm -rf "$rootfs"
}

build_image() {
    podman build --network host --format docker \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "VERSION=$VERSION" \
        --build-arg "IMAGE_NAME=localhost/bids_parcellate" \
        --build-arg "VCS_REF=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)" \
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        -t "$IMAGE" -f Dockerfile . > "$STATE/build.log" 2>&1 \
        || { tail -40 "$STATE/build.log" >&2; return 1; }
}

# A container must start and exit: the check that podman works here at all.
probe() {
    podman run --rm --network none "$BASE_IMAGE" /bin/true > "$STATE/probe.log" 2>&1 \
        || { cat "$STATE/probe.log" >&2; return 1; }
}

main() {
    mkdir -p "$STATE"
    timed "install podman" install_tools
    configure_podman || die "podman cannot run on this machine (podman info failed: see above)"
    timed "base image (debootstrap + import)" build_base
    probe || die "podman cannot run a container on this machine (see podman's error above)"
    timed "image build" build_image
    say "image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" \
        | awk '{printf "%.0f MB", $1 / 1e6}') (base $BASE_IMAGE: $(podman image inspect \
        --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
    timed "smoke run" scripts/container_smoke.sh podman "$IMAGE" "$STATE/smoke"
}

main "$@"
