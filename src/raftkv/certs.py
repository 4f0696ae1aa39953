"""``raftkv certs``: a development CA and the certificates a local TLS cluster needs.

One run writes, into one directory:

* ``ca.crt`` / ``ca.key``: a self-signed CA (basicConstraints CA, path length 0);
* ``server.crt`` / ``server.key``: the members' client-facing certificate, for
  ``--cert-file`` / ``--key-file``. Its extended key usage is serverAuth *and* clientAuth:
  a member's JSON gateway presents it to the member's own gRPC port when
  ``--client-cert-auth`` is on (etcd's gateway does the same);
* ``peer.crt`` / ``peer.key``: for ``--peer-cert-file`` / ``--peer-key-file``; serverAuth
  and clientAuth, since each member both accepts and dials peer connections;
* ``client.crt`` / ``client.key``: for clients (etcdctl ``--cert``/``--key``); clientAuth.

Every certificate but the CA's names each ``--hosts`` entry as a subject alternative name
(an IP address entry for an IP, a DNS entry otherwise); the client certificate too, since
strict verifiers (RFC 5280 profiles) want one on every leaf. Keys are ECDSA P-256 in PKCS#8 PEM,
written with mode 0600. Existing files are never replaced unless ``force`` is set. These
are for development and tests: one key per role, shared by every member.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raftkv import limits

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644
ORGANIZATION = "raftkv development"
# Back-dating absorbs clock differences between the machine that makes the files and the
# ones that check them.
_NOT_BEFORE_SLACK = datetime.timedelta(minutes=5)
_SERIAL_BITS = 128
_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_DNS_NAME_MAX_CHARS = 253


class CertsError(Exception):
    """The certificates cannot be written as asked; the message says why."""


@dataclass(frozen=True)
class DevCertFiles:
    """The files one ``generate_dev_certs`` call wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    peer_cert: Path
    peer_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_directory(cls, out_dir: Path) -> DevCertFiles:
        return cls(
            ca_cert=out_dir / "ca.crt",
            ca_key=out_dir / "ca.key",
            server_cert=out_dir / "server.crt",
            server_key=out_dir / "server.key",
            peer_cert=out_dir / "peer.crt",
            peer_key=out_dir / "peer.key",
            client_cert=out_dir / "client.crt",
            client_key=out_dir / "client.key",
        )

    def all_paths(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.peer_cert,
            self.peer_key,
            self.client_cert,
            self.client_key,
        )


SubjectAltName = x509.IPAddress | x509.DNSName


def parse_hosts(text: str) -> tuple[str, ...]:
    """``--hosts`` (comma-separated IPs and DNS names) as a list without repeats."""
    hosts: list[str] = []
    for part in text.split(","):
        host = part.strip()
        if host and host not in hosts:
            hosts.append(host)
    if not hosts:
        raise CertsError("--hosts must name at least one IP address or DNS name")
    if len(hosts) > limits.CERTS_MAX_HOSTS:
        raise CertsError(f"--hosts names {len(hosts)} hosts; at most {limits.CERTS_MAX_HOSTS}")
    for host in hosts:
        subject_alt_name(host)  # raises for a name that is neither
    return tuple(hosts)


def subject_alt_name(host: str) -> SubjectAltName:
    """The SAN entry for ``host``: an IP address entry for an IP, else a DNS name entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.removeprefix("*.").split(".")
    valid = all(_DNS_LABEL.fullmatch(label) for label in labels)
    if not valid or not host.isascii() or len(host) > _DNS_NAME_MAX_CHARS:
        raise CertsError(f"--hosts: {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def generate_dev_certs(
    out_dir: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> DevCertFiles:
    """Write a new CA and the server, peer and client certificates it signs to ``out_dir``.

    Refuses (``CertsError``) when any of the files exists, unless ``force``."""
    assert hosts, "a server certificate needs at least one host"
    files = DevCertFiles.in_directory(out_dir)
    existing = [path for path in files.all_paths() if path.exists() or path.is_symlink()]
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        raise CertsError(f"not replacing existing files (use --force): {names}")
    start = (now or datetime.datetime.now(datetime.UTC)) - _NOT_BEFORE_SLACK
    alt_names = [subject_alt_name(host) for host in hosts]
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, start)
    roles = (
        ("raftkv server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("raftkv peer", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("raftkv client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
    )
    issued: list[tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = []
    for common_name, usages in roles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf_certificate(key, common_name, usages, alt_names, ca_key, ca_cert, start)
        issued.append((key, cert))
    out_dir.mkdir(parents=True, exist_ok=True)
    (server_key, server_cert), (peer_key, peer_cert), (client_key, client_cert) = issued
    _write_key(files.ca_key, ca_key)
    _write_cert(files.ca_cert, ca_cert)
    _write_key(files.server_key, server_key)
    _write_cert(files.server_cert, server_cert)
    _write_key(files.peer_key, peer_key)
    _write_cert(files.peer_cert, peer_cert)
    _write_key(files.client_key, client_key)
    _write_cert(files.client_cert, client_cert)
    return files


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, start: datetime.datetime) -> x509.Certificate:
    # A name of its own: two development CAs must not look alike to a verifier, or its
    # error says "bad signature" where "unknown CA" is the truth.
    subject = _name(f"raftkv development CA {secrets.token_hex(4)}")
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(secrets.randbits(_SERIAL_BITS - 1) + 1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=limits.CERTS_CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    alt_names: list[SubjectAltName],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    start: datetime.datetime,
) -> x509.Certificate:
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(secrets.randbits(_SERIAL_BITS - 1) + 1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=limits.CERTS_LEAF_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(path, data, KEY_FILE_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_file(path, cert.public_bytes(serialization.Encoding.PEM), CERT_FILE_MODE)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file beside ``path`` with ``mode``, then rename it over
    ``path``: a key is never readable by others, not even while it is being written."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)  # the umask may have taken bits away from a certificate
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
