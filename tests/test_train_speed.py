"""The training loop's speed settings change how a step is computed, not what it computes:
micro-batches (train.grad_accum), recomputed activations (train.gradient_checkpointing), autocast
(train.precision), torch.compile (train.compile), examples tokenized once (TokenCache)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedpeer.config import AdapterConfig, ModelConfig
from fedpeer.datasets.synth import DEMO_LABELS, write_demo_sites
from fedpeer.errors import ConfigError, ModelError
from fedpeer.model import load_dual_lora
from fedpeer.train import LocalTrainer, make_batch
from fedpeer.train.data import TokenCache, read_jsonl
from tests.conftest import write_jsonl
from tests.test_fused import small_train

CPU = torch.device("cpu")


@pytest.fixture(params=["causal-lm", "seq-cls"])
def setup(request, tiny_llama_dir: Path, tiny_bert_cls_dir: Path, tmp_path_factory):
    """Nothing random while training (no dropout), so two ways of computing a step can be compared."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    site = write_demo_sites(root, 1, task=task, n_train=40, n_eval=8)[0]
    if task == "causal-lm":  # lengths differ and half the rows are prompt/completion: token weighting
        rows = [r for r in read_jsonl(site / "train.jsonl", task)]
        data = write_jsonl(
            root / "mixed.jsonl",
            [
                {"prompt": e.text[: len(e.text) // 3], "completion": e.text[len(e.text) // 3 :]}
                if i % 2
                else {"text": e.text}
                for i, e in enumerate(rows)
            ],
        )
        model = ModelConfig(path=str(tiny_llama_dir), task=task, dropout=False)
    else:
        data = site / "train.jsonl"
        model = ModelConfig(path=str(tiny_bert_cls_dir), task=task, labels=DEMO_LABELS, dropout=False)
    train = small_train(data, site / "eval.jsonl", class_weights="balanced" if task == "seq-cls" else "none")
    return model, AdapterConfig(rank=4, alpha=8.0), train


def run(setup, rounds: int = 2, **train: object):
    model_cfg, adapter_cfg, train_cfg = setup
    dual = load_dual_lora(model_cfg, adapter_cfg, CPU, local_seed=1)
    t = LocalTrainer(dual, model_cfg, dataclasses.replace(train_cfg, **train))
    losses = [t.train_round() for _ in range(rounds)]
    return losses, dual.adapter_state(), t


def assert_same_training(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    (loss_a, state_a, _), (loss_b, state_b, _) = a, b
    assert loss_a == pytest.approx(loss_b, rel=rtol)
    moved = 0
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=rtol, atol=atol, msg=k)
        moved += int(not torch.equal(state_a[k], torch.zeros_like(state_a[k])))
    assert moved > 0


@pytest.mark.parametrize("accum", [2, 3])
def test_micro_batches_take_the_whole_batch_step(setup, accum: int) -> None:
    # 3 does not divide the batch of 8: micro-batches of 3, 3, 2 rows, weighted by their loss terms.
    assert_same_training(run(setup), run(setup, grad_accum=accum))


def test_gradient_checkpointing_takes_the_same_step(setup) -> None:
    assert_same_training(run(setup), run(setup, gradient_checkpointing=True))


def test_bf16_autocast_trains_close_to_fp32(setup) -> None:
    fp32, bf16 = run(setup), run(setup, precision="bf16")
    assert fp32[2]._amp is None and bf16[2]._amp == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: the same training within a few per cent, not bit for bit.
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05)
    for k, v in fp32[1].items():
        assert float((bf16[1][k] - v).norm()) <= 0.05 * float(v.norm()) + 1e-6, k
    assert bf16[1].keys() == fp32[1].keys() and all(t.dtype == torch.float32 for t in bf16[1].values())


def test_auto_precision_is_fp32_on_cpu(setup) -> None:
    assert run(setup, rounds=0)[2]._amp is None


def test_fp16_and_4bit_ask_for_a_gpu(setup) -> None:
    model_cfg, adapter_cfg, train_cfg = setup
    with pytest.raises(ConfigError, match=r'train.precision = "fp16" needs a CUDA device; use "bf16"'):
        run(setup, rounds=0, precision="fp16")
    with pytest.raises(ModelError, match=r'model.quantize = "4bit" needs a CUDA GPU'):
        load_dual_lora(dataclasses.replace(model_cfg, quantize="4bit"), adapter_cfg, CPU, local_seed=1)


@pytest.mark.slow
def test_compiled_training_takes_the_same_steps(setup) -> None:
    if setup[0].task == "causal-lm":
        pytest.skip("rows of many lengths recompile for minutes on 2 cores; seq-cls covers the path")
    assert_same_training(run(setup), run(setup, compile=True))


def test_examples_are_tokenized_once(setup) -> None:
    model_cfg, adapter_cfg, train_cfg = setup
    dual = load_dual_lora(model_cfg, adapter_cfg, CPU, local_seed=1)
    examples = read_jsonl(train_cfg.data, model_cfg.task, model_cfg.labels)[:12]
    calls: list[int] = []
    tokenizer = dual.tokenizer
    original = type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    cache = TokenCache(tokenizer, model_cfg.task, 48)
    names = ("input_ids", "attention_mask")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(tokenizer), "__call__", counting)
        first = [
            make_batch(examples[i : i + 4], tokenizer, model_cfg.task, 48, names, cache) for i in (0, 4, 8)
        ]
        n_first = len(calls)
        again = [
            make_batch(examples[i : i + 4], tokenizer, model_cfg.task, 48, names, cache) for i in (0, 4, 8)
        ]
    assert n_first >= 12 and len(calls) == n_first  # the second pass tokenized nothing
    for a, b in zip(first, again, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        fresh = make_batch(examples[:4], tokenizer, model_cfg.task, 48, names) if a is first[0] else None
        if fresh is not None:
            assert all(torch.equal(a[k], fresh[k]) for k in a)


def test_speed_settings_are_checked(setup) -> None:
    _, _, train_cfg = setup
    for bad, match in (
        ({"precision": "fp8"}, "train.precision must be one of auto, fp32, bf16, fp16"),
        ({"grad_accum": 0}, "train.grad_accum must be >= 1"),
        ({"grad_accum": 9}, r"train.grad_accum must be <= train.batch_size \(8\)"),
    ):
        with pytest.raises(ConfigError, match=match):
            dataclasses.replace(train_cfg, **bad).validate()
    with pytest.raises(ConfigError, match="model.quantize must be none or 4bit"):
        ModelConfig(path="x", quantize="8bit").validate()


@pytest.mark.parametrize("last_k", [0, 1])
def test_the_lm_head_runs_on_learned_tokens_only_same_steps_and_eval(setup, last_k: int, monkeypatch) -> None:
    """A causal LM's loss applies the head to the learned positions only: the same losses and weights
    as the model's own loss over every position (last_k 1: through the frozen-prefix cache too)."""
    import fedpeer.train.loop as loop

    model_cfg, adapter_cfg, train_cfg = setup
    if model_cfg.task != "causal-lm":
        pytest.skip("causal-lm only")
    setup = (model_cfg, dataclasses.replace(adapter_cfg, last_k_blocks=last_k), train_cfg)
    rows = []
    real = loop.LocalTrainer._learned_loss

    def counting(self, model, examples, batch):
        rows.append(int(batch["attention_mask"].sum()))
        return real(self, model, examples, batch)

    monkeypatch.setattr(loop.LocalTrainer, "_learned_loss", counting)
    fast = run(setup)
    trainer = fast[2]
    assert rows and trainer._head is not None  # the head-on-learned-tokens path ran ...
    assert trainer.dual.model.get_output_embeddings() is trainer._head  # ... and put the head back
    monkeypatch.setattr(loop, "_plain_head", lambda model, task, train_model: (None, (model, "")))
    full = run(setup)
    assert full[2]._head is None
    assert_same_training(fast, full)
    # Evaluation takes the same route: the same eval loss from the same weights.
    assert fast[2].evaluate()["eval_loss"] == pytest.approx(full[2].evaluate()["eval_loss"], rel=1e-5)
