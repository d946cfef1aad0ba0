"""Multi-node runs in one process (in-memory transport) against plain-torch references."""

import threading
import time

import pytest
import torch

from fedpeer import PROTOCOL_VERSION, checkpoint
from fedpeer.errors import CheckpointError
from fedpeer.gossip.topology import build_topology
from fedpeer.gossip.weights import mixing_matrix
from fedpeer.metrics import read_metrics
from fedpeer.node import Node, build_node
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import make_nodes, prepared_memory, random_global_state, run_threads, tiny_spec


@pytest.mark.parametrize("topology,n,rounds", [("ring", 4, 3), ("complete", 5, 2), ("star", 4, 3)])
def test_lossless_gossip_with_lr0_equals_w_to_the_k(tmp_path, topology, n, rounds):
    """CHOCO with gamma=1 and a lossless codec is plain gossip: after k rounds x = W^k x0."""
    spec = tiny_spec(nodes=n, topology=topology, train={"lr": 0.0}, gossip={"rounds": rounds})
    prepared = prepared_memory(spec, tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    x0 = {}
    for i, node in enumerate(nodes):
        x0[node.cfg.node_id] = random_global_state(node, seed=i)
        node.dual.set_global_state(x0[node.cfg.node_id])
    run_threads(nodes)

    w, order = mixing_matrix(build_topology(topology, n))
    wk = torch.linalg.matrix_power(w, rounds)
    for key in x0[order[0]]:
        stacked = torch.stack([x0[name][key].double() for name in order])  # [n, ...]
        expected = torch.einsum("ij,j...->i...", wk, stacked)
        for i, name in enumerate(order):
            got = next(nd for nd in nodes if nd.cfg.node_id == name).dual.global_state()[key].double()
            torch.testing.assert_close(got, expected[i], atol=1e-5, rtol=0)
    # The reference is not trivially met: the initial states really differed.
    assert (x0[order[0]][key] - x0[order[1]][key]).abs().max() > 1e-2


def test_metrics_records_have_the_documented_fields(tmp_path):
    prepared = prepared_memory(tiny_spec(gossip={"rounds": 2}), tmp_path)
    net = MemoryNetwork()
    run_threads(make_nodes(prepared, lambda: MemoryTransport(net)))
    recs = read_metrics(tmp_path / "node0" / "metrics.jsonl")
    assert [r["round"] for r in recs] == [1, 2]
    for field in (
        "train_loss",
        "eval_loss",
        "perplexity",
        "bytes_sent",
        "bytes_received",
        "raw_bytes",
        "encode_s",
        "decode_s",
        "round_s",
        "consensus_distance",
        "neighbours_heard",
    ):
        assert field in recs[-1], field
    assert recs[-1]["bytes_sent"] > 0 and recs[-1]["bytes_received"] > 0
    assert sorted(recs[-1]["neighbours_heard"]) == ["node1", "node2"]


def test_local_adapters_stay_different_while_global_ones_mix(tmp_path):
    prepared = prepared_memory(tiny_spec(gossip={"rounds": 3}, train={"steps_per_round": 3}), tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    run_threads(nodes)
    locals_ = [n.dual.local_state() for n in nodes]
    key = next(k for k in locals_[0] if "lora_B" in k)
    assert not torch.allclose(locals_[0][key], locals_[1][key])


def test_dead_neighbour_does_not_hang_the_round(tmp_path):
    """A neighbour that is down is not waited for: rounds take far less than round_timeout_s."""
    spec = tiny_spec(
        nodes=3, topology="complete", gossip={"rounds": 2, "round_timeout_s": 60.0, "join_timeout_s": 1.0}
    )
    prepared = prepared_memory(spec, tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    alive = nodes[:2]  # node2 never starts
    t0 = time.monotonic()
    run_threads(alive)
    assert time.monotonic() - t0 < 30
    rec = read_metrics(tmp_path / "node0" / "metrics.jsonl")[-1]
    assert (
        rec["round"] == 2 and rec["neighbours_heard"] == ["node1"] and rec["neighbours_reached"] == ["node1"]
    )


def test_slow_neighbour_is_left_out_after_the_round_deadline(tmp_path):
    # Its only round goes without the slow neighbour: each node trains alone, on purpose here.
    gossip = {"rounds": 1, "round_timeout_s": 1.0, "allow_solo": True}
    spec = tiny_spec(nodes=2, topology="complete", gossip=gossip)
    prepared = prepared_memory(spec, tmp_path)
    net = MemoryNetwork()
    fast, slow = make_nodes(prepared, lambda: MemoryTransport(net))
    original = slow.trainer.train_round

    def sluggish() -> float:
        time.sleep(4.0)
        return original()

    slow.trainer.train_round = sluggish
    t0 = time.monotonic()
    run_threads([fast, slow])
    fast_rec = read_metrics(tmp_path / fast.cfg.node_id / "metrics.jsonl")[-1]
    assert fast_rec["neighbours_heard"] == [] and fast_rec["neighbours_reached"] == [slow.cfg.node_id]
    assert 0.9 <= fast_rec["transfer_s"] < 4.0
    assert time.monotonic() - t0 < 30


def test_resume_from_checkpoint_restores_state(tmp_path):
    prepared = prepared_memory(tiny_spec(gossip={"rounds": 2}), tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    run_threads(nodes)
    before = nodes[0]
    again = build_node(prepared.nodes[0], MemoryTransport(MemoryNetwork()))
    assert again.completed_round == 2 and again.sender.seq == before.sender.seq
    for k, v in before.dual.adapter_state().items():
        torch.testing.assert_close(again.dual.adapter_state()[k], v, atol=0, rtol=0)
    for k, v in before.sender.x_hat.items():
        torch.testing.assert_close(again.sender.x_hat[k], v, atol=0, rtol=0)
    assert again.copies.copies["node1"].applied_seq == before.copies.copies["node1"].applied_seq == 2
    assert again.sender.epoch != before.sender.epoch


def test_resume_refuses_a_checkpoint_of_another_protocol_and_says_so(tmp_path):
    """A checkpoint written under another fingerprint (here: fedpeer protocol 1) is refused, and the
    message names the field that differs, not just "another model"."""
    prepared = prepared_memory(tiny_spec(nodes=2, gossip={"rounds": 1}), tmp_path)
    net = MemoryNetwork()
    run_threads(make_nodes(prepared, lambda: MemoryTransport(net)))
    state_dir = prepared.nodes[0].state_dir
    ck = checkpoint.load(state_dir)
    assert ck is not None and ck.meta["fingerprint_fields"]["protocol"] == str(PROTOCOL_VERSION)
    old = {
        **ck.meta,
        "fingerprint": "0" * 16,
        "fingerprint_fields": {**ck.meta["fingerprint_fields"], "protocol": "1"},
    }
    checkpoint.save(state_dir, ck.tensors, old)
    with pytest.raises(CheckpointError, match=f"protocol: checkpoint '1', this node '{PROTOCOL_VERSION}'"):
        build_node(prepared.nodes[0], MemoryTransport(MemoryNetwork()))


def test_data_aware_mixing_matches_reference_and_preserves_the_weighted_mean(tmp_path):
    """weighting = data-size: x <- W_pi x with w_ij = min(1, pi_j/pi_i)/(1+max(d_i,d_j)), which keeps
    sum_i pi_i x_i fixed, so the mesh heads for the data-weighted average instead of the plain one."""
    n, rounds = 4, 4
    sizes = [10.0, 20.0, 40.0, 80.0]
    from fedpeer.datasets.synth import write_demo_sites

    site = write_demo_sites(tmp_path / "pool", 1, task="causal-lm", n_train=80, n_eval=8)[0]
    rows = (site / "train.jsonl").read_text().splitlines()
    files = []
    for i, size in enumerate(sizes):
        f = tmp_path / f"site{i}.jsonl"
        f.write_text("\n".join(rows[: int(size)]) + "\n")
        files.append(str(f))
    spec = tiny_spec(
        nodes=n,
        topology="ring",
        train={"lr": 0.0, "steps_per_round": 0, "eval_fraction": 0.1},
        gossip={"rounds": rounds, "weighting": "data-size"},
        data={"generator": "files", "files": files},
    )
    prepared = prepared_memory(spec, tmp_path / "run")
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    sizes = [float(nd.trainer.train_size) for nd in nodes]  # after the eval hold-out
    assert len(set(sizes)) == n
    x0 = {}
    for i, node in enumerate(nodes):
        x0[node.cfg.node_id] = random_global_state(node, seed=10 + i)
        node.dual.set_global_state(x0[node.cfg.node_id])
    run_threads(nodes)

    graph = build_topology("ring", n)
    order = [nd.cfg.node_id for nd in nodes]
    pi = torch.tensor(sizes, dtype=torch.float64)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            if graph.has_edge(a, b):
                w[i, j] = min(1.0, sizes[j] / sizes[i]) / (1 + max(graph.degree[a], graph.degree[b]))
        w[i, i] = 1 - w[i].sum()
    torch.testing.assert_close(pi @ w, pi)  # detailed balance: pi is stationary
    wk = torch.linalg.matrix_power(w, rounds)
    for key in x0[order[0]]:
        stacked = torch.stack([x0[name][key].double() for name in order])
        expected = torch.einsum("ij,j...->i...", wk, stacked)
        got = torch.stack([nd.dual.global_state()[key].double() for nd in nodes])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        weighted_mean = torch.einsum("i,i...->...", pi / pi.sum(), stacked)
        torch.testing.assert_close(
            torch.einsum("i,i...->...", pi / pi.sum(), got), weighted_mean, atol=1e-5, rtol=0
        )
    assert [nd.sender.pi for nd in nodes] == sizes


def test_codec_falls_back_to_lossless_when_a_neighbour_cannot_decode_it(tmp_path):
    spec = tiny_spec(nodes=2, topology="complete", codec={"name": "fp16"}, gossip={"rounds": 1})
    prepared = prepared_memory(spec, tmp_path)
    net = MemoryNetwork()
    a, b = make_nodes(prepared, lambda: MemoryTransport(net))
    original = b.me

    def old_release():  # b advertises only lossless, as an older build would
        import dataclasses

        return dataclasses.replace(original(), codecs=("lossless",))

    b.me = old_release
    run_threads([a, b])
    assert read_metrics(tmp_path / "node0" / "metrics.jsonl")[-1]["codec"] == "lossless"
    assert read_metrics(tmp_path / "node1" / "metrics.jsonl")[-1]["codec"] == "fp16"


def test_a_node_that_fell_behind_catches_up_instead_of_holding_its_neighbours_back(tmp_path):
    """node2 joins at round 3 while the others cannot reach it (as during a gRPC reconnect backoff
    after a restart), so they run ahead past max_rounds_ahead. It must jump to their round; they
    must not wait out round_timeout_s for it.

    Driven by round events, not by timing: node0 and node1 hold before round 4 until node2 has
    joined, node2 holds its first round until they have completed round AHEAD, and they hold before
    round AHEAD + 1 until node2 is reachable."""
    ahead, rounds, timeout = 8, 12, 60.0
    spec = tiny_spec(
        nodes=3,
        topology="complete",
        gossip={"rounds": rounds, "round_timeout_s": timeout, "join_timeout_s": 1.0, "max_rounds_ahead": 2},
    )
    prepared = prepared_memory(spec, tmp_path)
    net = MemoryNetwork()
    nodes = make_nodes(prepared, lambda: MemoryTransport(net))
    lagger, others = nodes[2], nodes[:2]
    net.set_down(lagger.cfg.listen)
    at_round_4 = {n.cfg.node_id: threading.Event() for n in others}
    at_round_ahead = {n.cfg.node_id: threading.Event() for n in others}
    lagger_joined, lagger_up = threading.Event(), threading.Event()

    def hold_at(node: Node) -> None:
        run_round = node.run_round

        def held(t: int) -> dict:
            if t == 4:
                at_round_4[node.cfg.node_id].set()
                assert lagger_joined.wait(60)
            if t == ahead + 1:
                at_round_ahead[node.cfg.node_id].set()
                assert lagger_up.wait(60)
            return run_round(t)

        node.run_round = held  # type: ignore[method-assign]

    for node in others:
        hold_at(node)
    train = lagger.trainer.train_round
    first = [True]

    def first_round_after_the_others_ran_ahead() -> float:
        if first[0]:
            first[0] = False
            lagger_joined.set()
            assert all(e.wait(60) for e in at_round_ahead.values())
            net.set_down(lagger.cfg.listen, False)
            lagger_up.set()
        return train()

    lagger.trainer.train_round = first_round_after_the_others_ran_ahead  # type: ignore[method-assign]

    def start(node: Node) -> None:
        if node is lagger:  # joins a mesh already under way, at round 3
            assert all(e.wait(60) for e in at_round_4.values())
        node.run()

    run_threads(nodes, target=start)

    lag_rounds = [r["round"] for r in read_metrics(tmp_path / "node2" / "metrics.jsonl")]
    assert lag_rounds == [4, *range(ahead + 1, rounds + 1)], "node2 should jump from round 4 to the mesh's"
    for other in ("node0", "node1"):
        recs = read_metrics(tmp_path / other / "metrics.jsonl")
        assert [r["round"] for r in recs] == list(range(1, rounds + 1))
        assert max(r["transfer_s"] for r in recs) < timeout / 2, "a neighbour waited out the round deadline"
        assert "node2" in recs[-1]["neighbours_heard"]
