"""Fused dual LoRA (adapter.fused): one LoRA pass of rank r_g + r_l computes what peft's two adapters
compute, forward and gradients, and training with it ends where training without it ends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.datasets.synth import DEMO_LABELS, write_demo_sites
from fedpeer.model import load_dual_lora
from fedpeer.model.dual_lora import GLOBAL, LOCAL
from fedpeer.model.fused import FusedDualLinear, fused_modules, unfuse_dual_lora
from fedpeer.train import LocalTrainer, make_batch
from fedpeer.train.data import read_jsonl

CPU = torch.device("cpu")


@pytest.fixture(params=["causal-lm", "seq-cls"])
def task_setup(request, tiny_llama_dir: Path, tiny_bert_cls_dir: Path, tmp_path_factory):
    task = request.param
    path, labels = (tiny_llama_dir, ()) if task == "causal-lm" else (tiny_bert_cls_dir, DEMO_LABELS)
    site = write_demo_sites(tmp_path_factory.mktemp(task), 1, task=task, n_train=32, n_eval=8)[0]
    model = ModelConfig(path=str(path), task=task, labels=labels, dropout=False)
    return model, small_train(site / "train.jsonl", site / "eval.jsonl")


def small_train(data: Path, eval_data: Path, **train: object) -> TrainConfig:
    """3 steps of 8 examples of at most 48 tokens on the CPU, every block computed (no prefix cache)."""
    return TrainConfig(
        data=str(data),
        eval_data=str(eval_data),
        steps_per_round=3,
        batch_size=8,
        lr=5e-3,
        max_length=48,
        device="cpu",
        frozen_cache_mb=0,
        **train,  # type: ignore[arg-type]
    )


def pair(model: ModelConfig, **adapter: object):
    """The same site twice: fused and peft's own forward, equal weights (B's made non-zero)."""
    cfg = AdapterConfig(rank=4, alpha=8.0, local_rank=2, **adapter)  # type: ignore[arg-type]
    fused = load_dual_lora(model, cfg, CPU, local_seed=3)
    plain = load_dual_lora(model, dataclasses.replace(cfg, fused=False), CPU, local_seed=3)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in fused.adapter_state().items()}
    fused.load_adapter_state(state)
    plain.load_adapter_state(state)
    return fused, plain


def test_fused_forward_and_gradients_equal_peft_two_adapters(task_setup) -> None:
    model_cfg, train_cfg = task_setup
    fused, plain = pair(model_cfg)
    assert fused_modules(fused.model) and not fused_modules(plain.model)
    assert len(fused_modules(fused.model)) == sum(
        1 for n, _ in fused.model.named_modules() if n.endswith(("q_proj", "v_proj", "query", "value"))
    )
    examples = read_jsonl(train_cfg.data, model_cfg.task, model_cfg.labels)[:8]
    batch = make_batch(examples, fused.tokenizer, model_cfg.task, 48, ("input_ids", "attention_mask"))
    outs = []

    def peft_forward_called(*args, **kwargs):
        raise AssertionError("the fused model fell back to peft's two passes")

    for dual in (fused, plain):
        dual.model.train()
        with pytest.MonkeyPatch.context() as mp:
            if dual is fused:  # the fused pass itself must run, not peft's forward behind it
                mp.setattr(LoraLinear, "forward", peft_forward_called)
            out = dual.model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in dual.model.named_parameters() if p.grad is not None}
        outs.append((out.logits.detach(), grads))
    (logits_f, grads_f), (logits_p, grads_p) = outs
    torch.testing.assert_close(logits_f, logits_p, atol=1e-5, rtol=1e-5)
    assert grads_f.keys() == grads_p.keys() and any(f".lora_B.{LOCAL}." in k for k in grads_f)
    assert not any(f".lora_A.{GLOBAL}." in k for k in grads_f)  # FFA-LoRA: A_g stays frozen
    for k in grads_f:
        torch.testing.assert_close(grads_f[k], grads_p[k], atol=1e-5, rtol=1e-4, msg=k)


def test_training_fused_ends_where_peft_ends(task_setup) -> None:
    model_cfg, train_cfg = task_setup
    fused, plain = pair(model_cfg)
    ends = []
    for dual in (fused, plain):
        t = LocalTrainer(dual, model_cfg, train_cfg)
        losses = [t.train_round() for _ in range(2)]
        ends.append((losses, dual.global_state(), dual.local_state(), t.evaluate()))
    (lf, gf, locf, ef), (lp, gp, locp, ep) = ends
    assert lf == pytest.approx(lp, rel=1e-4)
    for a, b in ((gf, gp), (locf, locp)):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    assert ef["eval_loss"] == pytest.approx(ep["eval_loss"], rel=1e-4)


def test_fused_falls_back_to_peft_where_it_would_differ(tiny_llama_dir: Path) -> None:
    model_cfg = ModelConfig(path=str(tiny_llama_dir), task="causal-lm", dropout=False)
    fused, plain = pair(model_cfg)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    fused.model.eval()
    plain.model.eval()
    with torch.no_grad():
        with fused.model.disable_adapter(), plain.model.disable_adapter():
            torch.testing.assert_close(fused.model(input_ids=ids).logits, plain.model(input_ids=ids).logits)
        base = fused.model(input_ids=ids).logits
        # One adapter active: peft's path, the fused one would add both.
        for dual in (fused, plain):
            dual.model.base_model.set_adapter([GLOBAL])
        torch.testing.assert_close(fused.model(input_ids=ids).logits, plain.model(input_ids=ids).logits)
        for dual in (fused, plain):
            dual.model.base_model.set_adapter([GLOBAL, LOCAL])
        torch.testing.assert_close(fused.model(input_ids=ids).logits, base)
    unfuse_dual_lora(fused.model)
    assert not fused_modules(fused.model)
    assert not any(isinstance(m, FusedDualLinear) for m in fused.model.modules())


def test_global_only_models_are_not_fused(tiny_llama_dir: Path) -> None:
    model_cfg = ModelConfig(path=str(tiny_llama_dir), task="causal-lm", dropout=False)
    dual = load_dual_lora(model_cfg, AdapterConfig(rank=4, use_local=False), CPU, local_seed=1)
    assert not fused_modules(dual.model)
