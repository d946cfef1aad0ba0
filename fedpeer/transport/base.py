"""The transport interface: what a node needs from the network, whatever carries it.

The node implements `MeshHandler` (the server side); a `Transport` serves it at an address and
makes the client calls to neighbours. gRPC (`GrpcTransport`) and in-memory (`MemoryTransport`)
transports behave the same; tests and in-process simulations use the latter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from fedpeer.errors import PeerUnavailable
from fedpeer.wire.frames import AckInfo, Frame, PeerInfo, StatusInfo

# Called with (peer, protobuf message) for every message this transport puts on the wire, just
# before it is sent. The privacy test uses it to inspect every byte that leaves a node.
Recorder = Callable[[str, Message], None]


class MeshHandler(Protocol):
    def authorized(self, node_id: str) -> bool:
        """Whether `node_id` (proven by its TLS certificate) may handshake, send and fetch here."""

    def check_header(self, header: Frame, payload_length: int) -> None:
        """Refuse (FrameRejected) a pushed frame from its header alone, before its payload is read."""

    def on_hello(self, peer: PeerInfo) -> PeerInfo:
        """Check a neighbour's handshake; return our own info or raise HandshakeError."""

    def on_frame(self, frame: Frame) -> AckInfo:
        """Validate and queue an update frame; raise FrameRejected to refuse it."""

    def on_snapshot_request(self, requester: str, max_round: int = 0) -> Frame:
        """Our public copy x_hat as a snapshot frame (for a neighbour that must resync)."""

    def on_status(self) -> StatusInfo: ...


@dataclass(frozen=True)
class SendResult:
    ack: AckInfo
    wire_bytes: int


class Transport(ABC):
    recorder: Recorder | None = None

    @abstractmethod
    def serve(self, address: str, handler: MeshHandler) -> str:
        """Start serving `handler`; returns the bound address (port 0 picks a free port)."""

    def expect(self, address: str, node_id: str) -> None:  # noqa: B027  (optional hook)
        """The node at `address` is neighbour `node_id`: a transport that authenticates (TLS)
        refuses to talk to anything else there."""

    @abstractmethod
    def hello(self, address: str, me: PeerInfo, timeout: float) -> PeerInfo:
        """Handshake; raises HandshakeError if refused, PeerUnavailable if unreachable."""

    @abstractmethod
    def send_frame(self, address: str, frame: Frame, timeout: float) -> SendResult:
        """Stream one frame; raises PeerUnavailable (unreachable, deadline) or FrameRejected."""

    @abstractmethod
    def fetch_snapshot(
        self, address: str, requester: str, timeout: float, max_payload: int, max_round: int = 0
    ) -> Frame:
        """Pull a neighbour's public copy; raises PeerUnavailable or FrameRejected."""

    @abstractmethod
    def status(self, address: str, timeout: float) -> StatusInfo: ...

    def alive(self, address: str, timeout: float) -> bool:
        """Whether a node answers at `address` within `timeout` (failure detection while a round
        waits: a dead or hung neighbour stops answering, a slow one does not)."""
        try:
            self.status(address, timeout)
        except PeerUnavailable:
            return False
        return True

    @abstractmethod
    def close(self) -> None: ...
