#!/usr/bin/env bash
# Build the node image's base without any registry: a minimal Debian bookworm root filesystem
# (Python 3.11 + venv) made with debootstrap and turned into an image with `docker import`.
# This is also the air-gapped path: point MIRROR at a local Debian mirror (or run it where one is
# reachable and `docker save` / `docker load` the result).
#
#   scripts/docker/build_base_image.sh            # -> fedpeer-base:bookworm (skipped if present)
#   FORCE=1 BASE_TAG=my-base:1 MIRROR=http://mirror.local/debian scripts/docker/build_base_image.sh
#
# Needs root (debootstrap), debootstrap and a Docker engine (scripts/docker/ensure_docker.sh).
set -euo pipefail

BASE_TAG=${BASE_TAG:-fedpeer-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
log() { echo "[build_base_image] $*"; }

if [[ -z ${FORCE:-} ]] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  log "$BASE_TAG exists; skipping (FORCE=1 rebuilds it)"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  log "error: debootstrap needs root: run this script as root (sudo $0)"
  exit 1
fi
command -v debootstrap >/dev/null || { log "error: debootstrap is missing: apt-get install -y debootstrap"; exit 1; }

rootfs=$(mktemp -d /tmp/fedpeer-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
start=$(date +%s)
log "debootstrap $SUITE (minbase + python3, python3-venv) from $MIRROR into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
  || { tail -n 20 "$rootfs.log" >&2; log "error: debootstrap failed (full log: $rootfs.log)"; exit 1; }
rm -f "$rootfs.log"
# What a runtime image never needs: package caches and lists, docs, man pages, locales.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
log "importing the root filesystem as $BASE_TAG"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$BASE_TAG" >/dev/null
log "built $BASE_TAG in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$BASE_TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
