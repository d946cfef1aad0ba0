"""A node restarted a few rounds behind the mesh replays the rounds it missed, with its neighbours'
copies of those rounds, instead of waiting for updates that were sent while it was down. Driven by
round events: the restart happens when the others have completed round 4, and they hold before
round 5 until the restarted node has joined."""

import threading

from fedpeer.metrics import read_records
from fedpeer.node import Node, build_node
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import make_nodes, prepared_memory, run_threads, tiny_spec

ROUND_TIMEOUT, ROUNDS = 60.0, 7


def test_a_node_restarted_two_rounds_behind_replays_them_without_waiting(tmp_path):
    gossip = {"rounds": ROUNDS, "round_timeout_s": ROUND_TIMEOUT, "join_timeout_s": 30.0, "linger_s": 1.0}
    prepared = prepared_memory(tiny_spec(nodes=3, topology="complete", gossip=gossip), tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    victim, others = nodes[1], [nodes[0], nodes[2]]
    at_round_5 = {n.cfg.node_id: threading.Event() for n in others}
    back = threading.Event()

    def hold_before_round_5(node: Node) -> None:
        run_round = node.run_round

        def held(t: int):
            if t == 5:
                at_round_5[node.cfg.node_id].set()
                assert back.wait(120)
            return run_round(t)

        node.run_round = held  # type: ignore[method-assign]

    for node in others:
        hold_before_round_5(node)
    victim_round = victim.run_round

    def dies_before_round_3(t: int):
        if t == 3:
            net.set_down(victim.cfg.listen)  # its process is gone: sends to it fail
            raise SystemExit
        return victim_round(t)

    victim.run_round = dies_before_round_3  # type: ignore[method-assign]

    def run(node: Node) -> None:
        if node is not victim:
            node.run()
            return
        try:
            node.run()
        except SystemExit:
            node.close()
        assert all(e.wait(120) for e in at_round_5.values())  # the mesh completed round 4
        net.set_down(victim.cfg.listen, False)
        again = build_node(victim.cfg, MemoryTransport(net))  # resumes from its round-2 checkpoint
        train = again.trainer.train_round

        def first_train() -> float:
            back.set()  # it has joined: let the others start round 5
            again.trainer.train_round = train  # type: ignore[method-assign]
            return train()

        again.trainer.train_round = first_train  # type: ignore[method-assign]
        again.run()

    run_threads(nodes, target=run)

    rounds = [r.round for r in read_records(tmp_path / "node1" / "metrics.jsonl")]
    assert rounds == list(range(1, ROUNDS + 1)), "it replays rounds 3 and 4, skipping none"
    replayed = {r.round: r for r in read_records(tmp_path / "node1" / "metrics.jsonl")}
    for t in (3, 4):
        assert sorted(replayed[t].neighbours_heard) == ["node0", "node2"], t
        assert sorted(replayed[t].resynced) == ["node0", "node2"], t
        assert replayed[t].transfer_s < ROUND_TIMEOUT / 2, "waited for updates lost while it was down"
    for other in ("node0", "node2"):
        recs = {r.round: r for r in read_records(tmp_path / other / "metrics.jsonl")}
        assert sorted(recs) == list(range(1, ROUNDS + 1))
        assert "node1" in recs[5].neighbours_heard and recs[5].transfer_s < ROUND_TIMEOUT / 2
