#!/usr/bin/env bash
# What the whole test suite needs beyond Python packages, set up by `make test`: as root, a Docker
# engine and the node image built offline (base image by debootstrap, wheels from the package
# index on the host), so the Docker and network-namespace tests run. Without root those tests skip,
# saying why. Idempotent: images that exist are reused.
#
# When the machine lacks the disk for the node image (build_node_image.sh exits 75), the suite
# still runs: the reason goes to .test-env/node-image, and the container tests skip, quoting it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then
  echo "[test-env] not root: no Docker engine or network namespaces; those tests will skip"
  exit 0
fi
start=$(date +%s)
bash scripts/docker/ensure_docker.sh
# The base image (debootstrap) and the wheelhouse (pip) both mostly wait on downloads: together.
bash scripts/docker/build_base_image.sh & base=$!
bash scripts/docker/build_wheelhouse.sh
wait "$base"
mkdir -p .test-env
rm -f .test-env/node-image
status=0
bash scripts/docker/build_node_image.sh || status=$?
if [[ $status == 75 ]]; then
  root=$(docker info -f '{{.DockerRootDir}}')
  echo "too little disk: $(df -Pm "$root" | awk 'NR == 2 {print $4}') MB free under $root," \
    "the build needs about ${NODE_IMAGE_MIN_FREE_MB:-3000} MB" >.test-env/node-image
  echo "[test-env] warning: $(cat .test-env/node-image): the Docker tests will skip"
  exit 0
elif [[ $status != 0 ]]; then
  exit "$status"
fi
echo "[test-env] Docker engine and node image ready in $(($(date +%s) - start)) s"
