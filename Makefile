# One place for what the README and CI run. Everything installs into .venv (CPU torch pinned by
# constraints.txt; GPU sites install their CUDA torch into the venv first, then `make install`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint typecheck proto bench clean docker-engine docker-image demo-docker demo-netns test-docker

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a 4-node ring on a tiny model, every node its own process over gRPC on 127.0.0.1.
demo: $(STAMP)
	$(BIN)/fedpeer scenario run scenarios/ring4.toml --out runs/ring4

# The whole test suite (what .ci/run calls).
test: $(STAMP)
	bash scripts/test_env.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy fedpeer

# Regenerate fedpeer/proto/ after editing proto/ (tests/test_proto_drift.py checks it).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	$(BIN)/python benchmarks/round_overhead.py

# Multi-host runs (docs/multihost.md). As root on a fresh Debian/Ubuntu machine:
#   make docker-engine   install docker.io + debootstrap, start dockerd
#   make docker-image    base image (debootstrap + docker import), wheelhouse, node image: offline build
docker-engine:
	bash scripts/docker/ensure_docker.sh

docker-image:
	bash scripts/docker/build_base_image.sh
	bash scripts/docker/build_wheelhouse.sh
	bash scripts/docker/build_node_image.sh

demo-docker: $(STAMP)
	$(BIN)/fedpeer scenario run scenarios/ring4.toml --out runs/ring4-docker --runner docker

demo-netns: $(STAMP)
	$(BIN)/fedpeer scenario run scenarios/ring4_slow.toml --out runs/ring4-netns --runner netns

# Only the container and namespace tests (they skip, saying why, without an engine, image or root).
test-docker: $(STAMP)
	$(BIN)/python -m pytest -q -rs --durations=5 tests/test_docker.py tests/test_netns.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
