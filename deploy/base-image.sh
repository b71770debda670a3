#!/usr/bin/env bash
# Build the Dockerfile's base image from Debian's own packages, for hosts that reach no
# container registry (our CI machines): debootstrap a minimal bookworm with Python 3.11,
# then import it into podman (or docker) under the name the Dockerfile's FROM uses.
#
# Usage: deploy/base-image.sh [NAME]      (default churnlab-base:bookworm)
# Env:   MIRROR (default http://deb.debian.org/debian), ENGINE (default: docker if its daemon answers,
#        else podman), FORCE=1 to rebuild an image that already exists.
# Needs root (debootstrap) and about 2 minutes.
set -euo pipefail

name="${1:-churnlab-base:bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
engine="${ENGINE:-$(docker info >/dev/null 2>&1 && echo docker || echo podman)}"
here="$(cd "$(dirname "$0")" && pwd)"
# podman on hosts with hybrid cgroups: runc and capped ulimits (see containers.conf there)
if [ "$engine" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF="$here/containers.conf"
fi

fail() { echo "churnlab: error: deploy/base-image.sh: $*" >&2; exit 1; }
command -v "$engine" >/dev/null || fail "engine: expected docker or podman on PATH, found neither; install podman (apt-get install podman runc)"
command -v debootstrap >/dev/null || fail "debootstrap: expected on PATH, not found; install it (apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || fail "user: debootstrap needs root, running as $(id -un); run it with sudo"

if [ -z "${FORCE:-}" ] && "$engine" image inspect "$name" >/dev/null 2>&1; then
    echo "base image $name already exists (FORCE=1 rebuilds it)"
    exit 0
fi

root="$(mktemp -d "${TMPDIR:-/var/tmp}/churnlab-base.XXXXXX")"
trap 'rm -rf "$root"' EXIT
# python3-venv brings ensurepip (the builder stage makes its venv with it); ca-certificates
# lets pip in the builder verify PyPI. Nothing else: the runtime stage adds no packages.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
# a smaller image: apt lists, docs and caches are not needed to run Python
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar --numeric-owner -C "$root" -c . | "$engine" import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$name" >/dev/null
echo "base image $name built from Debian bookworm ($mirror)"
