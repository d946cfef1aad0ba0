"""Link emulation inside the transport: cut links, partitions, delay, loss and bandwidth caps, by round.

A scenario's link faults travel in each node's config (`NodeConfig.links`); this wrapper applies
them around any transport (gRPC, in-memory), so one fault schedule behaves the same for processes,
threads, network namespaces and containers, and needs no netem in the kernel.

The round of a call is the round it belongs to: `frame.round` for updates (sent and received), the
round a handshake opens (the sender's completed round + 1), and the last round this node sent for
snapshots. Both ends of a link carry the same settings, so a cut holds in both directions even
when one side is a round ahead.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from dataclasses import dataclass

from fedpeer.config import LinkConfig, NodeConfig
from fedpeer.errors import FrameRejected, PeerUnavailable
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.transport.base import MeshHandler, SendResult, Transport
from fedpeer.wire import serde
from fedpeer.wire.frames import AckInfo, Frame, PeerInfo, StatusInfo


@dataclass(frozen=True)
class LinkState:
    """What the link to one peer does in one round (all active LinkConfigs combined)."""

    cut: bool = False
    delay_s: float = 0.0
    loss: float = 0.0
    bits_per_s: float = 0.0  # 0 = unlimited

    def transfer_s(self, nbytes: int) -> float:
        return nbytes * 8 / self.bits_per_s if self.bits_per_s > 0 else 0.0


def link_state(links: list[LinkConfig], rnd: int) -> LinkState:
    """Combine the settings active in round `rnd`: any cut cuts, delays add, losses compound,
    the smallest bandwidth wins."""
    active = [link for link in links if link.active(rnd)]
    keep = 1.0
    for link in active:
        keep *= 1.0 - link.loss
    rates = [link.bandwidth_mbit * 1e6 for link in active if link.bandwidth_mbit > 0]
    return LinkState(
        cut=any(link.cut for link in active),
        delay_s=sum(link.delay_ms for link in active) / 1e3,
        loss=1.0 - keep,
        bits_per_s=min(rates, default=0.0),
    )


def wire_size(frame: Frame) -> int:
    """Bytes a frame takes on the wire: its header chunk plus the payload (chunk framing is noise)."""
    return pb.Chunk(header=serde.header_to_proto(frame)).ByteSize() + len(frame.payload)


class EmulatedTransport(Transport):
    """Wraps `inner`; calls to and from a peer follow that peer's LinkConfigs for the call's round."""

    def __init__(
        self,
        inner: Transport,
        node_id: str,
        links: tuple[LinkConfig, ...] | list[LinkConfig],
        peers: dict[str, str],
        seed: int | None = None,
    ) -> None:
        self.inner = inner
        self.node_id = node_id
        self.recorder = inner.recorder
        self.peers = dict(peers)  # address -> peer id
        self.links: dict[str, list[LinkConfig]] = {}
        for link in links:
            self.links.setdefault(link.peer, []).append(link)
        # Seeded per node, so a lossy scenario drops the same frames when run again.
        self._rng = random.Random(zlib.crc32(node_id.encode()) if seed is None else seed)
        self._rng_lock = threading.Lock()
        self.round = 0  # the last round this node sent an update for

    def state(self, peer: str, rnd: int) -> LinkState:
        return link_state(self.links.get(peer, []), rnd)

    def _peer(self, address: str) -> str:
        return self.peers.get(address, address)

    def _outbound(self, address: str, rnd: int, what: str, nbytes: int, timeout: float) -> None:
        """Refuse a call over a cut link; wait the link's delay and transfer time."""
        peer = self._peer(address)
        st = self.state(peer, rnd)
        if st.cut:
            raise PeerUnavailable(
                f"{what} to {peer} failed: link {self.node_id}-{peer} is cut in round {rnd}"
            )
        wait = st.delay_s + st.transfer_s(nbytes)
        time.sleep(min(wait, timeout))
        if wait > timeout:
            raise PeerUnavailable(
                f"{what} to {peer} failed: DEADLINE_EXCEEDED (the emulated link needs {wait:.1f} s)"
            )

    # --- server -------------------------------------------------------------------------------
    def serve(self, address: str, handler: MeshHandler) -> str:
        return self.inner.serve(address, _LinkFilter(handler, self))

    # --- client -------------------------------------------------------------------------------
    def expect(self, address: str, node_id: str) -> None:
        self.inner.expect(address, node_id)

    def hello(self, address: str, me: PeerInfo, timeout: float) -> PeerInfo:
        self._outbound(address, max(self.round, me.round + 1), "handshake", 0, timeout)
        return self.inner.hello(address, me, timeout)

    def send_frame(self, address: str, frame: Frame, timeout: float) -> SendResult:
        self.round = max(self.round, frame.round)
        peer = self._peer(address)
        st = self.state(peer, frame.round)
        if not st.cut and st.loss > 0:
            with self._rng_lock:
                lost = self._rng.random() < st.loss
            if lost:
                time.sleep(st.delay_s)
                raise PeerUnavailable(
                    f"update round {frame.round} to {peer} lost (emulated loss {st.loss:g})"
                )
        self._outbound(address, frame.round, f"update round {frame.round}", wire_size(frame), timeout)
        return self.inner.send_frame(address, frame, timeout)

    def fetch_snapshot(
        self, address: str, requester: str, timeout: float, max_payload: int, max_round: int = 0
    ) -> Frame:
        # The snapshot's bytes flow towards us: the peer's side waits for their transfer time.
        self._outbound(address, self.round, "snapshot request", 0, timeout)
        return self.inner.fetch_snapshot(address, requester, timeout, max_payload, max_round)

    def status(self, address: str, timeout: float) -> StatusInfo:
        return self.inner.status(address, timeout)  # operators' calls are not part of the mesh's links

    def close(self) -> None:
        self.inner.close()


