"""A neighbour that dies or hangs costs its neighbours a few seconds (gossip.failure_timeout_s, gRPC
keepalive), never the round deadline (round_timeout_s). Driven by round events, not by sleeps."""

import logging
import os
import signal
import threading
import time

import pytest

from fedpeer.metrics import read_records
from fedpeer.node import Node
from fedpeer.scenario.runner import ProcessLauncher, prepare_for_processes
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import make_nodes, prepared_memory, run_threads, tiny_spec

ROUND_TIMEOUT = 60.0


def test_a_node_that_dies_between_ack_and_send_is_left_out_within_the_failure_timeout(tmp_path, caplog):
    """node2 takes its neighbours' round-2 updates (they are acknowledged, so they wait for its own)
    and dies before sending its round-2 update. node0 and node1 must go on after failure_timeout_s."""
    gossip = {"rounds": 3, "round_timeout_s": ROUND_TIMEOUT, "failure_timeout_s": 1.0, "join_timeout_s": 30.0}
    prepared = prepared_memory(tiny_spec(nodes=3, topology="complete", gossip=gossip), tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    victim = nodes[2]
    died = threading.Event()
    run_round = victim.run_round

    def dies_in_round_2(t: int):
        if t < 2:
            return run_round(t)
        others = {n.cfg.node_id for n in nodes[:2]}
        # The event: both neighbours' round-2 updates are queued here (so acknowledged to them).
        assert victim.copies.wait_for_round(2, others, time.monotonic() + 60) == others
        net.set_down(victim.cfg.listen)
        died.set()
        raise SystemExit  # the process is gone: no round-2 update, no checkpoint

    victim.run_round = dies_in_round_2  # type: ignore[method-assign]

    def run(node: Node) -> None:
        try:
            node.run()
        except SystemExit:
            node.close()

    with caplog.at_level(logging.WARNING, logger="fedpeer.node"):
        run_threads(nodes, target=run)
    assert died.is_set()
    for survivor in ("node0", "node1"):
        recs = {r.round: r for r in read_records(tmp_path / survivor / "metrics.jsonl")}
        assert sorted(recs) == [1, 2, 3]
        assert "node2" in recs[2].neighbours_reached and "node2" not in recs[2].neighbours_heard
        assert recs[2].transfer_s < ROUND_TIMEOUT / 2, "waited out the round deadline for a dead node"
        print(
            f"{survivor}: round 2 waited {recs[2].transfer_s:.2f} s for the dead node2 (failure_timeout 1 s)"
        )
    assert "left node2 out of round 2: it has not answered" in caplog.text


@pytest.mark.slow
def test_a_hung_neighbour_costs_seconds_not_the_round_deadline(tmp_path):
    """node2 is SIGSTOPped (hung: its sockets stay open, nothing answers) once it has finished round
    2. Its neighbours' sends to it fail on gRPC keepalive, their waits on failure_timeout_s.

    The stop lands wherever node2 is when the test sees its round-2 record: on a fast machine it may
    have finished round 3 too. So the checks start from the round node2 had last finished when it
    stopped (k, read while it is stopped): its update for k + 1 may be out, none for k + 2 onwards."""
    rounds = 7
    spec = tiny_spec(
        nodes=3,
        topology="complete",
        gossip={
            "rounds": rounds,
            "round_timeout_s": ROUND_TIMEOUT,
            "join_timeout_s": 60.0,
            "rpc_timeout_s": 30.0,
        },
    )
    prepared = prepare_for_processes(spec, tmp_path)
    launcher = ProcessLauncher(len(prepared.nodes))
    metrics = tmp_path / "node2" / "metrics.jsonl"
    try:
        for cfg in prepared.nodes:
            launcher.start(cfg)
        victim = launcher.procs["node2"]
        while max((r.round for r in read_records(metrics)), default=0) < 2:  # the event: its round 2
            assert victim.poll() is None, (tmp_path / "node2" / "node.log").read_text()
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGSTOP)
        stopped_after = max(r.round for r in read_records(metrics))
        assert stopped_after + 2 < rounds, f"node2 ran to round {stopped_after} before the test stopped it"
        for name in ("node0", "node1"):
            assert launcher.procs[name].wait(timeout=240) in (0, 2)
    finally:
        if launcher.procs["node2"].poll() is None:
            os.killpg(launcher.procs["node2"].pid, signal.SIGKILL)
        launcher.teardown()
    for survivor in ("node0", "node1"):
        recs = {r.round: r for r in read_records(tmp_path / survivor / "metrics.jsonl")}
        assert sorted(recs) == list(range(1, rounds + 1))
        after = [recs[t] for t in range(stopped_after + 1, rounds + 1)]
        assert all("node2" not in r.neighbours_heard for r in after[1:]), [r.neighbours_heard for r in after]
        worst = max(r.round_s for r in after)
        assert worst < ROUND_TIMEOUT / 2, f"{survivor} waited out a deadline for the hung node2"
        print(
            f"{survivor}: node2 hung after its round {stopped_after}; the rounds after took "
            + ", ".join(f"{r.round_s:.1f}" for r in after)
            + " s"
        )
