"""Real gRPC on loopback: chunked streams, health, status, refused handshakes, hostile streams."""

import dataclasses
import logging

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedpeer import PROTOCOL_VERSION
from fedpeer.codec import DecodeLimits, get_codec
from fedpeer.errors import FrameRejected, HandshakeError, PeerUnavailable
from fedpeer.node import build_node
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.proto.v1 import mesh_pb2_grpc as pb_grpc
from fedpeer.scenario.runner import free_loopback_addresses
from fedpeer.scenario.spec import prepare
from fedpeer.tensors import manifest_of
from fedpeer.transport.grpc_transport import SERVICE_NAME, GrpcTransport
from fedpeer.wire.frames import CHUNK_BYTES, AckInfo, FrameKind, PeerInfo, StatusInfo, encode_frame
from tests.meshutil import tiny_spec

ME = PeerInfo(
    node_id="a",
    protocol_version=PROTOCOL_VERSION,
    fingerprint="f",
    fingerprint_fields={},
    codecs=("lossless",),
    round=0,
    degree=1,
    epoch="e",
    address="",
)


class Recorder:
    """A MeshHandler that keeps what it receives."""

    def __init__(self):
        self.frames = []

    def authorized(self, node_id):
        return True

    def check_header(self, header, payload_length):
        pass

    def on_hello(self, peer):
        if peer.protocol_version != PROTOCOL_VERSION:
            raise HandshakeError("wrong protocol")
        return ME

    def on_frame(self, frame):
        if frame.round > 100:
            raise FrameRejected("round out of range")
        self.frames.append(frame)
        return AckInfo(True, "", frame.seq)

    def on_snapshot_request(self, requester, max_round=0):
        return self.frames[-1]

    def on_status(self):
        return StatusInfo(
            node=ME,
            phase="training",
            rounds_total=5,
            neighbours=(),
            last_train_loss=1.0,
            consensus_distance=0.5,
        )


@pytest.fixture
def served():
    handler, server, client = Recorder(), GrpcTransport(), GrpcTransport()
    address = server.serve("127.0.0.1:0", handler)
    yield handler, address, client
    client.close()
    server.close()


def big_frame(round=1, seq=1):
    # ~2.5 MiB of incompressible fp32: travels as 3 chunks.
    t = {"w": torch.randn(640, 1024, generator=torch.Generator().manual_seed(0))}
    return encode_frame(
        t, get_codec("lossless"), sender="a", epoch="e", kind=FrameKind.UPDATE, round=round, seq=seq
    ), t


def test_large_frame_streams_in_chunks_and_round_trips(served):
    handler, address, client = served
    frame, t = big_frame()
    assert len(frame.payload) > 2 * CHUNK_BYTES
    result = client.send_frame(address, frame, timeout=10)
    assert result.ack.accepted and result.ack.applied_seq == 1
    assert result.wire_bytes > len(frame.payload)
    got = handler.frames[0]
    assert got == frame and got.wire_bytes == result.wire_bytes
    decoded = get_codec("lossless").decode(got.payload, manifest_of(t), got.codec_params, DecodeLimits())
    torch.testing.assert_close(decoded["w"], t["w"], atol=0, rtol=0)


def test_snapshot_and_status_and_health(served):
    handler, address, client = served
    frame, _ = big_frame()
    client.send_frame(address, frame, timeout=10)
    snap = client.fetch_snapshot(address, "b", timeout=10, max_payload=1 << 30)
    assert snap == frame
    st = client.status(address, timeout=5)
    assert st.phase == "training" and st.node.node_id == "a"
    assert client.health(address, timeout=5) == "SERVING"
    with grpc.insecure_channel(address) as ch:  # the standard health service, as any tool would ask
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_refusals_are_mapped_to_domain_errors(served):
    handler, address, client = served
    with pytest.raises(HandshakeError, match="wrong protocol"):
        client.hello(address, PeerInfo(**{**ME.__dict__, "protocol_version": 99}), timeout=5)
    frame, _ = big_frame(round=101)
    result = client.send_frame(address, frame, timeout=10)
    assert not result.ack.accepted and "out of range" in result.ack.error


def test_unreachable_peer_fails_fast():
    client = GrpcTransport()
    with pytest.raises(PeerUnavailable):
        client.hello("127.0.0.1:1", ME, timeout=5)
    client.close()


def test_hostile_stream_is_refused_and_server_keeps_serving(served):
    handler, address, client = served
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.MeshStub(ch)
        header = pb.FrameHeader(
            sender="a", kind=pb.FRAME_KIND_UPDATE, round=1, seq=1, codec="lossless", payload_length=1 << 40
        )
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Exchange(iter([pb.Chunk(header=header)]), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Exchange(iter([pb.Chunk(data=b"no header first")]), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    frame, _ = big_frame()
    assert client.send_frame(address, frame, timeout=10).ack.accepted


def test_mismatched_fingerprint_is_refused_on_both_sides(tmp_path, caplog):
    """Two nodes with different mesh_seed: both sides say why, in one readable line."""
    spec = tiny_spec(nodes=2, topology="complete")
    prepared = prepare(spec, tmp_path, free_loopback_addresses(["node0", "node1"]))
    cfg_a, cfg_b = prepared.nodes
    cfg_b = dataclasses.replace(cfg_b, adapter=dataclasses.replace(cfg_b.adapter, mesh_seed=7))
    a, b = build_node(cfg_a, GrpcTransport()), build_node(cfg_b, GrpcTransport())
    try:
        b.address = b.transport.serve(cfg_b.listen, b.service)
        caplog.set_level(logging.INFO)
        peer = a.neighbours.peers["node1"]
        a.neighbours.handshake(peer)
        assert peer.info is None
        assert "mesh_seed" in peer.problem and "node1 refused the handshake" in peer.problem.replace(
            cfg_b.listen, "node1"
        )
        assert any(
            "refused handshake from node0" in r.getMessage() and "mesh_seed" in r.getMessage()
            for r in caplog.records
        )
    finally:
        a.close()
        b.close()
