"""train.keep_best: the adapters of the best-evaluated round, kept in STATE_DIR/best across restarts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedpeer.config import NodeConfig
from fedpeer.errors import ConfigError
from fedpeer.node import build_node, lifecycle
from fedpeer.node.state import Best, load_best
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import prepared_memory, random_global_state, tiny_spec

SOLO = {"join_timeout_s": 0.2, "linger_s": 0.0, "allow_solo": True}


def solo_config(tmp_path: Path, rounds: int, keep_best: str = "eval_loss") -> NodeConfig:
    spec = tiny_spec(nodes=2, gossip={**SOLO, "rounds": rounds}, train={"keep_best": keep_best})
    return prepared_memory(spec, tmp_path).nodes[0]


def run_scripted(cfg: NodeConfig, losses: list[float]) -> dict[int, dict[str, torch.Tensor]]:
    """Run the node with its evaluation replaced by `losses`, one per round it runs; return the
    adapters it held when each round was evaluated."""
    node = build_node(cfg, MemoryTransport(MemoryNetwork()))
    script = iter(losses)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def evaluate() -> dict[str, float]:
        seen[node.completed_round + 1] = {k: v.clone() for k, v in node.dual.adapter_state().items()}
        return {"eval_loss": next(script)}

    node.trainer.evaluate = evaluate  # type: ignore[method-assign]
    node.run()
    assert next(script, None) is None, "every scripted round ran"
    return seen


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_the_best_round_is_kept_not_the_latest(tmp_path: Path) -> None:
    seen = run_scripted(solo_config(tmp_path, rounds=4), [2.0, 1.0, 1.5, 1.2])
    best = load_best(tmp_path / "node0")
    assert best is not None
    assert (best.meta["round"], best.meta["criterion"], best.meta["value"]) == (2, "eval_loss", 1.0)
    assert_same(best.group("adapter"), seen[2])
    assert any(not torch.equal(seen[2][k], seen[4][k]) for k in seen[2]), "training went on after round 2"


def test_a_restarted_node_compares_with_the_best_before_its_stop(tmp_path: Path) -> None:
    cfg = solo_config(tmp_path, rounds=2)
    seen = run_scripted(cfg, [2.0, 1.0])
    # Resumed for two more rounds that are worse than round 2 but better than round 1: without the
    # kept value, round 3 would replace the best.
    run_scripted(dataclasses.replace(cfg, gossip=dataclasses.replace(cfg.gossip, rounds=4)), [1.5, 1.2])
    best = load_best(cfg.state_dir)
    assert best is not None and best.meta["round"] == 2
    assert_same(best.group("adapter"), seen[2])


def test_temp_files_of_an_interrupted_best_save_are_removed_at_start(tmp_path: Path) -> None:
    cfg = solo_config(tmp_path, rounds=1)
    run_scripted(cfg, [2.0])
    stale = tmp_path / "node0" / "best" / ".checkpoint-abc123.tmp"  # a kill inside the best copy's save
    stale.write_bytes(b"\0" * 4096)
    build_node(cfg, MemoryTransport(MemoryNetwork())).close()
    assert not stale.exists()
    assert load_best(cfg.state_dir) is not None


def test_the_best_round_keeps_the_prior_it_was_scored_with(tmp_path: Path) -> None:
    # train.prior_choices: the τ chosen in the best round goes with its adapters (export --best uses it).
    node = build_node(solo_config(tmp_path, rounds=3), MemoryTransport(MemoryNetwork()))
    script = iter([(2.0, 0.0), (1.0, 0.5), (1.5, 1.0)])

    def evaluate() -> dict[str, float]:
        loss, node.trainer.prior = next(script)
        return {"eval_loss": loss, "prior": node.trainer.prior}

    node.trainer.evaluate = evaluate  # type: ignore[method-assign]
    node.run()
    best = load_best(tmp_path / "node0")
    assert best is not None and (best.meta["round"], best.meta["prior"]) == (2, 0.5)


def test_off_keeps_nothing(tmp_path: Path) -> None:
    cfg = solo_config(tmp_path, rounds=2, keep_best="off")
    run_scripted(cfg, [2.0, 1.0])
    assert load_best(cfg.state_dir) is None
    assert (Path(cfg.state_dir) / "checkpoint.safetensors").exists()


@pytest.mark.parametrize(
    ("criterion", "kept", "value", "better"),
    [
        ("eval_loss", 1.0, 0.9, True),
        ("eval_loss", 1.0, 1.0, False),  # a tie keeps the earlier round
        ("eval_loss", 1.0, 1.1, False),
        ("macro_f1", 0.5, 0.6, True),
        ("macro_f1", 0.5, 0.5, False),
        ("macro_f1", 0.5, 0.4, False),
    ],
)
def test_which_value_is_better(criterion: str, kept: float, value: float, better: bool) -> None:
    assert Best(1, criterion, kept).beaten_by(value) is better


def test_config_refuses_what_cannot_be_kept(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.keep_best must be one of off, eval_loss, macro_f1"):
        solo_config(tmp_path, rounds=1, keep_best="accuracy")
    with pytest.raises(ConfigError, match='macro_f1 needs model.task = "seq-cls"'):
        solo_config(tmp_path, rounds=1, keep_best="macro_f1")  # the tiny spec is a causal LM


def test_the_mesh_adapter_taken_when_catching_up_is_a_candidate(tmp_path: Path) -> None:
    # A late joiner takes the mesh's global adapter (here: node1's snapshot) and only then trains:
    # if its own rounds score worse, the kept best is the mesh's model as it took it.
    cfg = solo_config(tmp_path, rounds=7)
    node = build_node(cfg, MemoryTransport(MemoryNetwork()))
    mesh = random_global_state(node, seed=1)
    node.neighbours.peers["node1"].info = node.me()  # as after a handshake

    def resync(j: str, t: int) -> bool:
        node.copies.install_snapshot(j, "epoch-1", t, seq=t, x_hat=mesh)
        return True

    node.resync = resync  # type: ignore[method-assign]
    losses = iter([1.0, 1.5, 1.2])  # at the catch-up, then after rounds 6 and 7
    node.trainer.evaluate = lambda: {"eval_loss": next(losses)}  # type: ignore[method-assign]
    lifecycle.catch_up(node, 5)
    node.run_round(6)
    node.run_round(7)
    node.close()
    best = load_best(cfg.state_dir)
    assert best is not None and (best.meta["round"], best.meta["value"]) == (5, 1.0)
    kept = best.group("adapter")
    for k, v in mesh.items():
        torch.testing.assert_close(kept[k], v, rtol=0, atol=0)
