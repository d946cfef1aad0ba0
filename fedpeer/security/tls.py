"""Mutual TLS for the mesh's gRPC channels: a node's credentials, checked at start, and the identity
of whoever calls it.

Both ends authenticate. The server asks for a client certificate of the mesh CA and reads the
caller's node id from it (`caller_identity`); the client dials a neighbour as `<node_id>.fedpeer`
(gRPC's target name override), so the TLS handshake itself proves that the neighbour holds the
certificate of the node id the topology names, wherever its address points.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from fedpeer.config import TlsConfig
from fedpeer.security.pki import PkiError, dns_name, identity_of, load_certs

log = logging.getLogger("fedpeer.transport")


@dataclass(frozen=True)
class TlsIdentity:
    """A node's (or an operator's) credentials: the trusted CA bundle, its certificate and key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    node_id: str

    def server_credentials(self) -> Any:
        import grpc

        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem, require_client_auth=True
        )

    def channel_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


def target_name(node_id: str) -> str:
    """The name a client asks the server it dials to prove (see `fedpeer.security.pki`)."""
    return dns_name(node_id)


def load_identity(
    ca: str | Path, cert: str | Path, key: str | Path, node_id: str | None = None
) -> TlsIdentity:
    """Read and check credentials: the certificate names a node id (`node_id` if given), is signed
    by one of the CAs, is valid now, and matches the key. Raises PkiError saying what to fix."""
    for what, path in (("tls.ca", ca), ("tls.cert", cert), ("tls.key", key)):
        if not Path(path).is_file():
            raise PkiError(
                f"{what}: no such file {path}: the mesh CA bundle and this node's key and certificate "
                "come from the mesh's CA (`fedpeer pki issue CA_DIR NODE_ID`); copy them there or fix "
                "[tls] in the config"
            )
    cas = load_certs(Path(ca))
    (leaf, *_) = load_certs(Path(cert))
    who = identity_of(leaf)
    if who is None:
        raise PkiError(f"{cert} has no fedpeer://mesh/<node_id> name: issue it with `fedpeer pki issue`")
    if node_id is not None and who != node_id:
        raise PkiError(
            f"{cert} is the certificate of {who!r}, but this node is {node_id!r}: issue one for it with "
            f"`fedpeer pki issue CA_DIR {node_id}`"
        )
    if not any(_issued_by(leaf, c) for c in cas):
        raise PkiError(
            f"{cert} is not signed by a CA in {ca}: use the mesh's CA bundle, or issue the certificate "
            "from that CA"
        )
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise PkiError(
            f"{cert} is valid from {leaf.not_valid_before_utc:%Y-%m-%d} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d}, not now: issue a new one (`fedpeer pki issue --force`)"
        )
    try:
        key_pem = Path(key).read_bytes()
        private = serialization.load_pem_private_key(key_pem, password=None)
    except OSError as exc:
        raise PkiError(f"cannot read key {key}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise PkiError(f"{key} is not an unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.PEM, pub) != leaf.public_key().public_bytes(
        serialization.Encoding.PEM, pub
    ):
        raise PkiError(f"{key} is not the key of {cert}: give the key issued with that certificate")
    _warn_open_key(Path(key))
    return TlsIdentity(Path(ca).read_bytes(), Path(cert).read_bytes(), key_pem, who)


def node_identity(tls: TlsConfig, node_id: str) -> TlsIdentity | None:
    """The node's TLS credentials from its `[tls]` settings; None (with a warning) when insecure."""
    tls.validate()
    if tls.insecure:
        log.warning(
            "%s: tls.insecure = true: gRPC is plaintext and unauthenticated; anyone who can reach this "
            "node can read its updates and send frames as a neighbour",
            node_id,
        )
        return None
    return load_identity(tls.ca, tls.cert, tls.key, node_id)


def caller_identity(auth_context: dict[str, list[bytes]]) -> str | None:
    """The node id a TLS client proved (its certificate's fedpeer://mesh/<id>); None if none."""
    from fedpeer.security.pki import URI_PREFIX

    uris = [u.decode() for u in auth_context.get("peer_uri", [])]
    ids = [u[len(URI_PREFIX) :] for u in uris if u.startswith(URI_PREFIX)]
    return ids[0] if len(ids) == 1 and ids[0] else None


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # another CA, or another key type
        return False
    return True


def _warn_open_key(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o): chmod 600 %s", path, mode, path)
