# One place for what the README and CI run. Everything installs into .venv (CPU torch pinned by
# constraints.txt; GPU sites install their CUDA torch into the venv first, then `make install`).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint typecheck proto bench clean

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
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=10

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

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
