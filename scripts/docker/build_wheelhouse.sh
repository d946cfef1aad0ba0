#!/usr/bin/env bash
# Prepare a wheelhouse: fedpeer and every runtime dependency as wheels in one folder, so that the
# node image builds with no network (`pip install --no-index --find-links`), as an air-gapped site
# must. Run it where the package index is reachable, then carry the folder to the build machine.
#
#   scripts/docker/build_wheelhouse.sh                 # -> .wheelhouse/ (CPU torch, pinned)
#   WHEELHOUSE=/media/usb/wh TORCH_CONSTRAINTS=my-cuda-constraints.txt scripts/docker/build_wheelhouse.sh
#
# The wheels must match the image's Python: Debian bookworm's python3 is 3.11 (cp311, manylinux
# x86_64), the same as this machine's. torch comes from constraints.txt (the CPU build); a GPU site
# points TORCH_CONSTRAINTS at a file pinning its CUDA build.
set -euo pipefail
cd "$(dirname "$0")/../.."

WHEELHOUSE=${WHEELHOUSE:-.wheelhouse}
PYTHON=${PYTHON:-python3}
TORCH_CONSTRAINTS=${TORCH_CONSTRAINTS:-constraints.txt}
log() { echo "[build_wheelhouse] $*"; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || log "warning: $PYTHON is not Python 3.11; the wheels may not install in a bookworm image"
mkdir -p "$WHEELHOUSE"
rm -f "$WHEELHOUSE"/fedpeer-*.whl   # always rebuilt from this checkout
# setuptools copies into build/lib and never removes what is gone from the tree: a module that was
# moved would still ship (and shadow its new package) in the wheel.
rm -rf build
start=$(date +%s)
log "building fedpeer and downloading its dependencies into $WHEELHOUSE (torch pinned by $TORCH_CONSTRAINTS)"
# --find-links on the wheelhouse itself: wheels already there are reused, a rerun is quick.
"$PYTHON" -m pip wheel -q -c "$TORCH_CONSTRAINTS" --wheel-dir "$WHEELHOUSE" --find-links "$WHEELHOUSE" . \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)  # noise from file:// index mirrors
log "$(ls "$WHEELHOUSE"/*.whl | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1), in $(($(date +%s) - start)) s"
