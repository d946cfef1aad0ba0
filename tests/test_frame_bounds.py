"""A node's own bounds on what neighbours' frames may do, whatever the transport: frames are judged
from their header before their payload is read, and a refused frame changes no state (no round jump
from a frame's claim: only from what the neighbour itself confirms)."""

import dataclasses
import threading

import pytest
import torch

from fedpeer.codec import DecodeLimits, get_codec
from fedpeer.errors import FrameRejected
from fedpeer.metrics import read_metrics
from fedpeer.node import Node
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from fedpeer.wire.frames import FrameKind, decode_frame, encode_frame, payload_bound
from tests.meshutil import make_nodes, prepared_memory, run_threads, tiny_spec


def spoof(node: Node, sender: str, round: int, seq: int = 1, scale: float = 1.0):
    """A well-formed update frame for `node`'s model, claiming to come from `sender`."""
    q = {k: torch.full_like(v, scale) for k, v in node.dual.global_state().items()}
    return encode_frame(
        q, get_codec("lossless"), sender=sender, epoch="x", kind=FrameKind.UPDATE, round=round, seq=seq
    )


@pytest.fixture
def pair(tmp_path):
    spec = tiny_spec(nodes=2, topology="ring", gossip={"rounds": 6, "max_rounds_ahead": 2}, train={"lr": 0.0})
    net = MemoryNetwork()
    nodes = make_nodes(prepared_memory(spec, tmp_path), lambda: MemoryTransport(net))
    return net, nodes


def test_headers_are_judged_before_the_payload(pair):
    _, (a, _) = pair
    ok = spoof(a, "node1", round=1)
    a.service.check_header(ok, len(ok.payload))
    with pytest.raises(FrameRejected, match="not a round of this run"):
        a.service.check_header(spoof(a, "node1", round=10**9), 10)
    with pytest.raises(FrameRejected, match="not a neighbour"):
        a.service.check_header(spoof(a, "stranger", round=1), 10)
    with pytest.raises(FrameRejected, match="the most an update of this model can need"):
        a.service.check_header(ok, 256 << 20)
    assert a.payload_bound == payload_bound(a.specs) < 4 << 20


def test_a_frame_of_other_tensors_is_refused_from_its_manifest_digest(pair):
    """The header carries the digest of the sender's manifest, not the manifest: a frame of tensors
    that differ in one name, one shape or their order is refused before its payload is read, and
    a sender of protocol v1 (no digest) is told to upgrade."""
    _, (a, _) = pair
    state = a.dual.global_state()
    first, *rest = state
    variants = {
        "renamed": {**{f"{first}.x": state[first]}, **{k: state[k] for k in rest}},
        "reshaped": {**state, first: torch.zeros(state[first].numel())},
        "reordered": {k: state[k] for k in [*rest, first]},
    }
    for tensors in variants.values():
        frame = encode_frame(
            tensors, get_codec("lossless"), sender="node1", epoch="x", kind=FrameKind.UPDATE, round=1, seq=1
        )
        with pytest.raises(FrameRejected, match="are not this model's global adapter"):
            a.service.check_header(frame, len(frame.payload))
        with pytest.raises(FrameRejected, match="are not this model's global adapter"):
            decode_frame(frame, a.specs, DecodeLimits(), ["lossless"])
    v1 = dataclasses.replace(spoof(a, "node1", round=1), manifest_digest=b"")
    with pytest.raises(FrameRejected, match="protocol v1"):
        a.service.check_header(v1, len(v1.payload))
    ok = spoof(a, "node1", round=1, scale=0.5)
    out = decode_frame(ok, a.specs, DecodeLimits(), ["lossless"])
    assert [*out] == [s.name for s in a.specs] and all(float(v.abs().max()) == 0.5 for v in out.values())


def test_a_frame_claiming_a_far_round_moves_nothing_unless_the_neighbour_confirms_it(pair):
    """A spoofed frame "from node1" for round 6 (inside the run, past max_rounds_ahead) reaches
    node0 before its round 2: it is refused, node0 asks node1, which is at round 1 or 2, and both
    nodes run all six rounds. A frame for round 10^9 is refused from its header alone."""
    net, (a, b) = pair
    attacker = MemoryTransport(net)
    injected = threading.Event()
    acks = []
    run_round = a.run_round

    def inject_before_round_2(t):
        if t == 2 and not injected.is_set():
            for rnd in (6, 10**9):
                acks.append(attacker.send_frame(a.cfg.listen, spoof(a, "node1", rnd, seq=99), 5).ack)
            injected.set()
        return run_round(t)

    a.run_round = inject_before_round_2  # type: ignore[method-assign]
    run_threads([a, b])
    assert injected.is_set() and not any(ack.accepted for ack in acks)
    assert "ahead" in acks[0].error and "not a round of this run" in acks[1].error
    for node in (a, b):
        assert [r["round"] for r in read_metrics(f"{node.cfg.state_dir}/metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    # lr 0 and nothing of the spoofed frames applied: the global adapters are still exactly equal.
    ga, gb = a.dual.global_state(), b.dual.global_state()
    assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_a_busy_neighbour_is_retried_not_lost(pair):
    """RESOURCE_EXHAUSTED (no stream slot free for us, e.g. while streams in our name stall there)
    means the neighbour is up: the send is retried, and the update reaches it in the same round."""
    from fedpeer.errors import PeerBusy

    _, (a, b) = pair
    send = a.transport.send_frame
    refusals = [2]

    def busy_twice(address, frame, timeout):
        if refusals[0]:
            refusals[0] -= 1
            raise PeerBusy(f"{address} is busy: try again later")
        return send(address, frame, timeout)

    a.transport.send_frame = busy_twice  # type: ignore[method-assign]
    run_threads([a, b])
    assert refusals == [0]
    recs = read_metrics(f"{a.cfg.state_dir}/metrics.jsonl")
    assert all(r["neighbours_reached"] == ["node1"] for r in recs), [r["neighbours_reached"] for r in recs]
    assert all(r["neighbours_heard"] == ["node0"] for r in read_metrics(f"{b.cfg.state_dir}/metrics.jsonl"))
