"""Protobuf <-> domain round trips and chunk-stream validation (untrusted input)."""

import zlib

import pytest

from fedpeer.errors import FrameRejected
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.tensors import TensorSpec, manifest_digest
from fedpeer.wire import serde
from fedpeer.wire.frames import CHUNK_BYTES, AckInfo, Frame, FrameKind, NeighbourInfo, PeerInfo, StatusInfo


def make_frame(payload: bytes = b"x" * 10, **kw) -> Frame:
    base = dict(
        sender="a",
        epoch="e1",
        kind=FrameKind.UPDATE,
        round=3,
        seq=7,
        codec="lossless",
        codec_params={"zstd_level": "3"},
        manifest_digest=manifest_digest([TensorSpec("w", (2, 3))]),
        payload=payload,
        raw_bytes=24,
    )
    base.update(kw)
    return Frame(**base)


PEER = PeerInfo(
    node_id="n1",
    protocol_version=1,
    fingerprint="abc",
    fingerprint_fields={"rank": "8"},
    codecs=("fp16", "lossless"),
    round=4,
    degree=2,
    epoch="ep",
    address="127.0.0.1:1",
)


def test_peer_info_round_trip():
    assert (
        serde.peer_info_from_proto(pb.Hello.FromString(serde.peer_info_to_proto(PEER).SerializeToString()))
        == PEER
    )


def test_ack_and_status_round_trip():
    ack = AckInfo(accepted=False, error="replay", applied_seq=5)
    assert serde.ack_from_proto(serde.ack_to_proto(ack)) == ack
    st = StatusInfo(
        node=PEER,
        phase="training",
        rounds_total=10,
        neighbours=(NeighbourInfo("n2", "h:2", True, 3, 3),),
        last_train_loss=1.5,
        consensus_distance=0.25,
    )
    assert (
        serde.status_from_proto(pb.StatusReply.FromString(serde.status_to_proto(st).SerializeToString()))
        == st
    )


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES, CHUNK_BYTES + 1, 3 * CHUNK_BYTES + 17])
def test_frame_chunking_round_trip(size):
    f = make_frame(payload=bytes(range(256)) * (size // 256) + b"z" * (size % 256))
    chunks = list(serde.frame_to_chunks(f))
    assert all(len(c.data) <= CHUNK_BYTES for c in chunks[1:])
    assert len(chunks) == 1 + -(-size // CHUNK_BYTES)
    back = serde.read_frame(iter(chunks), max_payload=1 << 30)
    assert back == f and back.crc32 == zlib.crc32(f.payload)
    assert back.wire_bytes == sum(c.ByteSize() for c in chunks)


def test_two_frames_on_one_stream():
    a, b = make_frame(seq=1), make_frame(seq=2, payload=b"yy")
    it = serde.frames_to_chunks([a, b])
    assert serde.read_frame(it, 1 << 20) == a
    assert serde.read_frame(it, 1 << 20) == b
    assert serde.read_frame(it, 1 << 20) is None


def _header(**kw) -> pb.Chunk:
    return pb.Chunk(header=serde.header_to_proto(make_frame(**kw)))


BAD_STREAMS = {
    "data before header": [pb.Chunk(data=b"abc")],
    "truncated payload": [_header(payload=b"x" * 100), pb.Chunk(data=b"x" * 50)],
    "overrun": [_header(payload=b"x" * 10), pb.Chunk(data=b"x" * 11)],
    "header inside payload": [_header(payload=b"x" * 10), _header()],
    "nan mix weight": [_header(mix_weight=float("nan")), pb.Chunk(data=b"x" * 10)],
    "zero mix weight": [_header(mix_weight=0.0), pb.Chunk(data=b"x" * 10)],
    "oversized chunk": [_header(payload=b"x" * (CHUNK_BYTES + 2)), pb.Chunk(data=b"x" * (CHUNK_BYTES + 1))],
}


@pytest.mark.parametrize("name", sorted(BAD_STREAMS))
def test_malformed_streams_are_rejected(name):
    with pytest.raises(FrameRejected):
        serde.read_frame(iter(BAD_STREAMS[name]), max_payload=1 << 30)


def test_declared_payload_over_bound_is_rejected_before_reading():
    def chunks():
        yield _header(payload=b"x" * 1000)
        raise AssertionError("payload must not be read")

    with pytest.raises(FrameRejected, match="exceeds"):
        serde.read_frame(chunks(), max_payload=999)


def test_the_header_carries_a_16_byte_digest_not_the_manifest():
    """Protocol v2: 16 bytes name the tensors, where v1 spent a few hundred on their specs."""
    specs = [
        TensorSpec(f"base.encoder.layer.{i}.attention.self.query.lora_B.global.weight", (384, 8))
        for i in range(6)
    ]
    digest = manifest_digest(specs)
    assert len(digest) == 16 and manifest_digest(list(specs)) == digest
    assert manifest_digest(specs[::-1]) != digest and manifest_digest(specs[:-1]) != digest
    assert manifest_digest([TensorSpec("ab", (1,)), TensorSpec("c", (1,))]) != manifest_digest(
        [TensorSpec("a", (1,)), TensorSpec("bc", (1,))]
    )
    assert manifest_digest([TensorSpec("w", (2, 3))]) != manifest_digest([TensorSpec("w", (3, 2))])
    h = _header(manifest_digest=digest)
    assert h.header.manifest_digest == digest and h.ByteSize() < 100
