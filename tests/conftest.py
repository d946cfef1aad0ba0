"""Shared fixtures. No model hub: tiny models are built from the synthetic corpus once per session."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

# Before transformers is imported anywhere: a test must never reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from fedpeer.datasets.synth import DEMO_LABELS, demo_corpus  # noqa: E402
from fedpeer.model.tiny import build_tiny_model  # noqa: E402


def write_jsonl(path: Path, rows: Iterable[dict | str]) -> Path:
    """Write rows as JSON lines; a str row is written as is (for malformed-line tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path: Path) -> Callable[[str, Iterable[dict | str]], Path]:
    """`jsonl("name.jsonl", rows)` writes rows into this test's tmp_path and returns the file."""
    return lambda name, rows: write_jsonl(tmp_path / name, rows)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block Llama causal LM with a word-level tokenizer over the demo corpus."""
    out = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_model(out, arch="llama", task="causal-lm", corpus=demo_corpus())


@pytest.fixture(scope="session")
def tiny_bert_cls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block BERT sequence classifier over DEMO_LABELS."""
    out = tmp_path_factory.mktemp("tiny-bert-cls")
    return build_tiny_model(out, arch="bert", task="seq-cls", corpus=demo_corpus(), labels=DEMO_LABELS)
