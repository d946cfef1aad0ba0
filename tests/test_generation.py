"""Report generation: ROUGE-L, completion-only loss, and evaluate()'s greedy-decoding score."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import fedpeer.train.loop as loop
from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.datasets.clinical import clinical_corpus, write_clinical_sites
from fedpeer.model import load_dual_lora
from fedpeer.model.tiny import build_tiny_model
from fedpeer.train import LocalTrainer
from fedpeer.train.metrics import lcs_length, macro_f1, rouge_l

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("reference", "candidate", "expected"),
    [
        ("right lower lobe pneumonia", "right lower lobe pneumonia", 1.0),
        ("Right lower lobe PNEUMONIA.", "right lower lobe pneumonia", 1.0),  # case and punctuation
        ("small pleural effusion", "no acute process", 0.0),
        ("the cat sat on the mat", "the cat on the mat", 10 / 11),  # P = 5/5, R = 5/6
        ("a b c d", "d c b a", 0.25),  # LCS 1: P = R = 1/4
        ("a b", "a x b y z", 2 * (2 / 5) * 1 / (2 / 5 + 1)),
        ("", "anything", 0.0),
        ("something", "", 0.0),
        (". ,", ". ,", 0.0),  # no words on either side
    ],
)
def test_rouge_l(reference: str, candidate: str, expected: float) -> None:
    assert rouge_l(reference, candidate) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [("abcbdab", "bdcaba", 4), ("abc", "abc", 3), ("abc", "xyz", 0), ("", "abc", 0), ("aaaa", "aa", 2)],
)
def test_lcs_length(a: str, b: str, n: int) -> None:
    assert lcs_length(list(a), list(b)) == lcs_length(list(b), list(a)) == n


def test_macro_f1_keeps_its_old_import_paths() -> None:
    from fedpeer.train import macro_f1 as from_package
    from fedpeer.train.loop import macro_f1 as from_loop

    assert from_package is from_loop is macro_f1


# --- evaluate() on a tiny llama ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def clinical_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clinical-llama")
    return build_tiny_model(out, arch="llama", task="causal-lm", corpus=clinical_corpus())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clinical-sites")
    return write_clinical_sites(root, 1, task="causal-lm", n_train=160, n_eval=24, seed=0)[0]


def make_trainer(model_dir: Path, site: Path, eval_generate: int = 16) -> LocalTrainer:
    model_cfg = ModelConfig(path=str(model_dir), task="causal-lm")
    train_cfg = TrainConfig(
        data=str(site / "train.jsonl"),
        eval_data=str(site / "eval.jsonl"),
        steps_per_round=10,
        batch_size=8,
        lr=3e-2,
        max_length=128,
        device="cpu",
    )
    dual = load_dual_lora(model_cfg, AdapterConfig(rank=8, alpha=16.0), CPU, local_seed=1)
    return LocalTrainer(dual, model_cfg, train_cfg, eval_generate=eval_generate)


def test_evaluate_scores_generation(clinical_llama: Path, site: Path) -> None:
    t = make_trainer(clinical_llama, site)
    weights = {n: p.detach().clone() for n, p in t.dual.model.named_parameters()}
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)
    metrics = t.evaluate()
    assert set(metrics) == {"eval_loss", "perplexity", "rouge_l"}
    assert 0.0 <= metrics["rouge_l"] <= 1.0
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    # Evaluation leaves weights, mode and the caller's RNG alone, and repeats exactly.
    assert torch.equal(torch.rand(3), expected_draw)
    assert t.dual.model.training
    assert all(torch.equal(p, weights[n]) for n, p in t.dual.model.named_parameters())
    assert t.evaluate() == metrics


def test_no_generation_when_asked_for_none(clinical_llama: Path, site: Path) -> None:
    assert "rouge_l" not in make_trainer(clinical_llama, site, eval_generate=0).evaluate()


def test_left_padded_batch_generates_what_one_by_one_does(
    clinical_llama: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_trainer(clinical_llama, site, eval_generate=6)
    for _ in range(2):
        t.train_round()  # past the random init, so the continuations say something
    batched = t.evaluate()["rouge_l"]
    monkeypatch.setattr(loop, "_GENERATE_BATCH", 1)
    assert batched > 0 and t.evaluate()["rouge_l"] == pytest.approx(batched, abs=1e-9)


def test_training_improves_loss_and_rouge(clinical_llama: Path, site: Path) -> None:
    # A random tiny base with frozen embeddings learns slowly: ask for a clear gain, no more.
    t = make_trainer(clinical_llama, site)
    before = t.evaluate()
    for _ in range(6):
        t.train_round()
    after = t.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 0.4, (before, after)
    assert after["rouge_l"] > before["rouge_l"] + 0.1, (before, after)
