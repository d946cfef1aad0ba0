"""Frames as the node sees them (no protobuf here): tensors <-> encoded frames, with validation.

`encode_frame` runs the codec on the sender; `decode_frame` checks a peer's frame against the tensor
specs of the local model *before* the codec allocates anything, then decodes against those specs.
A frame names its tensors by the digest of their manifest (`fedpeer.tensors.manifest_digest`), not
by the manifest itself: the receiver already has it, and only needs to know the sender's is the same.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from fedpeer.codec import Codec, DecodeLimits, get_codec
from fedpeer.errors import CodecError, FrameRejected
from fedpeer.tensors import MANIFEST_DIGEST_BYTES, TensorSpec, manifest_digest, manifest_of

# Largest payload chunk on the wire: well under gRPC's default 4 MiB message limit.
CHUNK_BYTES = 1 << 20
# Slack over a frame's raw size: codec headers and zstd's worst-case expansion of incompressible data.
PAYLOAD_SLACK_BYTES = 1 << 20


def payload_bound(specs: Sequence[TensorSpec]) -> int:
    """Bytes a frame of these tensors can need with any codec: their fp32 size, twice (no codec
    sends more than its input, with room to spare), plus slack. A header that declares more is
    refused before a payload byte is read."""
    return 2 * 4 * sum(s.numel for s in specs) + PAYLOAD_SLACK_BYTES


class FrameKind(Enum):
    UPDATE = "update"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Frame:
    sender: str
    epoch: str
    kind: FrameKind
    round: int
    seq: int
    codec: str
    codec_params: dict[str, str]
    manifest_digest: bytes  # of the sender's manifest (`fedpeer.tensors.manifest_digest`)
    payload: bytes
    raw_bytes: int
    crc32: int = field(default=-1)
    # The sender's pi for data-aware mixing in this round (gossip.weighting); 1.0 when unused.
    mix_weight: float = 1.0
    # Bytes this frame took on the wire (protobuf chunks), filled in by the receiving transport.
    wire_bytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.crc32 == -1:
            object.__setattr__(self, "crc32", zlib.crc32(self.payload))


@dataclass(frozen=True)
class PeerInfo:
    """What a node says about itself in a handshake (and in status replies)."""

    node_id: str
    protocol_version: int
    fingerprint: str
    fingerprint_fields: dict[str, str]
    codecs: tuple[str, ...]
    round: int
    degree: int
    epoch: str
    address: str


@dataclass(frozen=True)
class AckInfo:
    accepted: bool
    error: str
    applied_seq: int


@dataclass(frozen=True)
class NeighbourInfo:
    node_id: str
    address: str
    connected: bool
    last_round_heard: int
    applied_seq: int


@dataclass(frozen=True)
class StatusInfo:
    node: PeerInfo
    phase: str
    rounds_total: int
    neighbours: tuple[NeighbourInfo, ...]
    last_train_loss: float
    consensus_distance: float
    # gossip.dp: epsilon spent so far at delta (0, 0 when DP is off)
    privacy_epsilon: float = 0.0
    privacy_delta: float = 0.0


def encode_frame(
    tensors: Mapping[str, torch.Tensor],
    codec: Codec,
    *,
    sender: str,
    epoch: str,
    kind: FrameKind,
    round: int,
    seq: int,
    mix_weight: float = 1.0,
) -> Frame:
    enc = codec.encode(tensors)
    return Frame(
        sender=sender,
        epoch=epoch,
        kind=kind,
        round=round,
        seq=seq,
        codec=codec.name,
        codec_params=dict(enc.params),
        manifest_digest=manifest_digest(manifest_of(tensors)),
        payload=enc.payload,
        raw_bytes=enc.raw_bytes,
        mix_weight=mix_weight,
    )


def check_manifest(digest: bytes, expected: Sequence[TensorSpec]) -> None:
    """Refuse a frame whose manifest digest is not that of the local model's global-adapter specs."""
    if len(digest) != MANIFEST_DIGEST_BYTES:
        raise FrameRejected(
            f"manifest digest has {len(digest)} bytes, expected {MANIFEST_DIGEST_BYTES} "
            "(a sender of protocol v1 sent the manifest itself: run the same fedpeer release on both sites)"
        )
    want = manifest_digest(expected)
    if digest != want:
        raise FrameRejected(
            f"the frame's tensors (manifest digest {digest.hex()[:12]}) are not this model's global "
            f"adapter ({want.hex()[:12]}, {len(expected)} tensors): the sites differ in model, LoRA "
            "targets, layers, rank or head (the handshake's fingerprint fields say which)"
        )


def decode_frame(
    frame: Frame, expected: Sequence[TensorSpec], limits: DecodeLimits, accepted_codecs: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Validate a peer's frame against the local specs, then decode it. Raises FrameRejected."""
    check_manifest(frame.manifest_digest, expected)
    if frame.codec not in accepted_codecs:
        raise FrameRejected(f"codec {frame.codec!r} is not accepted here ({', '.join(accepted_codecs)})")
    if zlib.crc32(frame.payload) != frame.crc32:
        raise FrameRejected("payload checksum mismatch (corrupted in transit)")
    try:
        return get_codec(frame.codec).decode(frame.payload, expected, frame.codec_params, limits)
    except CodecError as exc:
        raise FrameRejected(f"undecodable {frame.codec} payload: {exc}") from None
