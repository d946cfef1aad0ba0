"""What a node's transport threads call (the `MeshHandler`): hello, frame, snapshot, status.

Thin: each handler checks, decodes and hands over to the node's state objects (the peer table, the
public copies, the sender state); the round loop never waits on these threads except through the
public copies' condition variable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpeer.codec import available_codecs
from fedpeer.errors import FrameRejected, HandshakeError
from fedpeer.tensors import StateView
from fedpeer.wire.frames import (
    AckInfo,
    Frame,
    FrameKind,
    NeighbourInfo,
    PeerInfo,
    StatusInfo,
    check_manifest,
    decode_frame,
    encode_frame,
)

if TYPE_CHECKING:
    from fedpeer.node.loop import Node

log = logging.getLogger("fedpeer.node")


@dataclass
class RoundIO:
    """What transport threads measured for frames of one round."""

    decode_s: float = 0.0
    bytes_received: int = 0
    frames_rejected: int = 0


class IoCounters:
    """Per-round receive counters, filled by transport threads and taken by the round loop."""

    def __init__(self) -> None:
        self._io: dict[int, RoundIO] = defaultdict(RoundIO)
        self._lock = threading.Lock()

    def count(self, round: int, decode_s: float = 0.0, bytes_received: int = 0, rejected: int = 0) -> None:
        with self._lock:
            io = self._io[round]
            io.decode_s += decode_s
            io.bytes_received += bytes_received
            io.frames_rejected += rejected

    def take(self, round: int) -> RoundIO:
        """Round `round`'s counters, plus the late frames of earlier rounds (counted now)."""
        with self._lock:
            io = self._io.pop(round, RoundIO())
            for old in [r for r in self._io if r < round]:
                late = self._io.pop(old)
                io.bytes_received += late.bytes_received
                io.decode_s += late.decode_s
            return io


class NodeService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._refusals_logged: set[tuple[str, str]] = set()

    def authorized(self, node_id: str) -> bool:
        return node_id in self.node.neighbours.peers

    def check_header(self, header: Frame, payload_length: int) -> None:
        """Refuse a pushed frame from its header, before any payload byte is buffered: only a
        neighbour's update of a round of this run, of this model's tensors, within the bound."""
        node = self.node
        if header.kind != FrameKind.UPDATE:
            raise FrameRejected(f"only update frames are pushed, got {header.kind.value}")
        if header.sender not in node.neighbours.peers:
            raise FrameRejected(f"{header.sender!r} is not a neighbour of {node.cfg.node_id}")
        if not 1 <= header.round <= node.cfg.gossip.rounds:
            raise FrameRejected(
                f"round {header.round} is not a round of this run (1..{node.cfg.gossip.rounds})"
            )
        if payload_length > node.payload_bound:
            raise FrameRejected(
                f"declared payload of {payload_length} bytes exceeds {node.payload_bound}, the most an "
                "update of this model can need"
            )
        check_manifest(header.manifest_digest, node.specs)

    def on_hello(self, peer: PeerInfo) -> PeerInfo:
        node = self.node
        try:
            node.neighbours.check_peer(peer)
        except HandshakeError as exc:
            key = (peer.node_id, str(exc))  # a refused peer retries twice a second: log it once
            if key not in self._refusals_logged:
                self._refusals_logged.add(key)
                log.error("%s: refused handshake from %s: %s", node.cfg.node_id, peer.node_id or "?", exc)
            raise
        log.info(
            "%s: handshake from %s (round %d, epoch %s)",
            node.cfg.node_id,
            peer.node_id,
            peer.round,
            peer.epoch,
        )
        return node.me()

    def on_frame(self, frame: Frame) -> AckInfo:
        """Decode and queue a frame whose header `check_header` admitted (every transport calls it
        first, before the payload is read)."""
        node = self.node
        t0 = time.perf_counter()
        try:
            q = decode_frame(frame, node.specs, node.limits, available_codecs())
            applied = node.copies.offer(
                frame.sender,
                frame.epoch,
                frame.round,
                frame.seq,
                {k: v.to(node.device) for k, v in q.items()},
                mix_weight=frame.mix_weight,
            )
        except FrameRejected:
            node.io.count(frame.round, rejected=1)
            raise
        node.io.count(frame.round, decode_s=time.perf_counter() - t0, bytes_received=frame.wire_bytes)
        return AckInfo(accepted=True, error="", applied_seq=applied)

    def on_snapshot_request(self, requester: str, max_round: int = 0) -> Frame:
        node = self.node

        def encode(x_hat: StateView, round: int, seq: int, pi: float) -> Frame:
            return encode_frame(
                x_hat,
                node.snapshot_codec,
                sender=node.cfg.node_id,
                epoch=node.sender.epoch,
                kind=FrameKind.SNAPSHOT,
                round=round,
                seq=seq,
                mix_weight=pi,
            )

        return node.sender.snapshot(encode, max_round)

    def on_status(self) -> StatusInfo:
        node = self.node
        nbrs = tuple(
            NeighbourInfo(
                node_id=j,
                address=p.address,
                connected=p.info is not None and p.reachable,
                last_round_heard=node.copies.copies[j].last_round,
                applied_seq=node.copies.copies[j].applied_seq,
            )
            for j, p in node.neighbours.peers.items()
        )
        return StatusInfo(
            node=node.me(),
            phase=node.phase,
            rounds_total=node.cfg.gossip.rounds,
            neighbours=nbrs,
            last_train_loss=node.last_loss,
            consensus_distance=node.last_distance,
            privacy_epsilon=node.privacy.epsilon(node.sender.seq)
            if node.privacy and node.sender.seq
            else 0.0,
            privacy_delta=node.privacy.delta if node.privacy else 0.0,
        )
