"""Protobuf <-> domain types. The only module besides the transports that imports generated code.

Paired `x_to_proto` / `x_from_proto` functions; each pair has a round-trip test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

from fedpeer.errors import FrameRejected
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.wire.frames import (
    CHUNK_BYTES,
    AckInfo,
    Frame,
    FrameKind,
    NeighbourInfo,
    PeerInfo,
    StatusInfo,
)

_KIND_TO_PB = {FrameKind.UPDATE: pb.FRAME_KIND_UPDATE, FrameKind.SNAPSHOT: pb.FRAME_KIND_SNAPSHOT}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}


def peer_info_to_proto(p: PeerInfo) -> pb.Hello:
    return pb.Hello(
        node_id=p.node_id,
        protocol_version=p.protocol_version,
        fingerprint=p.fingerprint,
        fingerprint_fields=p.fingerprint_fields,
        codecs=list(p.codecs),
        round=p.round,
        degree=p.degree,
        epoch=p.epoch,
        address=p.address,
    )


def peer_info_from_proto(m: pb.Hello) -> PeerInfo:
    return PeerInfo(
        node_id=m.node_id,
        protocol_version=m.protocol_version,
        fingerprint=m.fingerprint,
        fingerprint_fields=dict(m.fingerprint_fields),
        codecs=tuple(m.codecs),
        round=m.round,
        degree=m.degree,
        epoch=m.epoch,
        address=m.address,
    )


def ack_to_proto(a: AckInfo) -> pb.Ack:
    return pb.Ack(accepted=a.accepted, error=a.error, applied_seq=a.applied_seq)


def ack_from_proto(m: pb.Ack) -> AckInfo:
    return AckInfo(accepted=m.accepted, error=m.error, applied_seq=m.applied_seq)


def status_to_proto(s: StatusInfo) -> pb.StatusReply:
    return pb.StatusReply(
        node=peer_info_to_proto(s.node),
        phase=s.phase,
        rounds_total=s.rounds_total,
        neighbours=[
            pb.NeighbourStatus(
                node_id=n.node_id,
                address=n.address,
                connected=n.connected,
                last_round_heard=n.last_round_heard,
                applied_seq=n.applied_seq,
            )
            for n in s.neighbours
        ],
        last_train_loss=s.last_train_loss,
        consensus_distance=s.consensus_distance,
        privacy_epsilon=s.privacy_epsilon,
        privacy_delta=s.privacy_delta,
    )


def status_from_proto(m: pb.StatusReply) -> StatusInfo:
    return StatusInfo(
        node=peer_info_from_proto(m.node),
        phase=m.phase,
        rounds_total=m.rounds_total,
        neighbours=tuple(
            NeighbourInfo(
                node_id=n.node_id,
                address=n.address,
                connected=n.connected,
                last_round_heard=n.last_round_heard,
                applied_seq=n.applied_seq,
            )
            for n in m.neighbours
        ),
        last_train_loss=m.last_train_loss,
        consensus_distance=m.consensus_distance,
        privacy_epsilon=m.privacy_epsilon,
        privacy_delta=m.privacy_delta,
    )


def header_to_proto(f: Frame) -> pb.FrameHeader:
    return pb.FrameHeader(
        sender=f.sender,
        epoch=f.epoch,
        kind=_KIND_TO_PB[f.kind],
        round=f.round,
        seq=f.seq,
        codec=f.codec,
        codec_params=f.codec_params,
        manifest_digest=f.manifest_digest,
        payload_length=len(f.payload),
        payload_crc32=f.crc32,
        raw_bytes=f.raw_bytes,
        mix_weight=f.mix_weight,
    )


def frame_to_chunks(f: Frame, chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.Chunk]:
    """A header chunk, then the payload in slices of at most `chunk_bytes`."""
    yield pb.Chunk(header=header_to_proto(f))
    view = memoryview(f.payload)
    for start in range(0, len(view), chunk_bytes):
        yield pb.Chunk(data=bytes(view[start : start + chunk_bytes]))


def _check_header(h: pb.FrameHeader, max_payload: int) -> None:
    if h.kind not in _KIND_FROM_PB:
        raise FrameRejected(f"unknown frame kind {h.kind}")
    if h.payload_length > max_payload:
        raise FrameRejected(f"declared payload of {h.payload_length} bytes exceeds the bound {max_payload}")
    if not (math.isfinite(h.mix_weight) and h.mix_weight > 0):
        raise FrameRejected(f"mix_weight must be a positive finite number, got {h.mix_weight}")


# Called with a frame's header (as a Frame with an empty payload) and its declared payload length,
# before any payload byte is read; raises FrameRejected to refuse the frame.
Admit = Callable[[Frame, int], None]


def read_frame(chunks: Iterator[pb.Chunk], max_payload: int, admit: Admit | None = None) -> Frame | None:
    """Reassemble one frame from a chunk stream; None at a clean end of stream.

    The header is checked (and passed to `admit`) before any payload is buffered, and the buffer
    never grows past the declared length (itself bounded by `max_payload`).
    """
    first = next(chunks, None)
    if first is None:
        return None
    if first.WhichOneof("body") != "header":
        raise FrameRejected("stream must start each frame with a header chunk")
    h = first.header
    _check_header(h, max_payload)
    if admit is not None:
        admit(_frame(h, b"", 0), h.payload_length)
    buf = bytearray()
    wire = first.ByteSize()
    while len(buf) < h.payload_length:
        c = next(chunks, None)
        if c is None:
            raise FrameRejected(f"stream ended after {len(buf)} of {h.payload_length} payload bytes")
        if c.WhichOneof("body") != "data":
            raise FrameRejected("header chunk arrived before the previous payload was complete")
        if len(c.data) > CHUNK_BYTES or len(buf) + len(c.data) > h.payload_length:
            raise FrameRejected("payload chunk overruns the declared payload length")
        buf += c.data
        wire += c.ByteSize()
    return _frame(h, bytes(buf), wire)


def _frame(h: pb.FrameHeader, payload: bytes, wire: int) -> Frame:
    return Frame(
        sender=h.sender,
        epoch=h.epoch,
        kind=_KIND_FROM_PB[h.kind],
        round=h.round,
        seq=h.seq,
        codec=h.codec,
        codec_params=dict(h.codec_params),
        manifest_digest=bytes(h.manifest_digest),
        payload=payload,
        raw_bytes=h.raw_bytes,
        crc32=h.payload_crc32,
        wire_bytes=wire,
        mix_weight=h.mix_weight,
    )


def frames_to_chunks(frames: Iterable[Frame]) -> Iterator[pb.Chunk]:
    for f in frames:
        yield from frame_to_chunks(f)
