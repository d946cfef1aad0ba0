"""Synthetic demo sites: deterministic, site-specific style, skewed labels, covered by the corpus."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from fedpeer.datasets.synth import DEMO_LABELS, site_label_mix, write_demo_sites


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_demo_sites(tmp_path / "a", 3, task="seq-cls", seed=5)
    b = write_demo_sites(tmp_path / "b", 3, task="seq-cls", seed=5)
    c = write_demo_sites(tmp_path / "c", 3, task="seq-cls", seed=6)
    for name in ("train.jsonl", "eval.jsonl"):
        assert [(d / name).read_bytes() for d in a] == [(d / name).read_bytes() for d in b]
        assert [(d / name).read_bytes() for d in a] != [(d / name).read_bytes() for d in c]


def test_layout_and_sizes(tmp_path: Path) -> None:
    dirs = write_demo_sites(tmp_path, 2, task="causal-lm", n_train=30, n_eval=7)
    assert [d.name for d in dirs] == ["site0", "site1"]
    train, held = rows(dirs[0] / "train.jsonl"), rows(dirs[0] / "eval.jsonl")
    assert (len(train), len(held)) == (30, 7)
    assert all(set(r) == {"text"} and r["text"] for r in train)


def test_label_skew_differs_between_sites(tmp_path: Path) -> None:
    dirs = write_demo_sites(tmp_path, 4, task="seq-cls", n_train=400)
    dists = []
    for d in dirs:
        counts = Counter(r["label"] for r in rows(d / "train.jsonl"))
        assert set(counts) <= set(DEMO_LABELS)
        dists.append([counts[label] / 400 for label in DEMO_LABELS])
    tv = max(sum(abs(p - q) for p, q in zip(a, b, strict=True)) / 2 for a in dists for b in dists)
    assert tv > 0.2
    assert site_label_mix(0) != site_label_mix(1)


def test_sites_write_in_their_own_style(tmp_path: Path) -> None:
    dirs = write_demo_sites(tmp_path, 2, task="seq-cls", n_train=20)
    first_words = [{r["text"].split()[0] for r in rows(d / "train.jsonl")} for d in dirs]
    assert first_words[0].isdisjoint(first_words[1])


@pytest.mark.parametrize("task", ["causal-lm", "seq-cls"])
def test_tiny_tokenizer_knows_every_word(tmp_path: Path, tiny_llama_dir: Path, task: str) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for d in write_demo_sites(tmp_path, 4, task=task, n_train=100):
        for r in rows(d / "train.jsonl"):
            assert tok.unk_token_id not in tok(r["text"])["input_ids"], r["text"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task"):
        write_demo_sites(tmp_path, 1, task="translation")
    with pytest.raises(ValueError, match="n_sites"):
        write_demo_sites(tmp_path, 0, task="seq-cls")
