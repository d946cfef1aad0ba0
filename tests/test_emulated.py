"""Link emulation in the transport: cut, partition, slow, loss by round, and a partition that heals."""

import time

import pytest
import torch

from fedpeer.config import LinkConfig
from fedpeer.errors import ConfigError, PeerUnavailable
from fedpeer.gossip.topology import build_topology
from fedpeer.gossip.weights import metropolis_hastings
from fedpeer.metrics import read_metrics
from fedpeer.node import Node, build_node
from fedpeer.transport.emulated import EmulatedTransport, emulate_links, link_state, wire_size
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from fedpeer.wire.frames import AckInfo, Frame, FrameKind, PeerInfo
from tests.meshutil import prepared_memory, random_global_state, run_threads, tiny_spec


def frame(rnd: int, sender: str = "a", payload: bytes = b"x" * 100) -> Frame:
    return Frame(
        sender=sender,
        epoch="e",
        kind=FrameKind.UPDATE,
        round=rnd,
        seq=rnd,
        codec="lossless",
        codec_params={},
        manifest_digest=b"",
        payload=payload,
        raw_bytes=len(payload),
    )


def info(node: str, rnd: int = 0) -> PeerInfo:
    return PeerInfo(node, 1, "fp", {}, ("lossless",), rnd, 1, "e", f"mem-{node}:1")


