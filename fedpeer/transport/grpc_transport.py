"""gRPC transport: the Mesh service (a servicer over a MeshHandler that authenticates callers and
bounds their streams) and its client calls, over mutual TLS or, when asked for, plaintext."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

# gRPC's C core prints its own error lines (e.g. "Failed to add port") to stderr beside ours; fedpeer
# turns those errors into one readable line. GRPC_VERBOSITY=ERROR or DEBUG brings them back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedpeer.errors import FrameRejected, HandshakeError, PeerBusy, PeerUnavailable
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.proto.v1 import mesh_pb2_grpc as pb_grpc
from fedpeer.security.tls import TlsIdentity, caller_identity, target_name
from fedpeer.transport.base import MeshHandler, Recorder, SendResult, Transport
from fedpeer.transport.channel import (
    MAX_CONCURRENT_RPCS,
    SERVER_OPTIONS,
    SERVER_WORKERS,
    STALL_S,
    STREAM_SLOTS,
    STREAMS_PER_PEER,
    make_channel,
)
from fedpeer.wire import serde
from fedpeer.wire.frames import AckInfo, Frame, PeerInfo, StatusInfo

log = logging.getLogger("fedpeer.transport")

SERVICE_NAME = "fedpeer.v1.Mesh"


class _StreamSlots:
    """Bounds on the update/snapshot streams in flight: all together (STREAM_SLOTS) and, with TLS,
    per authenticated peer (STREAMS_PER_PEER). Acquiring never blocks: over a bound, refuse."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total, self.per_peer = total, per_peer
        self._held: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self, peer: str | None) -> str:
        """Take a slot for `peer`: returns "" if one was free, else the reason it was refused."""
        with self._lock:
            if self._count >= self.total:
                return f"all {self.total} stream slots are busy"
            if peer is not None and self._held.get(peer, 0) >= self.per_peer:
                return f"{peer} already has {self.per_peer} streams open"
            self._count += 1
            if peer is not None:
                self._held[peer] = self._held.get(peer, 0) + 1
            return ""

    def release(self, peer: str | None) -> None:
        with self._lock:
            self._count -= 1
            if peer is not None:
                self._held[peer] -= 1


class _Watchdog:
    """Cuts streams whose sender stalls: one thread, a deadline per guarded stream."""

    def __init__(self) -> None:
        self._deadlines: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._cv = threading.Condition()
        self._next = 0
        self._closed = False
        self.fired: set[int] = set()  # tokens whose stream was cut
        threading.Thread(target=self._run, name="stream-watchdog", daemon=True).start()

    def arm(self, ctx: grpc.ServicerContext, seconds: float, token: int | None = None) -> int:
        with self._cv:
            if token is None:
                token, self._next = self._next, self._next + 1
            self._deadlines[token] = (time.monotonic() + seconds, ctx)
            self._cv.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cv:
            self._deadlines.pop(token, None)

    def was_cut(self, token: int) -> bool:
        """Whether the watchdog cut this stream (then forgets it)."""
        with self._cv:
            cut = token in self.fired
            self.fired.discard(token)
            return cut

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                for token, (deadline, ctx) in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[token]
                        self.fired.add(token)
                        ctx.cancel()  # the stream's iterator raises; the servicer logs the cut
                soonest = min((d for d, _ in self._deadlines.values()), default=now + 1.0)
                self._cv.wait(timeout=max(0.01, soonest - now))


def _guarded(
    chunks: Iterator[pb.Chunk], ctx: grpc.ServicerContext, watchdog: _Watchdog, token: int
) -> Iterator[pb.Chunk]:
    """`chunks`, each awaited at most STALL_S (the watchdog cancels the RPC past it)."""
    while True:
        watchdog.arm(ctx, STALL_S, token)
        try:
            chunk = next(chunks, None)
        finally:
            watchdog.disarm(token)
        if chunk is None:
            return
        yield chunk


