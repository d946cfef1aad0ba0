"""train.prior: the site's own label prior added to a classifier's logits when the site predicts
(evaluation, and the model `fedpeer export` writes)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fedpeer_cli.main import app
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from fedpeer import checkpoint
from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig, dump_toml, load_node_config
from fedpeer.datasets.synth import DEMO_LABELS
from fedpeer.errors import ConfigError, ModelError
from fedpeer.model import export_peft, load_dual_lora
from fedpeer.train import LocalTrainer, macro_f1
from fedpeer.train.loop import log_prior

CPU = torch.device("cpu")
TEXTS = ["small left pleural effusion .", "no acute cardiopulmonary process", "hx fever", "clear lungs"]


def write_site(d: Path) -> Path:
    """Training labels 6 x class 0, 2 x class 1 and none of the others; eval labels of every class."""
    d.mkdir(parents=True, exist_ok=True)
    train = [DEMO_LABELS[0]] * 6 + [DEMO_LABELS[1]] * 2
    rows = [{"text": TEXTS[i % len(TEXTS)], "label": y} for i, y in enumerate(train)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = [{"text": TEXTS[i % len(TEXTS)], "label": y} for i, y in enumerate(DEMO_LABELS * 2)]
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ev))
    return d


def site_model(tiny_bert_cls_dir: Path):
    dual = load_dual_lora(
        ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False),
        AdapterConfig(rank=4, alpha=8.0, head="split"),
        CPU,
        local_seed=1,
    )
    torch.manual_seed(0)
    dual.set_global_state({k: torch.randn_like(v) * 0.1 for k, v in dual.global_state().items()})
    dual.set_local_state({k: torch.randn_like(v) * 0.1 for k, v in dual.local_state().items()})
    return dual


def test_log_prior_is_the_smoothed_share_of_each_class() -> None:
    got = log_prior([0, 0, 0, 1], 3)
    torch.testing.assert_close(got, torch.tensor([3.5, 1.5, 0.5]).div(5.5).log())


@pytest.mark.parametrize("prior", [0.7, 1.0])
def test_evaluation_adds_the_site_prior_to_the_logits(
    tiny_bert_cls_dir: Path, tmp_path: Path, prior: float
) -> None:
    site = write_site(tmp_path / "site")
    dual = site_model(tiny_bert_cls_dir)
    model_cfg = ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False)
    cfg = TrainConfig(data=str(site / "train.jsonl"), eval_data=str(site / "eval.jsonl"), device="cpu")
    plain = LocalTrainer(dual, model_cfg, cfg)
    shifted = LocalTrainer(dual, model_cfg, dataclasses.replace(cfg, prior=prior))

    # The reference: the model's own logits on the eval set, plus prior * log((count + 0.5) / total).
    dual.model.eval()
    batch = plain._batch(plain.eval_examples)
    truth = batch.pop("labels")
    with torch.no_grad():
        logits = dual.model(**batch).logits.float()
    counts = torch.tensor([6.0, 2.0] + [0.0] * (len(DEMO_LABELS) - 2)) + 0.5
    adjusted = logits + prior * (counts / counts.sum()).log()
    got = shifted.evaluate()
    assert got["eval_loss"] == pytest.approx(float(F.cross_entropy(adjusted, truth)), rel=1e-5)
    assert got["macro_f1"] == pytest.approx(macro_f1(truth.tolist(), adjusted.argmax(-1).tolist()))
    assert plain.evaluate()["eval_loss"] == pytest.approx(float(F.cross_entropy(logits, truth)), rel=1e-5)


def test_a_strong_prior_predicts_the_site_majority(tiny_bert_cls_dir: Path, tmp_path: Path) -> None:
    site = write_site(tmp_path / "site")
    model_cfg = ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False)
    cfg = TrainConfig(
        data=str(site / "train.jsonl"), eval_data=str(site / "eval.jsonl"), device="cpu", prior=100.0
    )
    got = LocalTrainer(site_model(tiny_bert_cls_dir), model_cfg, cfg).evaluate()
    # Every prediction is class 0, which is 2 of the 2 * len(DEMO_LABELS) eval labels.
    assert got["accuracy"] == pytest.approx(1 / len(DEMO_LABELS))


def test_negative_prior_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.prior"):
        dataclasses.replace(TrainConfig(data="x.jsonl"), prior=-0.5).validate()


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"prior": 1.0}, 'train.prior is a class prior: it needs model.task = "seq-cls"'),
        ({"prior_choices": [0.5, 1.0]}, "train.prior_choices are values of a class prior: they need model"),
    ],
)
def test_a_causal_lm_site_cannot_set_a_class_prior(
    tmp_path: Path, tiny_llama_dir: Path, train: dict, message: str
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        dump_toml(
            {
                "node_id": "site-a",
                "state_dir": str(tmp_path / "state"),
                "model": {"path": str(tiny_llama_dir), "task": "causal-lm"},
                "train": {"data": "train.jsonl", **train},
            }
        )
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_node_config(config)


@pytest.mark.parametrize(
    ("train", "meta", "tau"),
    [
        ({"prior": 0.5}, {}, 0.5),
        # train.prior_choices: the τ the site chose at the checkpoint's round, not train.prior
        ({"prior": 0.5, "prior_choices": [0.0, 1.0]}, {"trainer": {"prior": 1.0}}, 1.0),
    ],
)
def test_export_carries_the_prior_in_the_head_bias(
    tiny_bert_cls_dir: Path, tmp_path: Path, train: dict, meta: dict, tau: float
) -> None:
    site = write_site(tmp_path)
    config = tmp_path / "node.toml"
    config.write_text(
        dump_toml(
            {
                "node_id": "site-a",
                "state_dir": str(tmp_path / "state"),
                "model": {"path": str(tiny_bert_cls_dir), "task": "seq-cls", "labels": list(DEMO_LABELS)},
                "adapter": {"rank": 4, "alpha": 8.0, "head": "split"},
                "train": {"data": str(site / "train.jsonl"), "device": "cpu", **train},
            }
        )
    )
    cfg = load_node_config(config)
    dual = load_dual_lora(cfg.model, cfg.adapter, CPU, local_seed=5)
    torch.manual_seed(0)
    dual.set_global_state({k: torch.randn_like(v) * 0.1 for k, v in dual.global_state().items()})
    dual.set_local_state({k: torch.randn_like(v) * 0.1 for k, v in dual.local_state().items()})
    meta = {"round": 3, "fingerprint": dual.fingerprint(), **meta}
    checkpoint.save(cfg.state_dir, checkpoint.flatten({"adapter": dual.adapter_state()}), meta)

    r = CliRunner().invoke(app, ["export", "--config", str(config), "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert f"prior {tau:g} (" in r.stdout and "label prior goes into the head's bias" in r.stdout
    loaded = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny_bert_cls_dir), str(tmp_path / "out")
    ).eval()
    dual.model.eval()
    batch = dict(dual.tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False))
    with torch.no_grad():
        expected, got = dual.model(**batch).logits, loaded(**batch).logits
    # The site's training labels: 6 x class 0, 2 x class 1 (the held-out share of train.data excluded).
    labels = [e.label for e in LocalTrainer(dual, cfg.model, cfg.train).train_examples]
    torch.testing.assert_close(
        got, expected + tau * log_prior(labels, len(DEMO_LABELS)), rtol=1e-5, atol=1e-5
    )
    assert not math.isclose(float(log_prior(labels, len(DEMO_LABELS)).std()), 0.0)

    # The mesh's adapter alone carries no site's prior.
    with pytest.raises(ModelError, match="site's own classifier"):
        export_peft(dual, tmp_path / "g", adapters="global", logit_bias=torch.zeros(len(DEMO_LABELS)))


def write_eval(d: Path, labels: list[str]) -> Path:
    rows = [{"text": TEXTS[i % len(TEXTS)], "label": y} for i, y in enumerate(labels)]
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "eval.jsonl"


@pytest.mark.parametrize(
    ("eval_labels", "choices", "expected"),
    [
        # classes the site never saw: its strong prior is the wrong one, and 0 wins though listed second
        ([DEMO_LABELS[2]] * 4 + [DEMO_LABELS[3]] * 4, (100.0, 0.0), 0.0),
        # the site's majority only: the prior wins, and of the two that tie the earlier is kept
        ([DEMO_LABELS[0]] * 8, (0.0, 100.0, 200.0), 100.0),
    ],
)
def test_prior_choices_take_the_best_macro_f1_on_the_eval_set(
    tiny_bert_cls_dir: Path,
    tmp_path: Path,
    eval_labels: list[str],
    choices: tuple[float, ...],
    expected: float,
) -> None:
    site = write_site(tmp_path / "site")
    ev = write_eval(site, eval_labels)
    dual = site_model(tiny_bert_cls_dir)
    model_cfg = ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False)
    cfg = TrainConfig(data=str(site / "train.jsonl"), eval_data=str(ev), device="cpu", prior_choices=choices)
    trainer = LocalTrainer(dual, model_cfg, cfg)

    # The reference: each choice's macro-F1 on the eval set; the first of the best.
    dual.model.eval()
    batch = trainer._batch(trainer.eval_examples)
    truth = batch.pop("labels")
    with torch.no_grad():
        logits = dual.model(**batch).logits.float()
    site_prior = log_prior([e.label for e in trainer.train_examples], len(DEMO_LABELS))
    scores = [macro_f1(truth.tolist(), (logits + tau * site_prior).argmax(-1).tolist()) for tau in choices]
    best = choices[scores.index(max(scores))]
    assert best == expected != choices[0]  # the case is what its comment says
    got = trainer.evaluate()
    assert got["prior"] == trainer.prior == best
    assert got["macro_f1"] == pytest.approx(max(scores))
    adjusted = logits + best * site_prior
    assert got["eval_loss"] == pytest.approx(float(F.cross_entropy(adjusted, truth)), rel=1e-5)


def test_the_chosen_prior_is_checkpointed_and_the_config_wins_without_choices(
    tiny_bert_cls_dir: Path, tmp_path: Path
) -> None:
    site = write_site(tmp_path / "site")
    model_cfg = ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False)
    cfg = TrainConfig(
        data=str(site / "train.jsonl"),
        eval_data=str(write_eval(site, [DEMO_LABELS[0]] * 8)),
        device="cpu",
        prior_choices=(0.0, 100.0),
    )
    dual = site_model(tiny_bert_cls_dir)
    first = LocalTrainer(dual, model_cfg, cfg)
    assert first.evaluate()["prior"] == 100.0
    tensors, meta = first.state_tensors(), first.state_meta()
    assert meta["prior"] == 100.0

    resumed = LocalTrainer(dual, model_cfg, cfg)
    assert resumed.prior == 0.0  # train.prior until it evaluates or resumes
    resumed.load_state(tensors, meta)
    assert resumed.prior == 100.0
    plain = LocalTrainer(dual, model_cfg, dataclasses.replace(cfg, prior=0.3, prior_choices=()))
    plain.load_state(tensors, meta)
    assert plain.prior == 0.3 and "prior" not in plain.evaluate()


def test_prior_of_a_checkpoint_is_the_chosen_one_only_with_choices() -> None:
    from fedpeer.node.state import prior_of

    fixed, choosing = (
        TrainConfig(data="x.jsonl", prior=0.5),
        TrainConfig(data="x.jsonl", prior_choices=(0.5, 1.0)),
    )
    latest, best = {"trainer": {"prior": 1.0}}, {"prior": 1.0}
    assert [prior_of(fixed, latest), prior_of(fixed, best)] == [0.5, 0.5]
    assert [prior_of(choosing, latest), prior_of(choosing, best), prior_of(choosing, {"trainer": {}})] == [
        1.0,
        1.0,
        0.0,
    ]


def test_negative_prior_choices_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.prior_choices must all be >= 0"):
        dataclasses.replace(TrainConfig(data="x.jsonl"), prior_choices=(0.5, -1.0)).validate()


def test_the_round_line_shows_the_chosen_prior() -> None:
    from fedpeer.metrics import RoundRecord
    from fedpeer.node.record import round_line

    chosen = RoundRecord(round=2, node="n", train_loss=1.0, evaluation={"macro_f1": 0.5, "prior": 0.5})
    assert "loss 1.0000 macro_f1 0.5000 prior 0.5 | heard" in round_line(3, 2, chosen)
    plain = RoundRecord(round=2, node="n", train_loss=1.0, evaluation={"macro_f1": 0.5})
    assert "prior" not in round_line(3, 2, plain)
