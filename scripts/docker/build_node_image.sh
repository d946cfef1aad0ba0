#!/usr/bin/env bash
# Build the node image from the wheelhouse (offline: the build downloads nothing).
#
#   scripts/docker/build_node_image.sh                   # fedpeer-base:bookworm -> fedpeer-node:latest
#   BASE_IMAGE=python:3.11-slim-bookworm NODE_TAG=fedpeer-node:dev scripts/docker/build_node_image.sh
#
# Prepare first: scripts/docker/build_base_image.sh (or any BASE_IMAGE you have) and
# scripts/docker/build_wheelhouse.sh (WHEELHOUSE must stay .wheelhouse: the Dockerfile copies it).
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=${BASE_IMAGE:-fedpeer-base:bookworm}
NODE_TAG=${NODE_TAG:-fedpeer-node:latest}
log() { echo "[build_node_image] $*"; }

docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
  || { log "error: no image $BASE_IMAGE: run scripts/docker/build_base_image.sh (or set BASE_IMAGE)"; exit 1; }
ls .wheelhouse/fedpeer-*.whl >/dev/null 2>&1 \
  || { log "error: no wheelhouse in .wheelhouse/: run scripts/docker/build_wheelhouse.sh"; exit 1; }
start=$(date +%s)
log "building $NODE_TAG on $BASE_IMAGE from .wheelhouse/ (offline)"
# The same digest as fedpeer.scenario.docker.source_digest(): the runner warns about an image built
# from other sources (a stale image runs old node code against new host-side configs).
digest=$(for d in fedpeer cli; do (cd "$d" && find . -name '*.py' | LC_ALL=C sort | xargs cat); done \
  | sha256sum | cut -d' ' -f1)
buildlog=$(mktemp /tmp/fedpeer-build.XXXXXX.log)
# Show the steps as they run; the whole output stays in $buildlog for a failed build.
set +e
docker build ${DOCKER_BUILD_ARGS:-} --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "fedpeer.source=$digest" \
  -t "$NODE_TAG" . 2>&1 \
  | tee "$buildlog" | grep --line-buffered -E '^(Step [0-9]+/|Successfully tagged|#[0-9]+ \[)'
status=${PIPESTATUS[0]}
set -e
if [[ $status != 0 ]]; then
  tail -n 25 "$buildlog" >&2
  log "error: docker build failed (full output: $buildlog)"
  exit 1
fi
rm -f "$buildlog"
size=$(docker image inspect -f '{{.Size}}' "$NODE_TAG" | awk '{printf "%.0f MB", $1/1e6}')
log "built $NODE_TAG in $(($(date +%s) - start)) s ($size)"
