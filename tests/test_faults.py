"""SIGKILL a node process mid-run and start it again: the others never hang, it catches up."""

import json
import re

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
    assert rounds == sorted(set(rounds)) and rounds[-1] == 24, rounds
    # Where it went on after the restart depends on how far the mesh got while the process started:
    # up to max_rounds_ahead behind it replays the missed rounds, further behind it catches up
    # (jumps and takes the mesh's adapter). Read both from its log instead of assuming them.
    node_log = (tmp_path / "node1" / "node.log").read_text()
    done = int(re.search(r"resumed from \S+ at round (\d+)", node_log).group(1))
    assert done >= 2 and rounds[:done] == list(range(1, done + 1)), rounds
    jump = re.search(rf"the mesh is at round (\d+), we completed {done}: catching up", node_log)
    back = rounds[done]
    assert back == (int(jump.group(1)) if jump else done) + 1, f"{rounds}\n{node_log}"
    if jump:
        assert "took the mesh's global adapter" in node_log
    assert victim[-1]["neighbours_heard"] == ["node0", "node2"]

    restarted_when = int(re.search(r"restarted node1 \(the others are at round (\d+)\)", log).group(1))
    for other in ("node0", "node2"):
        recs = records(tmp_path, other)
        assert [r["round"] for r in recs] == list(range(1, 25))
        # Rounds the others ran while node1 was surely down (killed after its round 2, not yet back).
        down = [r for r in recs if 4 <= r["round"] <= restarted_when]
        assert all(r["neighbours_heard"] == [n for n in ("node0", "node2") if n != other] for r in down)
        # Not waiting for the dead node: far below round_timeout_s.
        assert all(r["transfer_s"] < 10 for r in down)
        assert any("node1" in r["resynced"] for r in recs), f"{other} never resynced node1"
        assert recs[-1]["neighbours_heard"] == sorted(
            ["node1", next(n for n in ("node0", "node2") if n != other)]
        )
    print(f"\nnode1: resumed at {done}, went on at {back}, restart seen at mesh round {restarted_when}")
    print("consensus distance after the restart (node1 | node0 | node2):")
    by = {
        n: {r["round"]: r["consensus_distance"] for r in records(tmp_path, n)}
        for n in ("node0", "node1", "node2")
    }
    for t in range(back, min(back + 5, 25)):
        print(f"  round {t}: " + " | ".join(f"{by[n].get(t)}" for n in ("node1", "node0", "node2")))
    # Back in the consensus within 2 rounds of replaying, 3 of catching up: its distance to its
    # neighbours' copies is at the mesh's level (within the others' spread plus a quarter) by its
    # second round back, or its third after a jump. Rounds it ran, not back + 1, back + 2: a node
    # still too far behind after its first round back (a slow restart on a loaded machine) catches
    # up again and skips rounds. A jump keeps the local adapter and optimizer state of the round it
    # stopped at, under the mesh's newer global adapter (the likely cause of this): in a fresh-clone
    # run that resumed at 2 and jumped to 10, its distance went 2.50, 3.10, 2.35, 2.11 over rounds
    # 11-14 (the others 2.28-2.35).
    second = rounds[min(done + (2 if jump else 1), len(rounds) - 1)]
    others = [d for d in (by["node0"][second], by["node2"][second]) if d is not None]  # None: mixed none
    assert others and by["node1"][second] <= 1.25 * max(others), by
