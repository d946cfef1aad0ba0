"""In-memory transport: the same interface as gRPC, for tests and in-process simulations.

Messages still go through the protobuf serde (serialized and parsed), so byte counts, chunking
and validation match the real wire. A `MemoryNetwork` can mark addresses down to emulate failures.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from fedpeer.errors import FrameRejected, PeerUnavailable
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.transport.base import MeshHandler, Recorder, SendResult, Transport
from fedpeer.wire import serde
from fedpeer.wire.frames import AckInfo, Frame, PeerInfo, StatusInfo


class MemoryNetwork:
    """Address book shared by the in-memory transports of one simulation."""

    def __init__(self) -> None:
        self._handlers: dict[str, MeshHandler] = {}
        self._down: set[str] = set()
        self._lock = threading.Lock()
        self._next_port = 1

    def register(self, address: str, handler: MeshHandler) -> str:
        with self._lock:
            if address.endswith(":0"):
                address = f"{address[:-2]}:{self._next_port}"
                self._next_port += 1
            if address in self._handlers:
                raise PeerUnavailable(f"address {address} is already in use in this simulation")
            self._handlers[address] = handler
            return address

    def unregister(self, address: str) -> None:
        with self._lock:
            self._handlers.pop(address, None)

    def set_down(self, address: str, down: bool = True) -> None:
        with self._lock:
            (self._down.add if down else self._down.discard)(address)

    def handler(self, address: str) -> MeshHandler:
        with self._lock:
            h = self._handlers.get(address)
            if h is None or address in self._down:
                raise PeerUnavailable(f"{address} is unreachable")
            return h


def _wire(msg: Any) -> Any:
    """Serialize and parse, as the real wire would."""
    return type(msg).FromString(msg.SerializeToString())


class MemoryTransport(Transport):
    def __init__(
        self, network: MemoryNetwork, max_payload: int = 1 << 30, recorder: Recorder | None = None
    ) -> None:
        self.network = network
        self.max_payload = max_payload
        self.recorder = recorder
        self._address: str | None = None

    def serve(self, address: str, handler: MeshHandler) -> str:
        self._address = self.network.register(address, handler)
        return self._address

    def _record(self, address: str, msg: Any) -> Any:
        if self.recorder is not None:
            self.recorder(address, msg)
        return _wire(msg)

    def hello(self, address: str, me: PeerInfo, timeout: float) -> PeerInfo:
        request = self._record(address, serde.peer_info_to_proto(me))
        reply = self.network.handler(address).on_hello(serde.peer_info_from_proto(request))
        return serde.peer_info_from_proto(_wire(serde.peer_info_to_proto(reply)))

    def send_frame(self, address: str, frame: Frame, timeout: float) -> SendResult:
        handler = self.network.handler(address)
        chunks = [self._record(address, c) for c in serde.frame_to_chunks(frame)]
        try:
            received = serde.read_frame(iter(chunks), self.max_payload, handler.check_header)
            assert received is not None
            ack = handler.on_frame(received)
        except FrameRejected as exc:
            ack = AckInfo(accepted=False, error=str(exc), applied_seq=0)
        return SendResult(ack=ack, wire_bytes=sum(c.ByteSize() for c in chunks))

    def fetch_snapshot(
        self, address: str, requester: str, timeout: float, max_payload: int, max_round: int = 0
    ) -> Frame:
        frame = self.network.handler(address).on_snapshot_request(requester, max_round)
        chunks: Iterator[pb.Chunk] = (_wire(c) for c in serde.frame_to_chunks(frame))
        received = serde.read_frame(chunks, max_payload)
        if received is None:
            raise FrameRejected(f"{address} sent an empty snapshot")
        return received

    def status(self, address: str, timeout: float) -> StatusInfo:
        reply = self.network.handler(address).on_status()
        return serde.status_from_proto(_wire(serde.status_to_proto(reply)))

    def close(self) -> None:
        if self._address is not None:
            self.network.unregister(self._address)
            self._address = None
