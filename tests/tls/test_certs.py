"""``raftkv certs``: the development CA and the certificates it signs."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from raftkv.certs import CertsError, DevCertFiles, generate_dev_certs, parse_hosts
from raftkv.cli import main

HOSTS = ("127.0.0.1", "localhost", "::1", "node1.example")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> DevCertFiles:
    return generate_dev_certs(tmp_path_factory.mktemp("certs"), HOSTS)


def extended_usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_ca_is_a_ca(files: DevCertFiles) -> None:
    ca = load(files.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)


def test_server_and_peer_certificates_verify_for_every_host(files: DevCertFiles) -> None:
    store = verification.Store([load(files.ca_cert)])
    for cert_path in (files.server_cert, files.peer_cert):
        cert = load(cert_path)
        for host in HOSTS:
            try:
                name: verification.IPAddress | verification.DNSName = verification.IPAddress(
                    ipaddress.ip_address(host)
                )
            except ValueError:
                name = verification.DNSName(host)
            verifier = verification.PolicyBuilder().store(store).build_server_verifier(name)
            chain = verifier.verify(cert, [])
            assert chain[-1] == load(files.ca_cert)
        # A host that was not asked for is not in the certificate.
        other = verification.DNSName("elsewhere.example")
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(other)
        with pytest.raises(verification.VerificationError):
            verifier.verify(cert, [])


def test_subject_alternative_names_are_the_hosts(files: DevCertFiles) -> None:
    for cert_path in (files.server_cert, files.peer_cert, files.client_cert):
        cert = load(cert_path)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["localhost", "node1.example"]
        assert names.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        ]


def test_key_usages_by_role(files: DevCertFiles) -> None:
    server_and_client = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert extended_usages(load(files.server_cert)) == server_and_client
    assert extended_usages(load(files.peer_cert)) == server_and_client
    assert extended_usages(load(files.client_cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    for cert_path in (files.server_cert, files.peer_cert, files.client_cert):
        cert = load(cert_path)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_the_client_certificate_verifies_as_a_client(files: DevCertFiles) -> None:
    store = verification.Store([load(files.ca_cert)])
    verifier = verification.PolicyBuilder().store(store).build_client_verifier()
    verified = verifier.verify(load(files.client_cert), [])
    assert verified.chain[-1] == load(files.ca_cert)


def test_each_key_matches_its_certificate_and_is_private(files: DevCertFiles) -> None:
    pairs = [
        (files.ca_cert, files.ca_key),
        (files.server_cert, files.server_key),
        (files.peer_cert, files.peer_key),
        (files.client_cert, files.client_key),
    ]
    for cert_path, key_path in pairs:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert key.public_key() == load(cert_path).public_key()
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644


def test_certificates_are_valid_now(files: DevCertFiles) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for path in files.all_paths()[::2]:
        cert = load(path)
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_two_cas_differ_and_do_not_vouch_for_each_other(tmp_path: Path) -> None:
    first = generate_dev_certs(tmp_path / "a", ["127.0.0.1"])
    second = generate_dev_certs(tmp_path / "b", ["127.0.0.1"])
    assert load(first.ca_cert).subject != load(second.ca_cert).subject
    store = verification.Store([load(first.ca_cert)])
    verifier = verification.PolicyBuilder().store(store).build_client_verifier()
    with pytest.raises(verification.VerificationError):
        verifier.verify(load(second.client_cert), [])


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    files = generate_dev_certs(tmp_path, ["127.0.0.1"])
    before = files.ca_cert.read_bytes()
    with pytest.raises(CertsError, match="use --force"):
        generate_dev_certs(tmp_path, ["127.0.0.1"])
    assert files.ca_cert.read_bytes() == before
    generate_dev_certs(tmp_path, ["127.0.0.1"], force=True)
    assert files.ca_cert.read_bytes() != before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        path.name for path in files.all_paths()
    )  # no temporary file is left behind


def test_one_existing_file_is_enough_to_refuse(tmp_path: Path) -> None:
    (tmp_path / "client.key").write_text("mine")
    with pytest.raises(CertsError, match="client.key"):
        generate_dev_certs(tmp_path, ["127.0.0.1"])
    assert (tmp_path / "client.key").read_text() == "mine"
    assert not (tmp_path / "ca.crt").exists()


def test_parse_hosts() -> None:
    assert parse_hosts("127.0.0.1, localhost,127.0.0.1,[::1]") == (
        "127.0.0.1",
        "localhost",
        "[::1]",
    )
    for bad in ("", " , ", "bad host", "-leading.example", "ü.example"):
        with pytest.raises(CertsError):
            parse_hosts(bad)
    with pytest.raises(CertsError, match="at most"):
        parse_hosts(",".join(f"10.0.0.{i}" for i in range(100)))


def test_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--hosts", "127.0.0.1,db.example"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(path) for path in DevCertFiles.in_directory(out).all_paths()]
    names = load(out / "peer.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["db.example"]
    assert main(["certs", "--out", str(out)]) == 2
    assert "use --force" in capsys.readouterr().err
    assert main(["certs", "--out", str(out), "--force"]) == 0
    assert main(["certs", "--out", str(out), "--force", "--hosts", "no such host"]) == 2
    assert "neither an IP address nor a DNS name" in capsys.readouterr().err
