"""The local adapter never leaves the site: every message of a real gRPC mesh is inspected."""

import struct
import threading
from collections import defaultdict

import torch

from fedpeer.codec import DecodeLimits, get_codec
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.scenario.runner import free_loopback_addresses
from fedpeer.scenario.spec import node_names, prepare
from fedpeer.tensors import TensorSpec, manifest_digest, manifest_of
from fedpeer.transport.grpc_transport import GrpcTransport
from fedpeer.wire import serde
from fedpeer.wire.frames import FrameKind, encode_frame
from tests.meshutil import make_nodes, random_global_state, run_threads, tiny_spec

# Distinctive values: large for B_l (exact in fp16), tiny for A_l, so B_l @ A_l ~ 1e-27 leaves
# training intact.
CANARY_B, CANARY_A = 1234.0, 1.5e-30
PATTERNS = [struct.pack("<4f", *[c] * 4) for c in (CANARY_B, CANARY_A)] + [
    torch.full((4,), CANARY_B, dtype=dt).numpy().tobytes()
    if dt != torch.bfloat16
    else torch.full((4,), CANARY_B, dtype=dt).view(torch.int16).numpy().tobytes()
    for dt in (torch.float16, torch.bfloat16)
]


def leaks(raw: bytes) -> bool:
    return any(p in raw for p in PATTERNS)


def frame_leaks(frame, specs) -> bool:
    """Scan a frame: its manifest digest must be that of `specs`, the global adapter's tensors (so
    no other tensor travels, nor its name), and its payload decoded (as bytes and as values)."""
    if frame.manifest_digest != manifest_digest(specs):
        return True
    tensors = get_codec(frame.codec).decode(frame.payload, specs, frame.codec_params, DecodeLimits())
    for t in tensors.values():
        # Values within a bf16 step of the canary count too: a lossy codec must not hide a leak.
        near = ((t - CANARY_B).abs() < 8).any() or (t == torch.tensor(CANARY_A)).any()
        if leaks(t.numpy().tobytes()) or near:
            return True
    return False


def scan(records):
    """Every recorded message: raw bytes, and frames reassembled per (node, peer) stream."""
    frames, messages = [], 0
    for (_, _), msgs in records.items():
        pending = []
        for m in msgs:
            messages += 1
            assert not leaks(m.SerializeToString()), f"canary bytes in a {type(m).__name__}"
            if isinstance(m, pb.Chunk):
                if m.WhichOneof("body") == "header" and pending:
                    frames.append(serde.read_frame(iter(pending), 1 << 30))
                    pending = []
                pending.append(m)
        if pending:
            frames.append(serde.read_frame(iter(pending), 1 << 30))
    return frames, messages


def test_scanner_finds_a_canary_when_there_is_one():
    """Positive control: the same scan flags a frame that carries the canary, with either codec."""
    for codec in ("lossless", "fp16"):
        t = {"m.lora_B.global.weight": torch.full((8, 4), CANARY_B)}
        frame = encode_frame(
            t, get_codec(codec), sender="a", epoch="e", kind=FrameKind.UPDATE, round=1, seq=1
        )
        assert frame_leaks(frame, manifest_of(t)), codec
    named = encode_frame(
        {"m.lora_B.local.weight": torch.ones(2, 2)},
        get_codec("lossless"),
        sender="a",
        epoch="e",
        kind=FrameKind.UPDATE,
        round=1,
        seq=1,
    )
    assert frame_leaks(named, [TensorSpec("m.lora_B.global.weight", (2, 2))])


def test_local_adapter_never_enters_a_message(tmp_path):
    spec = tiny_spec(nodes=3, topology="complete", gossip={"rounds": 3}, train={"steps_per_round": 2})
    prepared = prepare(spec, tmp_path, free_loopback_addresses(node_names(spec)))
    records = defaultdict(list)
    lock = threading.Lock()

    def recorder_for(node_id):
        def record(peer, msg):
            with lock:
                records[(node_id, peer)].append(msg)

        return record

    nodes = make_nodes(prepared, lambda: GrpcTransport())
    for i, node in enumerate(nodes):
        node.transport.recorder = recorder_for(node.cfg.node_id)
        node.dual.set_global_state(random_global_state(node, seed=i))
        canary = {
            k: torch.full_like(v, CANARY_B if "lora_B" in k else CANARY_A)
            for k, v in node.dual.local_state().items()
        }
        assert canary, "the local adapter is empty"
        node.dual.set_local_state(canary)
        train = node.trainer.train_round

        def train_then_refill(train=train, node=node, canary=canary):
            loss = train()  # the local adapter trains too; refill so every send sees the canary
            node.dual.set_local_state(canary)
            return loss

        node.trainer.train_round = train_then_refill
    run_threads(nodes)

    frames, messages = scan(records)
    updates = [f for f in frames if f.kind == FrameKind.UPDATE]
    assert len(updates) == 3 * 2 * 3, "every node sends one update per neighbour per round"
    assert messages > len(frames)
    specs = nodes[0].dual.global_specs()
    assert not any(".local" in s.name for s in specs)
    for f in frames:
        assert not frame_leaks(f, specs)
    # The run moved real numbers: global updates were non-zero.
    assert any(
        get_codec(f.codec).decode(f.payload, specs, f.codec_params, DecodeLimits())[specs[0].name].abs().sum()
        > 0
        for f in updates
    )
