#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`, and that debootstrap is there (for the base
# image). On a fresh Debian/Ubuntu machine as root: installs docker.io and debootstrap from the
# distribution's packages and starts dockerd in the background (no systemd needed). Used by .ci/run;
# safe to run again (does nothing when the engine already answers).
set -euo pipefail

log() { echo "[ensure_docker] $*"; }
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/fedpeer-dockerd.log}

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v iptables >/dev/null || missing+=(iptables)
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    log "error: ${missing[*]} missing and this is not root: run as root, or install them (apt-get install -y ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]} from the distribution's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  log "Docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  log "error: no Docker engine answers and this is not root: start dockerd (sudo dockerd &) or add yourself to the docker group"
  exit 1
fi
log "starting dockerd in the background (log: $DOCKERD_LOG)"
nohup dockerd >"$DOCKERD_LOG" 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    log "Docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
  fi
  sleep 1
done
log "error: dockerd did not come up within 60 s; last lines of $DOCKERD_LOG:"
tail -n 20 "$DOCKERD_LOG" >&2
exit 1
