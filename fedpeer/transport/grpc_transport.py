"""gRPC transport: the Mesh service (thin servicer over a MeshHandler) and its client calls."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

# gRPC's C core prints its own error lines (e.g. "Failed to add port") to stderr beside ours; fedpeer
# turns those errors into one readable line. GRPC_VERBOSITY=ERROR or DEBUG brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedpeer.errors import FrameRejected, HandshakeError, PeerUnavailable
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.proto.v1 import mesh_pb2_grpc as pb_grpc
from fedpeer.transport.base import MeshHandler, Recorder, SendResult, Transport
from fedpeer.transport.channel import SERVER_OPTIONS, SERVER_WORKERS, make_channel
from fedpeer.wire import serde
from fedpeer.wire.frames import AckInfo, Frame, PeerInfo, StatusInfo

log = logging.getLogger("fedpeer.transport")

SERVICE_NAME = "fedpeer.v1.Mesh"


class _Servicer(pb_grpc.MeshServicer):
    """Maps RPCs to the handler and domain errors to gRPC status codes; no logic of its own."""

    def __init__(self, handler: MeshHandler, max_payload: int, recorder: Recorder | None) -> None:
        self.handler = handler
        self.max_payload = max_payload
        self.recorder = recorder

    def _out(self, peer: str, msg: Any) -> Any:
        if self.recorder is not None:
            self.recorder(peer, msg)
        return msg

    def Handshake(self, request: pb.Hello, context: grpc.ServicerContext) -> pb.HelloReply:
        try:
            me = self.handler.on_hello(serde.peer_info_from_proto(request))
        except HandshakeError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return self._out(context.peer(), pb.HelloReply(node=serde.peer_info_to_proto(me)))

    def Exchange(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Ack]:
        while True:
            try:
                frame = serde.read_frame(request_iterator, self.max_payload)
            except FrameRejected as exc:
                log.warning("dropped a malformed stream from %s: %s", context.peer(), exc)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if frame is None:
                return
            try:
                ack = self.handler.on_frame(frame)
            except FrameRejected as exc:
                log.warning(
                    "dropped frame from %s (round %d, seq %d): %s", frame.sender, frame.round, frame.seq, exc
                )
                ack = AckInfo(accepted=False, error=str(exc), applied_seq=0)
            yield self._out(context.peer(), serde.ack_to_proto(ack))

    def GetSnapshot(self, request: pb.SnapshotRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        frame = self.handler.on_snapshot_request(request.requester, request.max_round)
        for chunk in serde.frame_to_chunks(frame):
            yield self._out(context.peer(), chunk)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        return serde.status_to_proto(self.handler.on_status())


def _map_error(exc: grpc.RpcError, address: str, what: str) -> Exception:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return HandshakeError(f"{address} refused the handshake: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return FrameRejected(f"{address} refused our {what}: {details}")
    if code == grpc.StatusCode.UNAVAILABLE and (
        "DNS resolution failed" in details or "errors resolving" in details
    ):
        host = address.rpartition(":")[0]
        return PeerUnavailable(f"the host name {host!r} does not resolve: check the neighbour's address")
    return PeerUnavailable(f"{what} to {address} failed: {code.name} {details}".strip())


class GrpcTransport(Transport):
    def __init__(self, max_payload: int = 1 << 30, recorder: Recorder | None = None) -> None:
        self.max_payload = max_payload
        self.recorder = recorder
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    # --- server -------------------------------------------------------------------------------
    def serve(self, address: str, handler: MeshHandler) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS), options=SERVER_OPTIONS)
        pb_grpc.add_MeshServicer_to_server(_Servicer(handler, self.max_payload, self.recorder), server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host, _, _ = address.rpartition(":")
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # grpc raises on a port in use (so_reuseport is off) or a foreign host
            port = 0
        if port == 0:
            raise PeerUnavailable(
                f"cannot listen on {address}: the port is in use, or the host is not an address of this "
                "machine; pick another `listen` address (or stop the process that holds the port)"
            )
        server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return f"{host}:{port}"

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if self._health is not None:
            for name in ("", SERVICE_NAME):
                self._health.set(name, status)

    # --- client -------------------------------------------------------------------------------
    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = make_channel(address)
        return ch

    def _stub(self, address: str) -> pb_grpc.MeshStub:
        return pb_grpc.MeshStub(self._channel(address))

    def _record(self, address: str, msg: Any) -> Any:
        if self.recorder is not None:
            self.recorder(address, msg)
        return msg

    def hello(self, address: str, me: PeerInfo, timeout: float) -> PeerInfo:
        try:
            reply = self._stub(address).Handshake(
                self._record(address, serde.peer_info_to_proto(me)), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise _map_error(exc, address, "handshake") from None
        return serde.peer_info_from_proto(reply.node)

    def send_frame(self, address: str, frame: Frame, timeout: float) -> SendResult:
        sent = 0

        def chunks() -> Iterator[pb.Chunk]:
            nonlocal sent
            for c in serde.frame_to_chunks(frame):
                sent += c.ByteSize()
                yield self._record(address, c)

        try:
            acks = self._stub(address).Exchange(chunks(), timeout=timeout)
            first = next(iter(acks), None)
        except grpc.RpcError as exc:
            raise _map_error(exc, address, f"update round {frame.round}") from None
        if first is None:
            raise PeerUnavailable(f"{address} closed the stream without acknowledging round {frame.round}")
        return SendResult(ack=serde.ack_from_proto(first), wire_bytes=sent)

    def fetch_snapshot(
        self, address: str, requester: str, timeout: float, max_payload: int, max_round: int = 0
    ) -> Frame:
        try:
            request = pb.SnapshotRequest(requester=requester, max_round=max_round)
            stream = self._stub(address).GetSnapshot(request, timeout=timeout)
            frame = serde.read_frame(iter(stream), max_payload)
        except grpc.RpcError as exc:
            raise _map_error(exc, address, "snapshot request") from None
        if frame is None:
            raise FrameRejected(f"{address} sent an empty snapshot stream")
        return frame

    def status(self, address: str, timeout: float) -> StatusInfo:
        try:
            reply = self._stub(address).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise _map_error(exc, address, "status request") from None
        return serde.status_from_proto(reply)

    def health(self, address: str, timeout: float) -> str:
        """The standard gRPC health status of `address` ("SERVING", "NOT_SERVING", ...)."""
        try:
            stub = health_pb2_grpc.HealthStub(self._channel(address))
            reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
        except grpc.RpcError as exc:
            raise _map_error(exc, address, "health check") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def alive(self, address: str, timeout: float) -> bool:
        """The standard health check answers SERVING (lighter than Status: no node state is read)."""
        try:
            return self.health(address, timeout) == "SERVING"
        except PeerUnavailable:
            return False

    def close(self) -> None:
        if self._server is not None:
            self.set_serving(False)
            self._server.stop(grace=1.0).wait()
            self._server = None
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
