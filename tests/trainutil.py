"""Configs and trainers of the training tests: one demo site per task on the session's tiny models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.datasets.synth import DEMO_LABELS, write_demo_sites
from fedpeer.model import load_dual_lora
from fedpeer.train import LocalTrainer

TrainSetup = tuple[ModelConfig, AdapterConfig, TrainConfig]
TASKS = ("causal-lm", "seq-cls")


def demo_site_per_task(root: Path, n_train: int, n_eval: int) -> dict[str, Path]:
    """One demo site (train.jsonl, eval.jsonl) for each task of TASKS, under `root`."""
    return {
        task: write_demo_sites(root / task, 1, task=task, n_train=n_train, n_eval=n_eval)[0] for task in TASKS
    }


def task_setup(
    task: str,
    model_dir: Path,
    site: Path,
    adapter: AdapterConfig,
    model: dict | None = None,
    **train: object,
) -> TrainSetup:
    """The configs of a CPU trainer of `task` on the tiny model in `model_dir` and the demo `site`;
    `model` and `train` set other fields of ModelConfig and TrainConfig."""
    labels = DEMO_LABELS if task == "seq-cls" else ()
    return (
        ModelConfig(path=str(model_dir), task=task, labels=labels, **(model or {})),
        adapter,
        TrainConfig(
            data=str(site / "train.jsonl"), eval_data=str(site / "eval.jsonl"), device="cpu", **train
        ),
    )


def make_trainer(setup: TrainSetup, device: torch.device | None = None, **train: object) -> LocalTrainer:
    """A fresh trainer of `setup` (local adapter seed 1), its TrainConfig fields overridden by `train`."""
    model_cfg, adapter_cfg, train_cfg = setup
    dual = load_dual_lora(model_cfg, adapter_cfg, device or torch.device("cpu"), local_seed=1)
    return LocalTrainer(dual, model_cfg, dataclasses.replace(train_cfg, **train))
