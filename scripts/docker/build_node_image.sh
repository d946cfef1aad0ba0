#!/usr/bin/env bash
# Build the node image from the wheelhouse (offline: the build downloads nothing).
#
#   scripts/docker/build_node_image.sh                   # fedpeer-base:bookworm -> fedpeer-node:latest
#   BASE_IMAGE=python:3.11-slim-bookworm NODE_TAG=fedpeer-node:dev scripts/docker/build_node_image.sh
#
# Prepare first: scripts/docker/build_base_image.sh (or any BASE_IMAGE you have) and
# scripts/docker/build_wheelhouse.sh. The wheelhouse reaches the build over HTTP on this host's
# loopback (a server this script starts and stops; the build runs with --network host), so the
# image holds the venv once and no copy of the wheels.
#
# Exit status 75 means the Docker root lacks the disk the build needs (NODE_IMAGE_MIN_FREE_MB,
# 3000 by default, checked before building, or "no space left on device" during the build):
# scripts/test_env.sh then lets the container tests skip, saying so, instead of failing the suite.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=${BASE_IMAGE:-fedpeer-base:bookworm}
NODE_TAG=${NODE_TAG:-fedpeer-node:latest}
WHEELHOUSE=${WHEELHOUSE:-.wheelhouse}
NODE_IMAGE_MIN_FREE_MB=${NODE_IMAGE_MIN_FREE_MB:-3000}
log() { echo "[build_node_image] $*"; }

docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
  || { log "error: no image $BASE_IMAGE: run scripts/docker/build_base_image.sh (or set BASE_IMAGE)"; exit 1; }
ls "$WHEELHOUSE"/fedpeer-*.whl >/dev/null 2>&1 \
  || { log "error: no wheelhouse in $WHEELHOUSE/: run scripts/docker/build_wheelhouse.sh"; exit 1; }
root=$(docker info -f '{{.DockerRootDir}}')
free_mb=$(df -Pm "$root" | awk 'NR == 2 {print $4}')
if ((free_mb < NODE_IMAGE_MIN_FREE_MB)); then
  log "error: only $free_mb MB free on $root; the build needs about $NODE_IMAGE_MIN_FREE_MB MB" \
    "(free some, e.g. docker image prune, or set NODE_IMAGE_MIN_FREE_MB)"
  exit 75
fi
start=$(date +%s)

# Serve the wheelhouse on loopback, on a port the kernel picks; stopped when this script exits.
portfile=$(mktemp)
buildlog=$(mktemp /tmp/fedpeer-build.XXXXXX.log)
python3 - "$WHEELHOUSE" "$portfile" <<'PY' &
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # pip's requests are not worth a line each
        pass

server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1])
)
with open(sys.argv[2], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$portfile"' EXIT
for _ in $(seq 1 100); do
  [[ -s $portfile ]] && break
  kill -0 "$server" 2>/dev/null || { log "error: the wheelhouse server did not start"; exit 1; }
  sleep 0.1
done
[[ -s $portfile ]] || { log "error: the wheelhouse server did not say its port within 10 s"; exit 1; }
wheels_url="http://127.0.0.1:$(cat "$portfile")/"
log "building $NODE_TAG on $BASE_IMAGE from $WHEELHOUSE/, served at $wheels_url (offline)"
# The same digest as fedpeer.scenario.docker.source_digest(): the runner warns about an image built
# from other sources (a stale image runs old node code against new host-side configs).
digest=$(for d in fedpeer cli; do (cd "$d" && find . -name '*.py' | LC_ALL=C sort | xargs cat); done \
  | sha256sum | cut -d' ' -f1)
# Show the steps as they run (their first 120 characters); the whole output stays in $buildlog
# for a failed build.
set +e
docker build ${DOCKER_BUILD_ARGS:-} --network host --build-arg "WHEELS_URL=$wheels_url" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "fedpeer.source=$digest" -t "$NODE_TAG" . 2>&1 \
  | tee "$buildlog" \
  | awk '/^(Step [0-9]+\/|Successfully tagged|#[0-9]+ \[)/ { print substr($0, 1, 120); fflush() }'
status=${PIPESTATUS[0]}
set -e
if [[ $status != 0 ]]; then
  tail -n 25 "$buildlog" >&2
  if grep -q "no space left on device" "$buildlog"; then
    log "error: the disk under $root filled up during the build (full output: $buildlog)"
    docker image prune -f --filter "label=fedpeer.source" >/dev/null || true
    exit 75
  fi
  log "error: docker build failed (full output: $buildlog)"
  exit 1
fi
rm -f "$buildlog"
# Earlier builds of this image lose their tag to this one: remove them (only ours, by label, and
# only those no container uses), so that rebuilding does not fill the disk.
docker image prune -f --filter "label=fedpeer.source" >/dev/null || true
size=$(docker image inspect -f '{{.Size}}' "$NODE_TAG" | awk '{printf "%.0f MB", $1/1e6}')
log "built $NODE_TAG in $(($(date +%s) - start)) s ($size)"
