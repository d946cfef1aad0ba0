"""SIGKILL a node process mid-run and start it again: the others never hang, it catches up."""

import json

import pytest

from fedpeer.scenario.runner import ProcessRunner, prepare_for_processes
from tests.meshutil import tiny_spec


def records(out, node):
    return [json.loads(line) for line in (out / node / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_killed_node_resumes_and_catches_up(tmp_path):
    # Rounds of ~2 s: the mesh must still be running when the restarted process (which needs
    # ~10-20 s to import torch on a busy 2-core machine) comes back.
    spec = tiny_spec(
        nodes=3,
        topology="ring",
        train={"steps_per_round": 100, "lr": 3e-3},
        gossip={"rounds": 24, "round_timeout_s": 30.0, "join_timeout_s": 60.0, "linger_s": 1.0},
        codec={"name": "fp16"},
        faults=[{"kind": "kill", "node": "node1", "at_round": 2, "restart_at_round": 3}],
    )
    prepared = prepare_for_processes(spec, tmp_path)
    lines = []
    rows = ProcessRunner(prepared, echo=lines.append).run(timeout_s=600)
    log = "\n".join(lines)
    assert "killed node1" in log and "restarted node1" in log, log
    assert all(r["last_round"] == 24 for r in rows), rows

    victim = records(tmp_path, "node1")
    rounds = [r["round"] for r in victim]
    assert rounds[:2] == [1, 2]
    resumed_at = rounds[2]
    assert resumed_at > 3, f"the restarted node should jump to the mesh's round, ran {rounds}"
    assert victim[-1]["neighbours_heard"] == ["node0", "node2"]

    for other in ("node0", "node2"):
        recs = records(tmp_path, other)
        assert [r["round"] for r in recs] == list(range(1, 25))
        down = [r for r in recs if 3 <= r["round"] < resumed_at - 1]
        assert down and all(
            r["neighbours_heard"] == [n for n in ("node0", "node2") if n != other] for r in down
        )
        # Not waiting for the dead node: far below round_timeout_s.
        assert all(r["transfer_s"] < 10 for r in down)
        assert any("node1" in r["resynced"] for r in recs), f"{other} never resynced node1"
        assert recs[-1]["neighbours_heard"] == sorted(
            ["node1", next(n for n in ("node0", "node2") if n != other)]
        )
