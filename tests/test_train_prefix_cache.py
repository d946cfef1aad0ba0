"""The frozen-prefix cache: training and evaluation with the lower blocks replayed from stored rows
give the losses, gradients, weights and metrics of the full forward; it is off where it would not be."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedpeer.config import AdapterConfig
from fedpeer.model import load_dual_lora
from fedpeer.model.prefix import FrozenPrefix
from fedpeer.train.prefix_cache import RowStore
from tests.trainutil import TASKS, TrainSetup, demo_site_per_task, make_trainer, task_setup

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return demo_site_per_task(tmp_path_factory.mktemp("sites"), n_train=40, n_eval=12)


@pytest.fixture(params=TASKS)
def setup(
    request: pytest.FixtureRequest, tiny_llama_dir: Path, tiny_bert_cls_dir: Path, sites: dict[str, Path]
) -> TrainSetup:
    task = request.param
    return task_setup(
        task,
        tiny_llama_dir if task == "causal-lm" else tiny_bert_cls_dir,
        sites[task],
        # The tiny models have 2 blocks: block 0 is the frozen prefix, block 1 carries the adapters.
        AdapterConfig(rank=4, alpha=8.0, last_k_blocks=1, head="local"),
        model={"dropout": False},
        steps_per_round=4,
        batch_size=6,  # 40 examples: later rounds revisit examples in batches of other widths
        lr=2e-2,
        max_length=48,
        class_weights="balanced" if task == "seq-cls" else "none",
    )


trainer = make_trainer


def test_cached_training_matches_uncached(setup: tuple) -> None:
    cached, plain = trainer(setup), trainer(setup, frozen_cache_mb=0)
    assert cached.prefix_cache is not None and plain.prefix_cache is None
    assert cached.evaluate() == pytest.approx(plain.evaluate(), rel=1e-5, abs=1e-6)
    for _ in range(5):  # 20 steps of 6 over 40 examples: every example comes back, padded otherwise
        assert cached.train_round() == pytest.approx(plain.train_round(), rel=1e-5, abs=1e-6)
    assert len(cached.prefix_cache.store) == len({*cached.train_examples, *cached.eval_examples})
    for a, b in zip(cached.dual.trainable_parameters(), plain.dual.trainable_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert cached.evaluate() == pytest.approx(plain.evaluate(), rel=1e-5, abs=1e-6)


def test_cached_gradients_match_uncached(setup: tuple) -> None:
    t = trainer(setup)
    t.train_round()  # B != 0, so gradients reach A as well
    examples = t.train_examples[:5]
    model = t.dual.model

    def grads(cache: bool) -> tuple[float, list[torch.Tensor]]:
        batch = t._batch(examples)
        out = t.prefix_cache.forward(model, examples, batch) if cache else model(**batch)
        model.zero_grad(set_to_none=True)
        out.loss.backward()
        return float(out.loss.detach()), [p.grad.clone() for p in t.dual.trainable_parameters()]

    loss_plain, g_plain = grads(cache=False)
    grads(cache=True)  # fills the rows of these examples
    loss_cached, g_cached = grads(cache=True)  # replays them
    assert loss_cached == pytest.approx(loss_plain, rel=1e-5)
    for a, b in zip(g_cached, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_replay_really_replaces_the_prefix(setup: tuple) -> None:
    # Wrong rows must change the output: the cached path is not silently the full forward.
    t = trainer(setup)
    batch = t._batch(t.eval_examples[:4])
    batch.pop("labels")
    cache = t.prefix_cache
    hidden = cache.hidden(t.dual.model, t.eval_examples[:4], batch)
    with torch.no_grad():
        right = t.dual.model(**batch).logits
        with cache.prefix.replay(hidden):
            replayed = t.dual.model(**batch).logits
        with cache.prefix.replay(torch.zeros_like(hidden)):
            wrong = t.dual.model(**batch).logits
    if replayed.dim() == 3:  # causal-lm: positions past a row's end are padding, never scored
        real = batch["attention_mask"].bool()
        replayed, right, wrong = replayed[real], right[real], wrong[real]
    torch.testing.assert_close(replayed, right, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(wrong, right, atol=1e-3)


@pytest.mark.parametrize(
    ("model_change", "adapter_change"),
    [({"dropout": True}, {}), ({}, {"last_k_blocks": 0}), ({}, {"last_k_blocks": 2})],
)
def test_no_cache_where_the_prefix_is_not_frozen(
    setup: tuple, model_change: dict, adapter_change: dict
) -> None:
    model_cfg, adapter_cfg, train_cfg = setup
    setup = (
        dataclasses.replace(model_cfg, **model_change),
        dataclasses.replace(adapter_cfg, **adapter_change),
        train_cfg,
    )
    assert trainer(setup).prefix_cache is None


def test_bounded_cache_keeps_no_more_than_asked(setup: tuple) -> None:
    t = trainer(setup, frozen_cache_mb=1)
    t.prefix_cache.store = RowStore(max_bytes=30_000)  # two or three rows of the tiny models
    plain = trainer(setup, frozen_cache_mb=0)
    assert t.train_round() == pytest.approx(plain.train_round(), rel=1e-5, abs=1e-6)
    assert 0 < t.prefix_cache.store.bytes <= 30_000 and len(t.prefix_cache.store) < t.train_size


def test_trainers_of_one_process_share_rows(setup: tuple) -> None:
    # Another site's trainer (other adapters, same frozen base) reuses rows; another max_length does not.
    first, second = trainer(setup), trainer(setup, seed=5)
    assert second.prefix_cache.store is first.prefix_cache.store
    assert trainer(setup, max_length=40).prefix_cache.store is not first.prefix_cache.store


def test_rows_do_not_depend_on_the_batch(setup: tuple) -> None:
    # A row is computed from its example alone: the same bits whichever batch met the example first.
    t = trainer(setup)
    examples = t.train_examples[:6]
    t.prefix_cache.store = RowStore(max_bytes=2**30)
    t.prefix_cache.hidden(t.dual.model, examples, t._batch(examples))
    together = [t.prefix_cache.store.get(e) for e in examples]
    t.prefix_cache.store = RowStore(max_bytes=2**30)
    for e in reversed(examples):
        t.prefix_cache.hidden(t.dual.model, [e], t._batch([e]))
    for e, row in zip(examples, together, strict=True):
        assert torch.equal(t.prefix_cache.store.get(e), row)


def test_find_refuses_trainable_embeddings(setup: tuple) -> None:
    model_cfg, adapter_cfg, _ = setup
    dual = load_dual_lora(model_cfg, adapter_cfg, CPU, local_seed=1)
    assert FrozenPrefix.find(dual.model, (dual.head,) if dual.head else ()) is not None
    dual.base_model.get_input_embeddings().weight.requires_grad_(True)
    assert FrozenPrefix.find(dual.model, (dual.head,) if dual.head else ()) is None