class _LinkFilter:
    """The node's MeshHandler behind the emulated links: refuses what a cut link would not carry."""

    def __init__(self, handler: MeshHandler, em: EmulatedTransport) -> None:
        self.handler = handler
        self.em = em

    def _cut(self, peer: str, rnd: int) -> bool:
        return self.em.state(peer, rnd).cut

    def authorized(self, node_id: str) -> bool:
        return self.handler.authorized(node_id)

    def check_header(self, header: Frame, payload_length: int) -> None:
        self.handler.check_header(header, payload_length)

    def on_hello(self, peer: PeerInfo) -> PeerInfo:
        rnd = max(self.em.round, peer.round + 1)
        if self._cut(peer.node_id, rnd):
            raise PeerUnavailable(f"link {peer.node_id}-{self.em.node_id} is cut in round {rnd}")
        return self.handler.on_hello(peer)

    def on_frame(self, frame: Frame) -> AckInfo:
        if self._cut(frame.sender, frame.round):
            raise FrameRejected(f"link {frame.sender}-{self.em.node_id} is cut in round {frame.round}")
        return self.handler.on_frame(frame)

    def on_snapshot_request(self, requester: str, max_round: int = 0) -> Frame:
        rnd = self.em.round
        if self._cut(requester, rnd):
            raise PeerUnavailable(f"link {requester}-{self.em.node_id} is cut in round {rnd}")
        frame = self.handler.on_snapshot_request(requester, max_round)
        time.sleep(self.em.state(requester, rnd).transfer_s(wire_size(frame)))
        return frame

    def on_status(self) -> StatusInfo:
        return self.handler.on_status()


def emulate_links(inner: Transport, cfg: NodeConfig) -> Transport:
    """`inner` wrapped in the node's link emulation, or `inner` itself when it has none."""
    if not cfg.links:
        return inner
    return EmulatedTransport(inner, cfg.node_id, cfg.links, {p.address: p.id for p in cfg.neighbours})