class _Servicer(pb_grpc.MeshServicer):
    """Maps RPCs to the handler and domain errors to gRPC status codes. With TLS it also checks who
    calls: the node id of the caller's certificate must be the one its messages claim
    (UNAUTHENTICATED otherwise) and one of this node's neighbours for handshakes, updates and
    snapshots (PERMISSION_DENIED otherwise); Status and health answer any holder of a mesh
    certificate. Refusals are logged once per caller and reason."""

    def __init__(self, handler: MeshHandler, max_payload: int, recorder: Recorder | None, tls: bool) -> None:
        self.handler = handler
        self.max_payload = max_payload
        self.recorder = recorder
        self.tls = tls
        self.slots = _StreamSlots(STREAM_SLOTS, STREAMS_PER_PEER)
        self.watchdog = _Watchdog()
        self._logged: set[tuple[str, str]] = set()

    def _out(self, peer: str, msg: Any) -> Any:
        if self.recorder is not None:
            self.recorder(peer, msg)
        return msg

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, who: str, reason: str) -> None:
        key = (who, reason)
        if key not in self._logged:
            self._logged.add(key)
            log.error("refused %s (%s): %s", who, context.peer(), reason)
        context.abort(code, reason)

    def _caller(self, context: grpc.ServicerContext, claimed: str | None, neighbour_only: bool) -> str | None:
        """The caller's proven node id (None without TLS), after checking `claimed` against it and,
        when `neighbour_only`, that it is a neighbour. Aborts the RPC otherwise."""
        if not self.tls:
            return None
        caller = caller_identity(context.auth_context())
        if caller is None:
            self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "a client",
                "its certificate names no fedpeer://mesh/<node_id>",
            )
        assert caller is not None
        if claimed is not None and claimed != caller:
            self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                caller,
                f"claims to be {claimed!r} but its certificate is {caller!r}'s",
            )
        if neighbour_only and not self.handler.authorized(caller):
            self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                caller,
                f"{caller!r} is not a neighbour of this node",
            )
        return caller

    def Handshake(self, request: pb.Hello, context: grpc.ServicerContext) -> pb.HelloReply:
        self._caller(context, request.node_id, neighbour_only=True)
        try:
            me = self.handler.on_hello(serde.peer_info_from_proto(request))
        except HandshakeError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return self._out(context.peer(), pb.HelloReply(node=serde.peer_info_to_proto(me)))

    def Exchange(
        self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext
    ) -> Iterator[pb.Ack]:
        caller = self._caller(context, None, neighbour_only=True)
        busy = self.slots.acquire(caller)
        if busy:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"try again later: {busy}")
        token = self.watchdog.arm(context, STALL_S)
        try:
            chunks = _guarded(request_iterator, context, self.watchdog, token)
            yield from self._exchange(chunks, context, caller)
        except grpc.RpcError:  # cut by the watchdog, or the client went away (it closes after its ack)
            pass
        finally:
            self.watchdog.disarm(token)
            self.slots.release(caller)
            if self.watchdog.was_cut(token):
                log.warning("cut a stream from %s: no data for %.0f s", caller or context.peer(), STALL_S)

    def _exchange(
        self, chunks: Iterator[pb.Chunk], context: grpc.ServicerContext, caller: str | None
    ) -> Iterator[pb.Ack]:
        def admit(header: Frame, length: int) -> None:
            if caller is not None and header.sender != caller:
                raise _SenderMismatch(f"a frame of {header.sender!r} sent by {caller!r}")
            self.handler.check_header(header, length)

        while True:
            try:
                frame = serde.read_frame(chunks, self.max_payload, admit)
            except _SenderMismatch as exc:
                self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, caller or "?", str(exc))
            except FrameRejected as exc:
                log.warning("dropped a stream from %s: %s", caller or context.peer(), exc)
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
        caller = self._caller(context, request.requester, neighbour_only=True)
        busy = self.slots.acquire(caller)
        if busy:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"try again later: {busy}")
        try:
            frame = self.handler.on_snapshot_request(request.requester, request.max_round)
            for chunk in serde.frame_to_chunks(frame):
                yield self._out(context.peer(), chunk)
        finally:
            self.slots.release(caller)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        self._caller(context, None, neighbour_only=False)
        return serde.status_to_proto(self.handler.on_status())


class _SenderMismatch(FrameRejected):
    """A frame header names another sender than the caller's certificate."""


def _map_error(exc: grpc.RpcError, address: str, what: str) -> Exception:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return HandshakeError(f"{address} refused the handshake: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PeerBusy(f"{address} is busy: {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return HandshakeError(f"{address} refused us ({code.name}): {details}")
    if code == grpc.StatusCode.UNAVAILABLE and (
        "Hostname Verification" in details or "certificate" in details
    ):
        return HandshakeError(
            f"{address} did not prove to be the node we expect there ({details.rpartition(': ')[2]}): "
            "check the neighbour's address and that its certificate is for its node id"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return FrameRejected(f"{address} refused our {what}: {details}")
    if code == grpc.StatusCode.UNAVAILABLE and (
        "DNS resolution failed" in details or "errors resolving" in details
    ):
        host = address.rpartition(":")[0]
        return PeerUnavailable(f"the host name {host!r} does not resolve: check the neighbour's address")
    return PeerUnavailable(f"{what} to {address} failed: {code.name} {details}".strip())


class GrpcTransport(Transport):
    """gRPC server and client calls; mutual TLS when given a `TlsIdentity` (plaintext without)."""

    def __init__(
        self, max_payload: int = 1 << 30, recorder: Recorder | None = None, tls: TlsIdentity | None = None
    ) -> None:
        self.max_payload = max_payload
        self.recorder = recorder
        self.tls = tls
        self._credentials = tls.channel_credentials() if tls is not None else None
        # address -> node id the server there must prove (our neighbours, from the config)
        self._names: dict[str, str] = {}
        self._servicer: _Servicer | None = None
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    # --- server -------------------------------------------------------------------------------
    def serve(self, address: str, handler: MeshHandler) -> str:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=SERVER_WORKERS, thread_name_prefix="grpc"),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        self._servicer = _Servicer(handler, self.max_payload, self.recorder, tls=self.tls is not None)
        pb_grpc.add_MeshServicer_to_server(self._servicer, server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host, _, _ = address.rpartition(":")
        try:
            if self.tls is not None:
                port = server.add_secure_port(address, self.tls.server_credentials())
            else:
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
    def expect(self, address: str, node_id: str) -> None:
        """With TLS, the server at `address` must prove to be `node_id` (a neighbour from the config);
        other addresses must prove their host name."""
        self._names[address] = node_id

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                name = target_name(self._names[address]) if address in self._names else ""
                ch = self._channels[address] = make_channel(address, self._credentials, name)
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
        if self._servicer is not None:
            self._servicer.watchdog.close()
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
