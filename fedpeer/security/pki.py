"""A mesh's certificates: a CA per mesh (or per hospital), and one key + certificate per node.

A node's identity is its node id, written into its certificate twice:
- a URI subject alternative name `fedpeer://mesh/<node_id>`: what a server reads from a client's
  certificate to know who is calling (`identity_of`);
- a DNS name `<node_id>.fedpeer`: what a client asks a server to prove when it dials a neighbour
  (gRPC's `ssl_target_name_override`), so a node is reached as "site-b", whatever address, NAT or
  container name it sits behind; no certificate has to list the addresses it will be dialled on.
The DNS names and IP addresses the node serves on are added too (`--host`), for tools that dial an
address without knowing the node id (`fedpeer status HOST:PORT` without `--node-id`).

Files: `ca.key` / `ca.pem` (the CA: keep `ca.key` offline once the nodes are issued), and per node
`<node_id>.key` / `<node_id>.pem`. Keys are written 0600. Keys are ECDSA P-256: small, fast, and
accepted by every TLS stack gRPC builds on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpeer.errors import ConfigError

URI_PREFIX = "fedpeer://mesh/"
DNS_SUFFIX = ".fedpeer"
CA_KEY, CA_CERT = "ca.key", "ca.pem"
# A node id that is a valid DNS label can be named by the client's target-name check.
_NODE_ID = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class PkiError(ConfigError):
    """A certificate or key that cannot be made, read or used; the message says what to do."""


def check_node_id(node_id: str) -> None:
    if not _NODE_ID.fullmatch(node_id):
        raise PkiError(
            f"node id {node_id!r} cannot be a certificate identity: use letters, digits and '-' "
            "(at most 63, not starting or ending with '-'), e.g. site-b"
        )


def dns_name(node_id: str) -> str:
    """The DNS subject alternative name that proves `node_id` (what a client dialling it checks)."""
    return f"{node_id}{DNS_SUFFIX}"


@dataclass(frozen=True)
class Issued:
    key: Path
    cert: Path


def init_ca(directory: Path, name: str = "fedpeer mesh CA", days: int = 3650, force: bool = False) -> Issued:
    """Create a CA (key + self-signed certificate) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not force and (key_path.exists() or cert_path.exists()):
        raise PkiError(
            f"{directory} already holds a CA ({CA_KEY}, {CA_CERT}); issuing from it keeps the mesh's "
            "trust; --force replaces it (and every certificate it issued stops being trusted)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(key_path, cert_path)


def issue(
    ca_dir: Path,
    node_id: str,
    hosts: tuple[str, ...] = (),
    out_dir: Path | None = None,
    days: int = 825,
    force: bool = False,
) -> Issued:
    """Issue a key + certificate for `node_id`, signed by the CA in `ca_dir`, into `out_dir`
    (default: `ca_dir`). `hosts` are DNS names or IP addresses the node serves on."""
    check_node_id(node_id)
    ca_key, ca_cert = _load_ca(ca_dir)
    out = out_dir or ca_dir
    out.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out / f"{node_id}.key", out / f"{node_id}.pem"
    if not force and (key_path.exists() or cert_path.exists()):
        raise PkiError(f"{cert_path} already exists; --force issues a new key and certificate over it")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(URI_PREFIX + node_id),
        x509.DNSName(dns_name(node_id)),
    ]
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # One certificate serves both ends of a mesh link: the node is a server to its neighbours
        # and a client of them.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(key_path, cert_path)


def ensure_mesh(directory: Path, hosts: Mapping[str, tuple[str, ...]]) -> dict[str, Issued]:
    """A CA in `directory` and a key + certificate for each node id of `hosts` (with its host
    names), each made only if missing: a scenario run that resumes keeps its mesh's credentials."""
    if not (directory / CA_CERT).exists():
        init_ca(directory, name=f"fedpeer CA {directory.resolve().parent.name}"[:64])
    out = {}
    for node_id, names in hosts.items():
        key, cert = directory / f"{node_id}.key", directory / f"{node_id}.pem"
        out[node_id] = (
            Issued(key, cert) if key.exists() and cert.exists() else issue(directory, node_id, names)
        )
    return out


def identity_of(cert: x509.Certificate) -> str | None:
    """The node id a certificate proves (its `fedpeer://mesh/<id>` URI), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    ids = [u[len(URI_PREFIX) :] for u in uris if u.startswith(URI_PREFIX)]
    return ids[0] if len(ids) == 1 and ids[0] else None


def identity_of_pem(pem: bytes) -> str | None:
    return identity_of(x509.load_pem_x509_certificate(pem))


def describe(path: Path) -> str:
    """`fedpeer pki show`: what a certificate is, who it names, who signed it, until when."""
    certs = load_certs(path)
    parts = []
    for cert in certs:
        lines = [
            f"subject     {cert.subject.rfc4514_string()}",
            f"issuer      {cert.issuer.rfc4514_string()}",
        ]
        ca = _is_ca(cert)
        lines.append(f"kind        {'certificate authority' if ca else 'node certificate'}")
        node = identity_of(cert)
        if node is not None:
            lines.append(f"node id     {node}")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = san.get_values_for_type(x509.DNSName)
            ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
            lines.append(f"names       {', '.join([*uris, *dns, *ips])}")
        except x509.ExtensionNotFound:
            pass
        before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
        now = _now()
        state = "valid" if before <= now <= after else ("not yet valid" if now < before else "EXPIRED")
        lines.append(f"valid       {before:%Y-%m-%d} to {after:%Y-%m-%d} ({state})")
        fp = cert.fingerprint(hashes.SHA256()).hex()
        lines.append(f"sha256      {fp[:32]}...")
        if not ca and node is None:
            lines.append(
                "note        no fedpeer://mesh/<node_id> name: a fedpeer node refuses this certificate"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def load_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a trust bundle may hold several CAs)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate file") from None
    return certs


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = ca_dir / CA_KEY, ca_dir / CA_CERT
    if not key_path.exists() or not cert_path.exists():
        raise PkiError(f"no CA in {ca_dir} ({CA_KEY} and {CA_CERT}): run `fedpeer pki init {ca_dir}` first")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC key made by `fedpeer pki init`")
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only (created 0600, never world-readable)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
