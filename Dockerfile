# The fedpeer node image: one site's node (`fedpeer node run --config ...`), built offline from a
# wheelhouse (no package index, no registry). See docs/multihost.md.
#
#   scripts/docker/build_base_image.sh     # fedpeer-base:bookworm: debootstrap + docker import
#   scripts/docker/build_wheelhouse.sh     # .wheelhouse/: fedpeer + dependencies (CPU torch)
#   scripts/docker/build_node_image.sh     # -> fedpeer-node:latest (serves the wheelhouse to the build)
#
# BASE_IMAGE must have python3.11 with the venv module at /usr/bin/python3 (the wheels are cp311):
#   fedpeer-base:bookworm          default: made locally, works air-gapped
#   python:3.11-slim-bookworm      where a registry is reachable
#   a CUDA runtime image with python3.11 + venv added (e.g. nvidia/cuda:12.4.1-runtime-ubuntu22.04
#   plus the deadsnakes python3.11 packages), with a wheelhouse holding the CUDA build of torch.
ARG BASE_IMAGE=fedpeer-base:bookworm
FROM ${BASE_IMAGE}

# ---- one layer: a venv filled from the wheelhouse, nothing downloaded ----------------------------
# The wheelhouse is not copied in: build_node_image.sh serves it on the host's loopback and builds
# with --network host. A COPY would stay in the image as a dead layer of ~300 MB, and a second
# stage would hold the venv twice while building; both cost disk that small machines lack.
# .pyc files are compiled here, on all cores (pip would do it on one): the non-root runtime user
# could not write them, and torch would be compiled again at every start.
ARG WHEELS_URL
COPY scripts/docker/healthcheck.py /opt/fedpeer-healthcheck.py
RUN set -e; \
    if [ -z "$WHEELS_URL" ]; then \
      echo "WHEELS_URL is not set: build with scripts/docker/build_node_image.sh, which serves" \
           ".wheelhouse/ to the build (or pass --build-arg WHEELS_URL=http://HOST:PORT/)" >&2; \
      exit 1; \
    fi; \
    wheels_host=${WHEELS_URL#*://}; wheels_host=${wheels_host%%[:/]*}; \
    python3 -m venv /opt/fedpeer; \
    /opt/fedpeer/bin/pip install --no-cache-dir --no-compile --disable-pip-version-check \
      --no-index --find-links "$WHEELS_URL" --trusted-host "$wheels_host" fedpeer; \
    /opt/fedpeer/bin/python -m compileall -q -j 0 /opt/fedpeer/lib/python3.11/site-packages >/dev/null \
      || true; `# a few packages ship files that are not Python 3 (pip skips them the same way)`; \
    /opt/fedpeer/bin/fedpeer --help >/dev/null; \
    rm -rf /opt/fedpeer/lib/python3.11/site-packages/pip /opt/fedpeer/lib/python3.11/site-packages/setuptools; \
    mv /opt/fedpeer-healthcheck.py /opt/fedpeer/healthcheck.py; \
    `# the runtime user, written directly: minimal bases have no useradd; fixed ids, so that a host`; \
    `# can chown data to them`; \
    echo "fedpeer:x:10001:10001:fedpeer node:/home/fedpeer:/usr/sbin/nologin" >> /etc/passwd; \
    echo "fedpeer:x:10001:" >> /etc/group; \
    mkdir -p /home/fedpeer /data; \
    chown 10001:10001 /home/fedpeer /data

ENV PATH=/opt/fedpeer/bin:$PATH \
    HOME=/home/fedpeer \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FEDPEER_HEALTH_ADDR=localhost:50051
USER 10001:10001
WORKDIR /data
EXPOSE 50051
# The standard gRPC health service of the node (SERVING while it runs its rounds). Nodes need
# tens of seconds to load torch and the model: hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python3", "/opt/fedpeer/healthcheck.py"]
ENTRYPOINT ["fedpeer"]
CMD ["--help"]
