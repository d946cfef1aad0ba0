"""train.schedule: which part (shared with the mesh, or private) each step of a round updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.datasets.synth import DEMO_LABELS, write_demo_sites
from fedpeer.errors import ConfigError
from fedpeer.model import load_dual_lora
from fedpeer.train import LocalTrainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_sites(tmp_path_factory.mktemp("sites"), 1, task="seq-cls", n_train=32, n_eval=8)[0]


def trainer(
    tiny_bert_cls_dir: Path, site: Path, schedule: str, steps: int, **adapter: object
) -> LocalTrainer:
    model_cfg = ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False)
    adapter_cfg = AdapterConfig(rank=4, alpha=8.0, head="local", **adapter)  # type: ignore[arg-type]
    dual = load_dual_lora(model_cfg, adapter_cfg, CPU, local_seed=1)
    train_cfg = TrainConfig(
        data=str(site / "train.jsonl"),
        eval_data=str(site / "eval.jsonl"),
        steps_per_round=steps,
        batch_size=8,
        lr=1e-2,
        device="cpu",
        schedule=schedule,
    )
    return LocalTrainer(dual, model_cfg, train_cfg)


def changed(before: list[torch.Tensor], params: list[torch.nn.Parameter]) -> bool:
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True))


@pytest.mark.parametrize(
    ("schedule", "steps", "shared_moves", "private_moves"),
    [
        ("joint", 1, True, True),
        ("alternate", 1, True, False),  # the first step is the shared part's turn
        ("alternate", 2, True, True),
        ("global-first", 1, True, False),  # one step: at least one for the shared part
        ("global-first", 4, True, True),
        ("local-first", 1, False, True),  # one step: the private part's
        ("local-first", 4, True, True),
    ],
)
def test_schedule_decides_what_a_step_updates(
    tiny_bert_cls_dir: Path, site: Path, schedule: str, steps: int, shared_moves: bool, private_moves: bool
) -> None:
    t = trainer(tiny_bert_cls_dir, site, schedule, steps)
    shared, private = t.dual.shared_parameters(), t.dual.private_parameters()
    assert shared and private
    before_shared = [p.detach().clone() for p in shared]
    before_private = [p.detach().clone() for p in private]
    t.train_round()
    assert changed(before_shared, shared) is shared_moves
    assert changed(before_private, private) is private_moves


def test_global_first_trains_private_part_last(tiny_bert_cls_dir: Path, site: Path) -> None:
    # 4 steps: 2 on the shared part, then 2 on the private part with the shared part left alone.
    t = trainer(tiny_bert_cls_dir, site, "global-first", 4)
    shared = t.dual.shared_parameters()
    snapshots = []
    original = t._step

    def step(model: torch.nn.Module, i: int) -> float:
        loss = original(model, i)
        snapshots.append([p.detach().clone() for p in shared])
        return loss

    t._step = step  # type: ignore[method-assign]
    t.train_round()
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[3], strict=True))


def test_local_rank_sets_the_private_adapter_rank(tiny_bert_cls_dir: Path, site: Path) -> None:
    t = trainer(tiny_bert_cls_dir, site, "joint", 1, local_rank=2)
    ranks = {k: v.shape for k, v in t.dual.local_state().items() if "lora_A.local" in k}
    assert ranks and all(shape[0] == 2 for shape in ranks.values())
    assert all(v.shape[0] == 4 for k, v in t.dual.adapter_state().items() if "lora_A.global" in k)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.schedule"):
        dataclasses.replace(TrainConfig(data="x.jsonl"), schedule="sometimes").validate()