class Recorder:
    """A MeshHandler that accepts everything and remembers what reached it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[int] = []

    def authorized(self, node_id: str) -> bool:
        return True

    def check_header(self, header: Frame, payload_length: int) -> None:
        pass

    def on_hello(self, peer: PeerInfo) -> PeerInfo:
        return info(self.name)

    def on_frame(self, f: Frame) -> AckInfo:
        self.frames.append(f.round)
        return AckInfo(accepted=True, error="", applied_seq=f.seq)

    def on_snapshot_request(self, requester: str, max_round: int = 0) -> Frame:
        return frame(0, sender=self.name)

    def on_status(self):  # not used here
        raise NotImplementedError


def pair(links_a=(), links_b=(), seed=None):
    """Nodes a and b on one in-memory network, each behind its own emulated links."""
    net = MemoryNetwork()
    ta = EmulatedTransport(MemoryTransport(net), "a", links_a, {"mem-b:1": "b"}, seed=seed)
    tb = EmulatedTransport(MemoryTransport(net), "b", links_b, {"mem-a:1": "a"}, seed=seed)
    ha, hb = Recorder("a"), Recorder("b")
    ta.serve("mem-a:1", ha)
    tb.serve("mem-b:1", hb)
    return ta, tb, ha, hb


@pytest.mark.parametrize(
    "links,rnd,expected",
    [
        ([], 5, dict(cut=False, delay_s=0.0, loss=0.0, bits_per_s=0.0)),
        ([LinkConfig("b", 2, 4, cut=True)], 1, dict(cut=False)),
        ([LinkConfig("b", 2, 4, cut=True)], 2, dict(cut=True)),
        ([LinkConfig("b", 2, 4, cut=True)], 4, dict(cut=True)),
        ([LinkConfig("b", 2, 4, cut=True)], 5, dict(cut=False)),  # healed after to_round
        ([LinkConfig("b", 3, 0, cut=True)], 99, dict(cut=True)),  # to_round 0: until the end
        ([LinkConfig("b", 1, 0, delay_ms=20), LinkConfig("b", 1, 0, delay_ms=30)], 1, dict(delay_s=0.05)),
        ([LinkConfig("b", 1, 0, loss=0.5), LinkConfig("b", 1, 0, loss=0.5)], 1, dict(loss=0.75)),
        (
            [LinkConfig("b", 1, 0, bandwidth_mbit=10), LinkConfig("b", 2, 2, bandwidth_mbit=1)],
            2,
            dict(bits_per_s=1e6),
        ),
    ],
)
def test_link_state_combines_the_active_settings(links, rnd, expected):
    st = link_state(links, rnd)
    for k, v in expected.items():
        assert getattr(st, k) == pytest.approx(v), k


def test_cut_link_fails_sends_both_ways_in_its_rounds_only():
    cut = [LinkConfig("b", 2, 3, cut=True)]
    ta, tb, ha, hb = pair(cut, [LinkConfig("a", 2, 3, cut=True)])
    for rnd in (1, 2, 3, 4):
        for t, to in ((ta, "mem-b:1"), (tb, "mem-a:1")):
            if rnd in (2, 3):
                with pytest.raises(PeerUnavailable, match="is cut in round"):
                    t.send_frame(to, frame(rnd), timeout=5)
            else:
                assert t.send_frame(to, frame(rnd), timeout=5).ack.accepted
    assert ha.frames == [1, 4] and hb.frames == [1, 4]


def test_cut_refuses_inbound_frames_hellos_and_snapshots_from_the_peer():
    """Only b knows of the cut: a's calls still reach b's transport, which refuses them."""
    ta, tb, ha, hb = pair([], [LinkConfig("a", 2, 2, cut=True)])
    ack = ta.send_frame("mem-b:1", frame(2), timeout=5)
    assert not ack.ack.accepted and "is cut in round 2" in ack.ack.error
    assert ta.send_frame("mem-b:1", frame(3), timeout=5).ack.accepted
    assert hb.frames == [3]
    with pytest.raises(PeerUnavailable, match="is cut"):
        ta.hello("mem-b:1", info("a", rnd=1), timeout=5)  # opens round 2
    assert ta.hello("mem-b:1", info("a", rnd=2), timeout=5).node_id == "b"
    tb.round = 2  # b sent its round-2 update: a snapshot request now falls in round 2
    with pytest.raises(PeerUnavailable, match="is cut"):
        ta.fetch_snapshot("mem-b:1", "a", timeout=5, max_payload=1 << 20)


def test_handshake_round_is_the_one_it_opens():
    ta, *_ = pair([LinkConfig("b", 1, 1, cut=True)])
    with pytest.raises(PeerUnavailable):
        ta.hello("mem-b:1", info("a", rnd=0), timeout=5)  # joining: round 1
    assert ta.hello("mem-b:1", info("a", rnd=1), timeout=5).node_id == "b"


def test_loss_drops_whole_frames_with_a_seeded_rng():
    def delivered(seed: int) -> list[int]:
        ta, _, _, hb = pair([LinkConfig("b", 1, 0, loss=0.3)], seed=seed)
        for rnd in range(1, 201):
            try:
                ta.send_frame("mem-b:1", frame(rnd), timeout=5)
            except PeerUnavailable as exc:
                assert "lost" in str(exc)
        return hb.frames

    first = delivered(seed=7)
    assert first == delivered(seed=7)  # the same frames are lost on a rerun
    assert 0.6 < len(first) / 200 < 0.8


def test_slow_link_waits_delay_plus_bytes_over_bandwidth():
    payload = b"x" * 50_000
    ta, *_ = pair([LinkConfig("b", 1, 0, delay_ms=50, bandwidth_mbit=4.0)])
    t0 = time.perf_counter()
    ta.send_frame("mem-b:1", frame(1, payload=payload), timeout=5)
    took = time.perf_counter() - t0
    expected = 0.05 + wire_size(frame(1, payload=payload)) * 8 / 4e6  # ~0.15 s
    assert expected <= took < expected + 0.1


def test_a_link_slower_than_the_deadline_fails_like_a_timeout():
    ta, *_ = pair([LinkConfig("b", 1, 0, bandwidth_mbit=0.01)])
    with pytest.raises(PeerUnavailable, match="DEADLINE_EXCEEDED"):
        ta.send_frame("mem-b:1", frame(1, payload=b"x" * 10_000), timeout=0.2)


# ---------------------------------------------------------------- scenario faults -> node links
def test_prepare_puts_link_faults_on_both_ends(tmp_path):
    spec = tiny_spec(
        nodes=4,
        faults=[
            {"kind": "cut", "link": ["node0", "node1"], "from_round": 2, "to_round": 3},
            {"kind": "slow", "link": ["node2", "node1"], "delay_ms": 5.0, "bandwidth_mbit": 10.0},
            {"kind": "partition", "groups": [["node0", "node1"]], "from_round": 5, "to_round": 6},
        ],
    )
    cfgs = {c.node_id: c for c in prepared_memory(spec, tmp_path).nodes}
    links = {
        n: sorted((lk.peer, lk.from_round, lk.cut, lk.delay_ms) for lk in c.links) for n, c in cfgs.items()
    }
    # ring 0-1-2-3-0; the partition {0,1} | {2,3} cuts 1-2 and 3-0.
    assert links["node0"] == [("node1", 2, True, 0.0), ("node3", 5, True, 0.0)]
    assert links["node1"] == [("node0", 2, True, 0.0), ("node2", 1, False, 5.0), ("node2", 5, True, 0.0)]
    assert links["node2"] == [("node1", 1, False, 5.0), ("node1", 5, True, 0.0)]
    assert links["node3"] == [("node0", 5, True, 0.0)]


def test_netns_keeps_whole_run_bandwidth_for_the_kernel(tmp_path):
    from fedpeer.scenario.spec import node_names, prepare

    spec = tiny_spec(nodes=3, faults=[{"kind": "slow", "link": ["node0", "node1"], "bandwidth_mbit": 10.0}])
    addresses = {n: f"mem-{n}:1" for n in node_names(spec)}
    assert all(not c.links for c in prepare(spec, tmp_path, addresses, kernel_bandwidth=True).nodes)
    assert prepare(spec, tmp_path, addresses).nodes[0].links[0].bandwidth_mbit == 10.0


@pytest.mark.parametrize(
    "fault,message",
    [
        ({"kind": "flood"}, "kind must be one of"),
        ({"kind": "cut", "link": ["node0"]}, "link must be two different node names"),
        ({"kind": "partition"}, "groups must list"),
        ({"kind": "slow", "link": ["node0", "node1"]}, "needs delay_ms, loss or bandwidth_mbit"),
        ({"kind": "slow", "link": ["node0", "node1"], "loss": 1.5}, "loss must be in"),
        ({"kind": "cut", "link": ["node0", "node1"], "from_round": 4, "to_round": 2}, "to_round must be"),
    ],
)
def test_bad_faults_are_refused_with_the_field(fault, message):
    with pytest.raises(ConfigError, match=message):
        tiny_spec(faults=[fault])


@pytest.mark.parametrize(
    "fault,message",
    [
        ({"kind": "cut", "link": ["node0", "node2"]}, "is not a link of this topology"),
        ({"kind": "cut", "link": ["node0", "node9"]}, "'node9' is not a node"),
        ({"kind": "partition", "groups": [["node7"]]}, "'node7' is not a node"),
    ],
)
def test_faults_must_fit_the_topology(tmp_path, fault, message):
    with pytest.raises(ConfigError, match=message):
        prepared_memory(tiny_spec(nodes=4, faults=[fault]), tmp_path)


# ---------------------------------------------------------------- a partition that heals
def emulated_nodes(prepared) -> list[Node]:
    """Nodes over one in-memory network, each behind its scenario links (as run_inprocess does)."""
    net = MemoryNetwork()
    return [build_node(cfg, emulate_links(MemoryTransport(net), cfg)) for cfg in prepared.nodes]


def test_partition_heals_and_the_mesh_converges(tmp_path):
    """Ring of 4, split {node0,node1} | {node2,node3} in rounds 2-3. While split, the cross links
    carry nothing and each half mixes on its own; afterwards the nodes resync and the whole mesh
    converges to the common average (lr 0: pure gossip, the mesh mean is invariant)."""
    spec = tiny_spec(
        nodes=4,
        train={"lr": 0.0},
        gossip={"rounds": 12},
        faults=[{"kind": "partition", "groups": [["node0", "node1"]], "from_round": 2, "to_round": 3}],
    )
    nodes = emulated_nodes(prepared_memory(spec, tmp_path))
    x0 = {}
    for i, node in enumerate(nodes):
        x0[node.cfg.node_id] = random_global_state(node, seed=i)
        node.dual.set_global_state(x0[node.cfg.node_id])
    run_threads(nodes)

    recs = {n.cfg.node_id: read_metrics(tmp_path / n.cfg.node_id / "metrics.jsonl") for n in nodes}
    cross = {"node0": "node3", "node1": "node2", "node2": "node1", "node3": "node0"}
    for name, rs in recs.items():
        assert [r["round"] for r in rs] == list(range(1, 13))
        by_round = {r["round"]: r for r in rs}
        assert cross[name] in by_round[1]["neighbours_heard"]
        for rnd in (2, 3):
            assert cross[name] not in by_round[rnd]["neighbours_heard"], (name, rnd)
            assert cross[name] not in by_round[rnd]["neighbours_reached"], (name, rnd)
        # Healed: the cross neighbour is heard again and was resynced (it missed 2 updates).
        assert any(cross[name] in r["resynced"] for r in rs if r["round"] >= 4), name
        assert cross[name] in by_round[12]["neighbours_heard"]

    final = {n.cfg.node_id: n.dual.global_state() for n in nodes}
    for key in final["node0"]:
        mean0 = torch.stack([x0[n][key] for n in x0]).mean(0)
        spread0 = max((x0[n][key] - mean0).abs().max() for n in x0)
        for name in final:
            # Converged towards the mesh average; the spread has shrunk by well over 10x.
            assert (final[name][key] - mean0).abs().max() < 0.1 * spread0, (name, key)


def test_cut_rounds_follow_the_per_round_mixing_matrix(tmp_path):
    """While a link is cut its weight stays with each endpoint: x(t+1) = W_t x(t), exactly."""
    spec = tiny_spec(
        nodes=4,
        train={"lr": 0.0},
        gossip={"rounds": 3},
        faults=[{"kind": "cut", "link": ["node0", "node1"], "from_round": 2, "to_round": 3}],
    )
    nodes = emulated_nodes(prepared_memory(spec, tmp_path))
    order = [n.cfg.node_id for n in nodes]
    x0 = {}
    for i, node in enumerate(nodes):
        x0[node.cfg.node_id] = random_global_state(node, seed=i)
        node.dual.set_global_state(x0[node.cfg.node_id])
    run_threads(nodes)

    graph = build_topology("ring", 4)
    for key in x0[order[0]]:
        x = torch.stack([x0[n][key].double() for n in order])
        for rnd in (1, 2, 3):
            w = torch.zeros(4, 4, dtype=torch.float64)
            for a, b in graph.edges:
                if rnd >= 2 and {a, b} == {"node0", "node1"}:
                    continue
                i, j = order.index(a), order.index(b)
                w[i, j] = w[j, i] = metropolis_hastings(graph.degree[a], graph.degree[b])
            w += torch.diag(1.0 - w.sum(dim=1))
            x = torch.einsum("ij,j...->i...", w, x)
        for i, node in enumerate(nodes):
            torch.testing.assert_close(node.dual.global_state()[key].double(), x[i], atol=1e-5, rtol=0)
