"""train.schedule: which part (shared with the mesh, or private) each step of a round updates; and
train.proximal, the extra weight decay of the private part; train.shared_lr, the shared part's rate;
train.lr_decay_rounds, the cosine decay of the rates."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig, dump_toml, load_node_config
from fedpeer.datasets.synth import DEMO_LABELS, write_demo_sites
from fedpeer.errors import ConfigError, ModelError
from fedpeer.model import load_dual_lora
from fedpeer.node import build_node, lifecycle, state
from fedpeer.train import LocalTrainer
from fedpeer.train.loop import cosine_decay
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import prepared_memory, tiny_spec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_sites(tmp_path_factory.mktemp("sites"), 1, task="seq-cls", n_train=32, n_eval=8)[0]


def trainer(
    tiny_bert_cls_dir: Path,
    site: Path,
    schedule: str,
    steps: int,
    proximal: float = 0.0,
    shared_lr: float = 0.0,
    lr_decay_rounds: int = 0,
    **adapter: object,
) -> LocalTrainer:
    model_cfg = ModelConfig(path=str(tiny_bert_cls_dir), task="seq-cls", labels=DEMO_LABELS, dropout=False)
    adapter_cfg = AdapterConfig(**{"rank": 4, "alpha": 8.0, "head": "local", **adapter})  # type: ignore[arg-type]
    dual = load_dual_lora(model_cfg, adapter_cfg, CPU, local_seed=1)
    train_cfg = TrainConfig(
        data=str(site / "train.jsonl"),
        eval_data=str(site / "eval.jsonl"),
        steps_per_round=steps,
        batch_size=8,
        lr=1e-2,
        device="cpu",
        schedule=schedule,
        proximal=proximal,
        shared_lr=shared_lr,
        lr_decay_rounds=lr_decay_rounds,
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


def test_proximal_decays_the_private_part_only(tiny_bert_cls_dir: Path, site: Path) -> None:
    # One AdamW step from the same start: decoupled decay multiplies the private tensors by
    # (1 - lr * proximal) before the update, and leaves the shared ones as without it.
    plain = trainer(tiny_bert_cls_dir, site, "joint", 1)
    pulled = trainer(tiny_bert_cls_dir, site, "joint", 1, proximal=5.0)
    start = [p.detach().clone() for p in pulled.dual.private_parameters()]
    assert any(bool(p.abs().sum() > 0) for p in start)  # something for the decay to act on
    plain.train_round()
    pulled.train_round()
    for a, b in zip(plain.dual.shared_parameters(), pulled.dual.shared_parameters(), strict=True):
        assert torch.equal(a, b)
    lr = plain.cfg.lr
    private = zip(plain.dual.private_parameters(), pulled.dual.private_parameters(), start, strict=True)
    for a, b, p0 in private:
        torch.testing.assert_close(b.detach(), a.detach() - lr * 5.0 * p0, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("saved", "resumed"), [(0.0, 3.0), (3.0, 0.0)])
def test_trainer_state_loads_across_proximal_settings(
    tiny_bert_cls_dir: Path, site: Path, saved: float, resumed: float
) -> None:
    # One optimizer group or two: a restart may switch train.proximal on or off.
    a = trainer(tiny_bert_cls_dir, site, "joint", 2, proximal=saved)
    a.train_round()
    tensors, meta = a.state_tensors(), a.state_meta()
    b = trainer(tiny_bert_cls_dir, site, "joint", 2, proximal=resumed)
    b.dual.load_adapter_state(a.dual.adapter_state())
    b.load_state(tensors, meta)
    moments = [b._optim.state[p]["exp_avg"] for p in b.dual.trainable_parameters()]
    for p, m in zip(a.dual.trainable_parameters(), moments, strict=True):
        assert torch.equal(a._optim.state[p]["exp_avg"], m)
    decay = [g["weight_decay"] for g in b._optim.param_groups]
    assert decay == ([0.0, resumed] if resumed else [0.0])
    b.train_round()


def test_negative_proximal_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.proximal"):
        dataclasses.replace(TrainConfig(data="x.jsonl"), proximal=-1.0).validate()


def test_shared_lr_scales_the_shared_step_only(tiny_bert_cls_dir: Path, site: Path) -> None:
    # AdamW's first step moves each weight by lr * g / (|g| + eps): at 3 x lr the shared part moves 3 x
    # as far, and the private part exactly as at train.lr.
    plain = trainer(tiny_bert_cls_dir, site, "joint", 1)
    fast = trainer(tiny_bert_cls_dir, site, "joint", 1, shared_lr=3 * plain.cfg.lr)
    start = [p.detach().clone() for p in fast.dual.shared_parameters()]
    plain.train_round()
    fast.train_round()
    shared = zip(plain.dual.shared_parameters(), fast.dual.shared_parameters(), start, strict=True)
    moved = 0.0
    for a, b, p0 in shared:
        torch.testing.assert_close(b.detach() - p0, 3 * (a.detach() - p0), rtol=1e-4, atol=1e-7)
        moved += float((a.detach() - p0).abs().sum())
    assert moved > 0  # the shared part did take a step
    for a, b in zip(plain.dual.private_parameters(), fast.dual.private_parameters(), strict=True):
        assert torch.equal(a, b)


def test_shared_lr_without_a_private_part_is_the_rate(tiny_bert_cls_dir: Path, site: Path) -> None:
    # A site that trains only what it shares (no local adapter, head shared) trains all at shared_lr.
    only_shared = {"use_local": False, "head": "global"}
    a = trainer(tiny_bert_cls_dir, site, "joint", 2, shared_lr=3e-2, **only_shared)
    assert [g["lr"] for g in a._optim.param_groups] == [3e-2]


def test_trainer_state_loads_across_shared_lr_settings(tiny_bert_cls_dir: Path, site: Path) -> None:
    # A restart may change the shared part's rate: the moments carry over, the config's rates win.
    a = trainer(tiny_bert_cls_dir, site, "joint", 2)
    a.train_round()
    b = trainer(tiny_bert_cls_dir, site, "joint", 2, shared_lr=3e-2)
    b.dual.load_adapter_state(a.dual.adapter_state())
    b.load_state(a.state_tensors(), a.state_meta())
    assert [g["lr"] for g in b._optim.param_groups] == [3e-2, 1e-2]
    for p, q in zip(a.dual.trainable_parameters(), b.dual.trainable_parameters(), strict=True):
        assert torch.equal(a._optim.state[p]["exp_avg"], b._optim.state[q]["exp_avg"])
    b.train_round()


def test_negative_shared_lr_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.shared_lr"):
        dataclasses.replace(TrainConfig(data="x.jsonl"), shared_lr=-1.0).validate()


def test_cosine_decay_runs_from_one_to_zero() -> None:
    factors = [cosine_decay(step, 8) for step in range(10)]
    assert factors[0] == 1.0
    assert factors[4] == pytest.approx(0.5)
    assert factors[8:] == [0.0, 0.0]
    assert all(a > b for a, b in zip(factors[:8], factors[1:9], strict=True))


def test_lr_decay_rounds_scales_every_rate_then_stops_training(tiny_bert_cls_dir: Path, site: Path) -> None:
    # Two steps a round, decay over one round: the second step runs at half of each group's rate,
    # and from the second round on the rates are 0, so no weight moves.
    t = trainer(tiny_bert_cls_dir, site, "joint", 2, shared_lr=3e-2, lr_decay_rounds=1)
    t.train_round()
    assert [g["lr"] for g in t._optim.param_groups] == pytest.approx([1.5e-2, 5e-3])
    before = [p.detach().clone() for p in t.dual.trainable_parameters()]
    t.train_round()
    assert [g["lr"] for g in t._optim.param_groups] == [0.0, 0.0]
    assert not changed(before, t.dual.trainable_parameters())


def test_a_restored_trainer_resumes_the_decay(tiny_bert_cls_dir: Path, site: Path) -> None:
    # The rate follows the round counter that the checkpoint keeps: round 2 after a restart is
    # round 2 without one, and it differs from a fresh round 1 at the full rate.
    a = trainer(tiny_bert_cls_dir, site, "joint", 2, lr_decay_rounds=3)
    a.train_round()
    b = trainer(tiny_bert_cls_dir, site, "joint", 2, lr_decay_rounds=3)
    b.dual.load_adapter_state(a.dual.adapter_state())
    b.load_state(a.state_tensors(), a.state_meta())
    a.train_round()
    b.train_round()
    assert b.steps == 4
    assert [g["lr"] for g in b._optim.param_groups] == [g["lr"] for g in a._optim.param_groups]
    assert b._optim.param_groups[0]["lr"] < 1e-2
    for p, q in zip(a.dual.trainable_parameters(), b.dual.trainable_parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_skipped_trainer_trains_at_the_meshs_rate(tiny_bert_cls_dir: Path, site: Path) -> None:
    # Decay over 4 rounds of 2 steps: a node that catches up to round 2 trains round 3 at the rates
    # of steps 4 and 5 of 8 (0.5, then 0.5 * (1 + cos(5 pi / 8))), as the nodes that stayed do,
    # not at the full rate of a first round.
    stayed = trainer(tiny_bert_cls_dir, site, "joint", 2, lr_decay_rounds=4)
    for _ in range(3):
        stayed.train_round()
    joined = trainer(tiny_bert_cls_dir, site, "joint", 2, lr_decay_rounds=4)
    joined.skip_to_round(2)
    rates: list[float] = []
    joined._optim.register_step_pre_hook(lambda optim, *_: rates.append(optim.param_groups[0]["lr"]))
    joined.train_round()
    assert rates == pytest.approx([0.5e-2, 0.5e-2 * (1 + math.cos(5 * math.pi / 8))])
    assert [g["lr"] for g in joined._optim.param_groups] == [g["lr"] for g in stayed._optim.param_groups]
    assert (joined.rounds, joined.steps) == (3, 2)
    joined.skip_to_round(1)  # never backwards
    assert joined.rounds == 3


def test_catching_up_moves_the_decay_clock_and_a_restart_keeps_it(tmp_path: Path) -> None:
    # train.lr_decay_rounds follows the mesh's round: a node that jumps to round 5 trains round 6
    # at round 6's rate, and the checkpoint written at the jump keeps that clock for a restart (one
    # written before this was so is read with the node's round as the clock).
    gossip = {"join_timeout_s": 0.2, "linger_s": 0.0, "allow_solo": True, "rounds": 8}
    spec = tiny_spec(nodes=2, gossip=gossip, train={"lr_decay_rounds": 8})
    cfg = prepared_memory(spec, tmp_path).nodes[0]
    node = build_node(cfg, MemoryTransport(MemoryNetwork()))
    node.resync = lambda j, t: False  # type: ignore[method-assign]  # no snapshot: keep our adapter
    lifecycle.catch_up(node, 5)
    node.close()
    assert (node.completed_round, node.trainer.rounds, node.trainer.steps) == (5, 5, 0)
    again = build_node(cfg, MemoryTransport(MemoryNetwork()))
    again.close()
    assert (again.completed_round, again.trainer.rounds) == (5, 5)
    again.trainer.rounds = 0  # as in a checkpoint written before catching up moved the clock
    state.save(again)
    older = build_node(cfg, MemoryTransport(MemoryNetwork()))
    older.close()
    assert (older.completed_round, older.trainer.rounds) == (5, 5)


def test_negative_lr_decay_rounds_is_refused() -> None:
    with pytest.raises(ConfigError, match="train.lr_decay_rounds"):
        dataclasses.replace(TrainConfig(data="x.jsonl"), lr_decay_rounds=-1).validate()


@pytest.mark.parametrize("head", ["global", "split"])
def test_decoupled_shared_part_trains_as_a_global_only_model(
    tiny_bert_cls_dir: Path, site: Path, head: str
) -> None:
    # Reference: the same shared part without any private part (adapter.use_local = false, the head
    # shared). Under "decoupled" the private part must not change what the shared part learns.
    alone = trainer(tiny_bert_cls_dir, site, "joint", 3, head="global", use_local=False)
    both = trainer(tiny_bert_cls_dir, site, "decoupled", 3, head=head)
    start = alone.dual.global_state()
    names = {k.replace(".shared.", "."): k for k in both.dual.global_keys()}  # a split head's shared half
    assert sorted(names) == alone.dual.global_keys()
    both.dual.set_global_state({names[k]: v for k, v in start.items()})  # the heads' seeds differ
    for _ in range(2):
        alone.train_round()
        both.train_round()
    private = both.dual.local_state()
    assert any(bool(v.abs().sum() > 0) for k, v in private.items() if "lora_B.local" in k)  # it trained
    for k, v in alone.dual.global_state().items():
        assert not torch.equal(v, start[k])
        torch.testing.assert_close(both.dual.global_state()[names[k]], v, rtol=1e-5, atol=1e-6)


def test_decoupled_private_part_learns_on_the_whole_model(tiny_bert_cls_dir: Path, site: Path) -> None:
    # One step of local-first's private turn is the private part's step on the whole model's loss with
    # the shared part left alone: decoupled's private step must be that same step.
    private_turn = trainer(tiny_bert_cls_dir, site, "local-first", 1, head="split")
    both = trainer(tiny_bert_cls_dir, site, "decoupled", 1, head="split")
    private_turn.train_round()
    both.train_round()
    for k, v in private_turn.dual.local_state().items():
        torch.testing.assert_close(both.dual.local_state()[k], v, rtol=1e-5, atol=1e-6)
    assert both.dual.global_state().keys() == private_turn.dual.global_state().keys()
    assert any(  # while its shared part moved (local-first's did not)
        not torch.equal(a, b)
        for a, b in zip(
            both.dual.global_state().values(), private_turn.dual.global_state().values(), strict=True
        )
    )


def test_shared_only_leaves_the_private_part_out_and_restores_it(tiny_bert_cls_dir: Path, site: Path) -> None:
    t = trainer(tiny_bert_cls_dir, site, "joint", 2, head="split")
    t.train_round()  # a private part that changes the logits
    batch = t._batch(t.train_examples[:4])
    batch.pop("labels")
    model = t.dual.model.eval()
    with torch.no_grad():
        whole = model(**batch).logits
        with t.dual.shared_only():
            shared = model(**batch).logits
        private = {k: torch.zeros_like(v) for k, v in t.dual.local_state().items()}
        saved = t.dual.local_state()
        t.dual.set_local_state(private)
        reference = model(**batch).logits  # the private part at zero: the shared part alone
        t.dual.set_local_state(saved)
        assert torch.equal(model(**batch).logits, whole)  # restored on leaving
    torch.testing.assert_close(shared, reference)
    assert not torch.allclose(shared, whole)
    with pytest.raises(RuntimeError), t.dual.shared_only():
        raise RuntimeError("restored on an error too")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, whole)


def test_shared_only_needs_a_shared_head(tiny_bert_cls_dir: Path, site: Path) -> None:
    t = trainer(tiny_bert_cls_dir, site, "joint", 1, head="local")
    with pytest.raises(ModelError, match='adapter.head = "local"'), t.dual.shared_only():
        pass


@pytest.mark.parametrize(
    ("adapter", "message"),
    [({"head": "local"}, "needs a shared head"), ({"share": "a"}, "needs a shared head")],
)
def test_decoupled_is_refused_without_a_shared_part_to_train_alone(
    tmp_path: Path, tiny_bert_cls_dir: Path, adapter: dict, message: str
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        dump_toml(
            {
                "node_id": "site-a",
                "state_dir": str(tmp_path / "state"),
                "model": {"path": str(tiny_bert_cls_dir), "task": "seq-cls", "labels": list(DEMO_LABELS)},
                "adapter": adapter,
                "train": {"data": "train.jsonl", "schedule": "decoupled"},
            }
        )
    )
    with pytest.raises(ConfigError, match=f"train.schedule.*{message}"):
        load_node_config(config)
