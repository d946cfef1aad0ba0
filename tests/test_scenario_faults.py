"""Scenario fault schedules (cut, partition, slow) over real processes and gRPC; shared checks for
the netns and docker runners, which must show the same behaviour from the same schedule."""

import json

import pytest

from fedpeer.scenario.runner import ProcessRunner, prepare_for_processes, run_inprocess
from fedpeer.scenario.spec import ScenarioSpec
from tests.meshutil import prepared_memory, tiny_spec

# Ring node0-node1-node2-node3-node0 split {node0, node1} | {node2, node3}: links 1-2 and 3-0 cut.
CROSS = {"node0": "node3", "node1": "node2", "node2": "node1", "node3": "node0"}
CUT_FROM, CUT_TO, ROUNDS = 2, 3, 7


def partition_spec(**over) -> ScenarioSpec:
    groups = [["node0", "node1"], ["node2", "node3"]]
    return tiny_spec(
        nodes=4,
        gossip={"rounds": ROUNDS},
        faults=[{"kind": "partition", "groups": groups, "from_round": CUT_FROM, "to_round": CUT_TO}],
        **over,
    )


def records(out, node) -> list[dict]:
    return [json.loads(line) for line in (out / node / "metrics.jsonl").read_text().splitlines()]


def check_partition_heals(out) -> dict[str, list[dict]]:
    """Every node ran all rounds; the cross links carried nothing during the cut, then the nodes
    heard each other again after resyncing. Returns the records per node."""
    recs = {n: records(out, n) for n in CROSS}
    for name, rs in recs.items():
        assert [r["round"] for r in rs] == list(range(1, ROUNDS + 1)), name
        by_round = {r["round"]: r for r in rs}
        assert CROSS[name] in by_round[1]["neighbours_heard"], name
        for rnd in range(CUT_FROM, CUT_TO + 1):
            assert CROSS[name] not in by_round[rnd]["neighbours_reached"], (name, rnd)
            assert CROSS[name] not in by_round[rnd]["neighbours_heard"], (name, rnd)
            assert by_round[rnd]["transfer_s"] < 10, "a cut link must not be waited for"
        assert any(CROSS[name] in r["resynced"] for r in rs if r["round"] > CUT_TO), name
        assert sorted(by_round[ROUNDS]["neighbours_heard"]) == sorted({CROSS[name], _ring_other(name)})
    return recs


def _ring_other(name: str) -> str:
    i = int(name[-1])
    other = {(i + 1) % 4, (i - 1) % 4} - {int(CROSS[name][-1])}
    return f"node{other.pop()}"


def series(recs: dict[str, list[dict]], field: str) -> list[float]:
    """Mesh mean of `field` per round."""
    rounds = sorted({r["round"] for rs in recs.values() for r in rs})
    return [
        sum(r[field] for rs in recs.values() for r in rs if r["round"] == t)
        / sum(1 for rs in recs.values() for r in rs if r["round"] == t)
        for t in rounds
    ]


def reference(spec: ScenarioSpec, out) -> dict[str, list[dict]]:
    """The same scenario in-process (threads, in-memory transport): the reference other runners meet."""
    prepared = prepared_memory(spec, out)
    run_inprocess(prepared)
    return {cfg.node_id: records(out, cfg.node_id) for cfg in prepared.nodes}


def assert_same_run(got: dict[str, list[dict]], ref: dict[str, list[dict]], rtol: float = 0.02) -> None:
    """Rounds, consensus distance series and bytes per round agree with the reference run."""
    assert {n: len(r) for n, r in got.items()} == {n: len(r) for n, r in ref.items()}
    assert series(got, "consensus_distance") == pytest.approx(series(ref, "consensus_distance"), rel=rtol)
    assert series(got, "bytes_sent") == pytest.approx(series(ref, "bytes_sent"), rel=rtol)
    assert series(got, "train_loss") == pytest.approx(series(ref, "train_loss"), rel=rtol)


@pytest.mark.slow
def test_partition_heals_over_grpc_processes(tmp_path):
    spec = partition_spec()
    lines: list[str] = []
    rows = ProcessRunner(prepare_for_processes(spec, tmp_path / "proc"), echo=lines.append).run(timeout_s=300)
    assert all(r["last_round"] == ROUNDS for r in rows), "\n".join(lines)
    got = check_partition_heals(tmp_path / "proc")
    # The node configs carry the schedule: the process run matches the in-process one.
    ref = reference(spec, tmp_path / "ref")
    check_partition_heals(tmp_path / "ref")
    assert series(got, "bytes_sent") == pytest.approx(series(ref, "bytes_sent"), rel=0.02)
    assert series(got, "consensus_distance")[:CUT_TO] == pytest.approx(
        series(ref, "consensus_distance")[:CUT_TO], rel=0.02
    )


@pytest.mark.slow
def test_slow_link_over_grpc_processes(tmp_path):
    """A 0.1 Mbit/s emulated link: each update over it takes bytes*8/rate, and its round shows it."""
    spec = tiny_spec(
        nodes=2,
        topology="complete",
        gossip={"rounds": 3},
        faults=[{"kind": "slow", "link": ["node0", "node1"], "delay_ms": 100.0, "bandwidth_mbit": 0.1}],
    )
    rows = ProcessRunner(prepare_for_processes(spec, tmp_path), echo=lambda _: None).run(timeout_s=300)
    assert all(r["last_round"] == 3 for r in rows)
    for rec in records(tmp_path, "node0")[1:]:
        expected = 0.1 + rec["bytes_sent"] * 8 / 0.1e6
        assert rec["transfer_s"] >= 0.9 * expected, rec
