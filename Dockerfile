# The fedpeer node image: one site's node (`fedpeer node run --config ...`), built offline from a
# wheelhouse (no package index, no registry). See docs/multihost.md.
#
#   scripts/docker/build_base_image.sh     # fedpeer-base:bookworm: debootstrap + docker import
#   scripts/docker/build_wheelhouse.sh     # .wheelhouse/: fedpeer + dependencies (CPU torch)
#   scripts/docker/build_node_image.sh     # -> fedpeer-node:latest
#
# BASE_IMAGE must have python3.11 with the venv module at /usr/bin/python3 (the wheels are cp311):
#   fedpeer-base:bookworm          default: made locally, works air-gapped
#   python:3.11-slim-bookworm      where a registry is reachable
#   a CUDA runtime image with python3.11 + venv added (e.g. nvidia/cuda:12.4.1-runtime-ubuntu22.04
#   plus the deadsnakes python3.11 packages), with a wheelhouse holding the CUDA build of torch.
ARG BASE_IMAGE=fedpeer-base:bookworm

# ---- build: a venv filled from the wheelhouse, nothing downloaded --------------------------------
# .pyc files are compiled here, on all cores (pip would do it on one): the non-root runtime user
# could not write them, and torch would be compiled again at every start.
FROM ${BASE_IMAGE} AS build
COPY .wheelhouse /wheelhouse
RUN set -e; \
    python3 -m venv /opt/fedpeer; \
    /opt/fedpeer/bin/pip install --no-cache-dir --no-compile --no-index --find-links /wheelhouse fedpeer; \
    /opt/fedpeer/bin/python -m compileall -q -j 0 /opt/fedpeer/lib/python3.11/site-packages >/dev/null \
      || true; `# a few packages ship files that are not Python 3 (pip skips them the same way)`; \
    /opt/fedpeer/bin/fedpeer --help >/dev/null; \
    rm -rf /opt/fedpeer/lib/python3.11/site-packages/pip /opt/fedpeer/lib/python3.11/site-packages/setuptools

# ---- runtime: the venv, a non-root user, the health probe ---------------------------------------
FROM ${BASE_IMAGE}
COPY --from=build /opt/fedpeer /opt/fedpeer
COPY scripts/docker/healthcheck.py /opt/fedpeer/healthcheck.py
# Written directly: minimal bases have no useradd. Fixed ids, so that a host can chown data to them.
RUN echo "fedpeer:x:10001:10001:fedpeer node:/home/fedpeer:/usr/sbin/nologin" >> /etc/passwd \
 && echo "fedpeer:x:10001:" >> /etc/group \
 && mkdir -p /home/fedpeer /data \
 && chown 10001:10001 /home/fedpeer /data
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
