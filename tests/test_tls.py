"""Mutual TLS between nodes: `fedpeer pki`'s certificates, and real gRPC refusing every caller that is
not the neighbour it claims to be, and streams that stall, flood or declare too much."""

import os
import threading

import grpc
import pytest
import torch

from fedpeer import PROTOCOL_VERSION
from fedpeer.codec import get_codec
from fedpeer.errors import FrameRejected, HandshakeError, PeerUnavailable
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.proto.v1 import mesh_pb2_grpc as pb_grpc
from fedpeer.security import pki
from fedpeer.security.tls import TlsIdentity, load_identity, target_name
from fedpeer.transport import grpc_transport
from fedpeer.transport.channel import STREAMS_PER_PEER
from fedpeer.transport.grpc_transport import GrpcTransport
from fedpeer.wire.frames import AckInfo, FrameKind, PeerInfo, StatusInfo, encode_frame
from fedpeer.wire.serde import header_to_proto


def info(node_id: str) -> PeerInfo:
    return PeerInfo(node_id, PROTOCOL_VERSION, "f", {}, ("lossless",), 0, 1, "e", "")


class Handler:
    """A MeshHandler whose neighbours are `allowed`; it records frames and checks headers' sizes."""

    def __init__(self, allowed: set[str], bound: int = 1 << 20) -> None:
        self.allowed, self.bound, self.frames = allowed, bound, []
        self.headers_seen = 0

    def authorized(self, node_id):
        return node_id in self.allowed

    def check_header(self, header, payload_length):
        self.headers_seen += 1
        if payload_length > self.bound:
            raise FrameRejected(f"declared payload of {payload_length} bytes exceeds {self.bound}")

    def on_hello(self, peer):
        return info("a")

    def on_frame(self, frame):
        self.frames.append(frame)
        return AckInfo(True, "", frame.seq)

    def on_snapshot_request(self, requester, max_round=0):
        return self.frames[-1]

    def on_status(self):
        return StatusInfo(info("a"), "training", 5, (), 1.0, 0.5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A mesh CA with nodes a, b, c (c is no neighbour of a), and a foreign CA with its own b."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = root / "mesh", root / "other"
    pki.init_ca(ca)
    for n in ("a", "b", "c"):
        pki.issue(ca, n, ("127.0.0.1",))
    pki.init_ca(other)
    pki.issue(other, "b", ("127.0.0.1",))
    return ca, other


def identity(ca_dir, node, cert_dir=None):
    d = cert_dir or ca_dir
    return load_identity(ca_dir / "ca.pem", d / f"{node}.pem", d / f"{node}.key")


@pytest.fixture
def server(mesh):
    ca, _ = mesh
    handler = Handler(allowed={"b"})
    t = GrpcTransport(tls=identity(ca, "a"))
    address = t.serve("127.0.0.1:0", handler)
    yield handler, address
    t.close()


def client(mesh, node="b", ca_dir=None, cert_dir=None, expect="a", address=None):
    ca, _ = mesh
    t = GrpcTransport(tls=identity(ca_dir or ca, node, cert_dir))
    if address and expect:
        t.expect(address, expect)
    return t


def frame(sender="b", round=1, seq=1):
    return encode_frame(
        {"w": torch.ones(4)},
        get_codec("lossless"),
        sender=sender,
        epoch="e",
        kind=FrameKind.UPDATE,
        round=round,
        seq=seq,
    )


# --- pki ------------------------------------------------------------------------------------------
def test_issued_certificate_names_the_node_and_keys_are_private(mesh):
    ca, _ = mesh
    assert os.stat(ca / "ca.key").st_mode & 0o777 == 0o600
    assert os.stat(ca / "b.key").st_mode & 0o777 == 0o600
    cert = pki.load_certs(ca / "b.pem")[0]
    assert pki.identity_of(cert) == "b"
    text = pki.describe(ca / "b.pem")
    assert "node id     b" in text and "b.fedpeer" in text and "127.0.0.1" in text and "(valid)" in text
    assert "certificate authority" in pki.describe(ca / "ca.pem")


def test_pki_refuses_what_it_cannot_do_and_says_what_to_do(tmp_path, mesh):
    with pytest.raises(pki.PkiError, match="pki init"):
        pki.issue(tmp_path / "none", "x")
    ca, _ = mesh
    with pytest.raises(pki.PkiError, match="letters, digits"):
        pki.issue(ca, "bad_id/1")
    with pytest.raises(pki.PkiError, match="--force"):
        pki.issue(ca, "b")
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.init_ca(ca)


def test_ensure_mesh_makes_credentials_once(tmp_path):
    first = pki.ensure_mesh(tmp_path, {"n0": ("127.0.0.1",), "n1": ()})
    before = first["n0"].cert.read_bytes()
    again = pki.ensure_mesh(tmp_path, {"n0": ("127.0.0.1",), "n1": (), "n2": ()})
    assert again["n0"].cert.read_bytes() == before and again["n2"].cert.exists()


def test_credentials_are_checked_at_start(mesh):
    ca, other = mesh
    with pytest.raises(pki.PkiError, match="certificate of 'b', but this node is 'a'"):
        load_identity(ca / "ca.pem", ca / "b.pem", ca / "b.key", node_id="a")
    with pytest.raises(pki.PkiError, match="not signed by a CA"):
        load_identity(ca / "ca.pem", other / "b.pem", other / "b.key")
    with pytest.raises(pki.PkiError, match="is not the key of"):
        load_identity(ca / "ca.pem", ca / "b.pem", ca / "a.key")


def test_a_bundle_of_several_cas_trusts_each(mesh, tmp_path):
    ca, other = mesh
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((ca / "ca.pem").read_bytes() + (other / "ca.pem").read_bytes())
    assert load_identity(bundle, other / "b.pem", other / "b.key").node_id == "b"
    assert len(pki.load_certs(bundle)) == 2


# --- who may talk ---------------------------------------------------------------------------------
def test_the_neighbour_with_its_certificate_is_served(mesh, server, caplog):
    handler, address = server
    t = client(mesh, address=address)
    try:
        assert t.hello(address, info("b"), 5).node_id == "a"
        assert t.send_frame(address, frame(), 5).ack.accepted
        assert t.status(address, 5).phase == "training" and t.alive(address, 5)
    finally:
        t.close()
    assert [f.sender for f in handler.frames] == ["b"]
    assert "cut a stream" not in caplog.text  # a client closing after its ack is no stall


def test_plaintext_client_gets_nothing(server):
    _, address = server
    t = GrpcTransport()
    try:
        with pytest.raises(PeerUnavailable):
            t.hello(address, info("b"), 3)
        assert not t.alive(address, 3)
    finally:
        t.close()


def test_certificate_of_another_ca_is_refused(mesh, server):
    _, address = server
    ca, other = mesh
    # The client trusts the mesh CA (so it would accept the server) but shows the foreign CA's "b".
    forged = TlsIdentity(
        (ca / "ca.pem").read_bytes(), (other / "b.pem").read_bytes(), (other / "b.key").read_bytes(), "b"
    )
    t = GrpcTransport(tls=forged)
    t.expect(address, "a")
    try:
        with pytest.raises((PeerUnavailable, HandshakeError)):
            t.hello(address, info("b"), 3)
    finally:
        t.close()


def test_a_valid_certificate_cannot_claim_another_node_id(mesh, server):
    handler, address = server
    t = client(mesh, node="b", address=address)
    try:
        with pytest.raises(HandshakeError, match="UNAUTHENTICATED.*claims to be 'x'"):
            t.hello(address, info("x"), 3)
        with pytest.raises(HandshakeError, match="UNAUTHENTICATED"):
            t.send_frame(address, frame(sender="c"), 3)
        with pytest.raises(HandshakeError, match="UNAUTHENTICATED"):
            t.fetch_snapshot(address, "c", 3, 1 << 20)
    finally:
        t.close()
    assert handler.frames == []


def test_a_valid_certificate_of_a_non_neighbour_is_denied(mesh, server):
    handler, address = server
    t = client(mesh, node="c", address=address)
    try:
        with pytest.raises(HandshakeError, match="PERMISSION_DENIED"):
            t.hello(address, info("c"), 3)
        with pytest.raises(HandshakeError, match="PERMISSION_DENIED"):
            t.send_frame(address, frame(sender="c"), 3)
        assert t.status(address, 3).phase == "training"  # Status answers any mesh certificate
    finally:
        t.close()
    assert handler.frames == [] and handler.headers_seen == 0


def test_a_server_that_is_not_the_expected_neighbour_is_not_talked_to(mesh, server):
    _, address = server
    t = client(mesh, node="b", expect="c", address=address)  # the topology says c lives there
    try:
        with pytest.raises(HandshakeError, match="did not prove to be the node"):
            t.hello(address, info("b"), 3)
    finally:
        t.close()


def test_target_name_is_the_node_ids_dns_name():
    assert target_name("site-b") == "site-b.fedpeer"


# --- hostile streams ------------------------------------------------------------------------------
def _raw_stub(mesh, address, node="b"):
    ca, _ = mesh
    ident = identity(ca, node)
    ch = grpc.secure_channel(
        address,
        ident.channel_credentials(),
        options=[("grpc.ssl_target_name_override", target_name("a"))],
    )
    return ch, pb_grpc.MeshStub(ch)


def test_an_oversized_declaration_is_refused_from_the_header(mesh, server):
    handler, address = server
    f = frame()
    header = header_to_proto(f)
    header.payload_length = 256 << 20
    sent_after_header = threading.Event()

    def chunks():
        yield pb.Chunk(header=header)
        sent_after_header.set()
        yield pb.Chunk(data=b"x" * 1024)

    ch, stub = _raw_stub(mesh, address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Exchange(chunks(), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exceeds" in err.value.details()
    finally:
        ch.close()
    assert handler.frames == []


def test_a_silent_stream_is_cut_and_health_still_answers(mesh, server, monkeypatch, caplog):
    handler, address = server
    monkeypatch.setattr(grpc_transport, "STALL_S", 0.5)
    never = threading.Event()

    def header_then_silence():
        yield pb.Chunk(header=header_to_proto(frame()))
        never.wait(30)

    ch, stub = _raw_stub(mesh, address)
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Exchange(header_then_silence(), timeout=20))
        assert err.value.code() == grpc.StatusCode.CANCELLED
    finally:
        never.set()
        ch.close()
    assert _wait_for(lambda: "cut a stream from b" in caplog.text, 10)
    t = client(mesh, address=address)
    try:
        assert t.alive(address, 5)
    finally:
        t.close()


def test_one_peer_cannot_hold_more_than_its_streams(mesh, server):
    handler, address = server
    release = threading.Event()

    def silent():
        release.wait(30)
        yield from ()

    ch, stub = _raw_stub(mesh, address)
    try:
        # Streams that hold their slot: each waits before its first chunk (within STALL_S).
        its = [stub.Exchange(silent(), timeout=30) for _ in range(STREAMS_PER_PEER + 1)]
        errors = []

        def drain(it):
            try:
                list(it)
            except grpc.RpcError as exc:
                errors.append(exc.code())

        threads = [threading.Thread(target=drain, args=(it,)) for it in its]
        for th in threads:
            th.start()
        # The one over the limit is refused at once, while the others still hold theirs.
        deadline_hit = not _wait_for(lambda: grpc.StatusCode.RESOURCE_EXHAUSTED in errors, 20)
        t = client(mesh, address=address)
        try:
            assert t.status(address, 5).phase == "training"  # Status is never starved
        finally:
            t.close()
        release.set()
        for th in threads:
            th.join(30)
        assert not deadline_hit and errors.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1
    finally:
        release.set()
        ch.close()


def _wait_for(predicate, timeout):
    done = threading.Event()
    end = threading.Event()

    def poll():
        while not end.is_set():
            if predicate():
                done.set()
                return
            end.wait(0.05)

    th = threading.Thread(target=poll)
    th.start()
    done.wait(timeout)
    end.set()
    th.join()
    return done.is_set()
