#!/usr/bin/env bash
# What the whole test suite needs beyond Python packages, set up by `make test`: as root, a Docker
# engine and the node image built offline (base image by debootstrap, wheels from the package
# index on the host), so the Docker and network-namespace tests run. Without root those tests skip,
# saying why. Idempotent: images that exist are reused.
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
bash scripts/docker/build_node_image.sh
echo "[test-env] Docker engine and node image ready in $(($(date +%s) - start)) s"
