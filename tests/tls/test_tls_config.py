"""The TLS flags of ``raftkv serve``: etcd's names, where they may come from, and the checks
that refuse a member that could not serve what its URLs promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.certs import DevCertFiles, generate_dev_certs
from raftkv.server.config import ConfigError, load_config
from raftkv.server.tls import TlsFiles

CLIENT = "https://127.0.0.1:12379"
PEER = "https://127.0.0.1:12380"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertFiles:
    return generate_dev_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1"])


def tls_urls(client: str = CLIENT, peer: str = PEER) -> list[str]:
    return [
        "--name=a",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=a={peer}",
    ]


def client_flags(certs: DevCertFiles) -> list[str]:
    return [
        f"--cert-file={certs.server_cert}",
        f"--key-file={certs.server_key}",
        f"--trusted-ca-file={certs.ca_cert}",
        "--client-cert-auth",
    ]


def peer_flags(certs: DevCertFiles) -> list[str]:
    return [
        f"--peer-cert-file={certs.peer_cert}",
        f"--peer-key-file={certs.peer_key}",
        f"--peer-trusted-ca-file={certs.ca_cert}",
        "--peer-client-cert-auth",
    ]


def error_of(argv: list[str], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(argv, environ or {})
    return raised.value.message


def test_mutual_tls_on_both_sides(certs: DevCertFiles) -> None:
    config = load_config([*tls_urls(), *client_flags(certs), *peer_flags(certs)], {})
    assert config.listen_client_urls == (CLIENT,)
    assert config.initial_cluster == {"a": (PEER,)}
    assert config.client_tls == TlsFiles(
        str(certs.server_cert), str(certs.server_key), str(certs.ca_cert), True
    )
    assert config.peer_tls == TlsFiles(
        str(certs.peer_cert), str(certs.peer_key), str(certs.ca_cert), True
    )
    assert config.client_tls.verifies_clients and config.peer_tls.verifies_clients


def test_without_tls_flags_there_is_no_tls() -> None:
    config = load_config([], {})
    assert config.client_tls is None and config.peer_tls is None


def test_a_trusted_ca_alone_verifies_clients_as_in_etcd(certs: DevCertFiles) -> None:
    argv = [
        *tls_urls(peer="http://127.0.0.1:12380"),
        f"--cert-file={certs.server_cert}",
        f"--key-file={certs.server_key}",
        f"--trusted-ca-file={certs.ca_cert}",
    ]
    config = load_config(argv, {})
    assert config.client_tls is not None and config.peer_tls is None
    assert not config.client_tls.client_cert_auth
    assert config.client_tls.verifies_clients
    without_ca = load_config(argv[:-1], {})
    assert without_ca.client_tls is not None and not without_ca.client_tls.verifies_clients


def test_flags_come_from_the_environment_and_the_config_file(
    certs: DevCertFiles, tmp_path: Path
) -> None:
    environ = {
        "ETCD_PEER_CERT_FILE": str(certs.peer_cert),
        "ETCD_PEER_KEY_FILE": str(certs.peer_key),
        "RAFTKV_PEER_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_TRUSTED_CA_FILE": str(certs.ca_cert),
    }
    argv = tls_urls(client="http://127.0.0.1:12379")
    config = load_config(argv, environ)
    assert config.peer_tls == TlsFiles(
        str(certs.peer_cert), str(certs.peer_key), str(certs.ca_cert), True
    )
    assert not any("PEER" in warning for warning in config.warnings)
    config_file = tmp_path / "etcd.yml"
    config_file.write_text(
        "name: a\n"
        f"listen-client-urls: {CLIENT}\n"
        f"advertise-client-urls: {CLIENT}\n"
        f"listen-peer-urls: http://127.0.0.1:12380\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:12380\n"
        f"cert-file: {certs.server_cert}\n"
        f"key-file: {certs.server_key}\n"
        f"trusted-ca-file: {certs.ca_cert}\n"
        "client-cert-auth: true\n",
        encoding="utf-8",
    )
    from_file = load_config([f"--config-file={config_file}"], {})
    assert from_file.client_tls == TlsFiles(
        str(certs.server_cert), str(certs.server_key), str(certs.ca_cert), True
    )
    assert from_file.peer_tls is None


def test_https_needs_certificates(certs: DevCertFiles) -> None:
    assert error_of([*tls_urls(), *peer_flags(certs)]) == (
        f"--listen-client-urls: {CLIENT} uses https, which needs --cert-file and --key-file"
    )
    assert error_of([*tls_urls(), *client_flags(certs)]) == (
        f"--listen-peer-urls: {PEER} uses https, which needs --peer-cert-file and --peer-key-file"
    )
    # A peer URL of another member is dialed with the peer certificate too.
    plain_peer = "http://127.0.0.1:12380"
    argv = [
        *tls_urls(client="http://127.0.0.1:12379", peer=plain_peer),
        f"--initial-cluster=a={plain_peer},b=https://127.0.0.1:22380",
    ]
    assert error_of(argv) == (
        "--initial-cluster: https://127.0.0.1:22380 uses https, which needs --peer-cert-file "
        "and --peer-key-file"
    )


def test_https_gateway_urls_need_certificates() -> None:
    argv = [
        *tls_urls(client="http://127.0.0.1:12379", peer="http://127.0.0.1:12380"),
        "--listen-client-http-urls=https://127.0.0.1:12381",
    ]
    assert error_of(argv) == (
        "--listen-client-http-urls: https://127.0.0.1:12381 uses https, which needs "
        "--cert-file and --key-file"
    )


def test_certificates_need_an_https_url(certs: DevCertFiles) -> None:
    argv = [*tls_urls(client="http://127.0.0.1:12379"), *client_flags(certs), *peer_flags(certs)]
    assert error_of(argv) == (
        "--cert-file and the other client TLS flags are set, but no URL of "
        "--listen-client-urls or --listen-client-http-urls or --listen-metrics-urls uses https://"
    )


def test_a_certificate_needs_its_key_and_the_other_way_round(certs: DevCertFiles) -> None:
    base = tls_urls(peer="http://127.0.0.1:12380")
    assert error_of([*base, f"--cert-file={certs.server_cert}"]) == (
        "--key-file is required with --cert-file"
    )
    assert error_of([*base, f"--key-file={certs.server_key}"]) == (
        "--cert-file is required with --key-file"
    )
    assert error_of([*base, "--client-cert-auth"]) == "--cert-file is required with --key-file"


def test_client_cert_auth_needs_a_trusted_ca(certs: DevCertFiles) -> None:
    argv = [
        *tls_urls(client="http://127.0.0.1:12379"),
        f"--peer-cert-file={certs.peer_cert}",
        f"--peer-key-file={certs.peer_key}",
        "--peer-client-cert-auth=true",
    ]
    assert error_of(argv) == (
        "--peer-client-cert-auth needs --peer-trusted-ca-file: raftkv verifies client "
        "certificates against that CA only"
    )


def test_files_must_exist_and_be_readable(certs: DevCertFiles, tmp_path: Path) -> None:
    base = [*tls_urls(peer="http://127.0.0.1:12380"), f"--key-file={certs.server_key}"]
    missing = tmp_path / "missing.crt"
    assert error_of([*base, f"--cert-file={missing}"]) == (
        f"--cert-file: {missing}: cannot read it: No such file or directory"
    )
    assert error_of([*base, f"--cert-file={tmp_path}"]) == (
        f"--cert-file: {tmp_path}: cannot read it: Is a directory"
    )
    environ = {"ETCD_TRUSTED_CA_FILE": str(missing), "ETCD_CERT_FILE": str(certs.server_cert)}
    assert error_of(base, environ) == (
        f"ETCD_TRUSTED_CA_FILE (--trusted-ca-file): {missing}: cannot read it: "
        "No such file or directory"
    )


def test_a_key_that_is_not_the_certificates_is_refused(certs: DevCertFiles) -> None:
    argv = [
        *tls_urls(peer="http://127.0.0.1:12380"),
        f"--cert-file={certs.server_cert}",
        f"--key-file={certs.peer_key}",
    ]
    message = error_of(argv)
    assert message.startswith(
        f"--cert-file, --key-file: {certs.server_cert} and {certs.peer_key} are not a "
        "certificate and its key: "
    )


def test_a_ca_file_that_is_not_a_certificate_is_refused(
    certs: DevCertFiles, tmp_path: Path
) -> None:
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    argv = [
        *tls_urls(peer="http://127.0.0.1:12380"),
        f"--cert-file={certs.server_cert}",
        f"--key-file={certs.server_key}",
        f"--trusted-ca-file={garbage}",
    ]
    assert error_of(argv).startswith(
        f"--cert-file, --key-file, --trusted-ca-file: {garbage}: not a PEM CA certificate"
    )


def test_etcds_nested_config_file_sections(certs: DevCertFiles, tmp_path: Path) -> None:
    config_file = tmp_path / "etcd.conf.yml"
    config_file.write_text(
        "name: a\n"
        f"listen-client-urls: {CLIENT}\n"
        f"advertise-client-urls: {CLIENT}\n"
        f"listen-peer-urls: {PEER}\n"
        f"initial-advertise-peer-urls: {PEER}\n"
        f"initial-cluster: a={PEER}\n"
        "client-transport-security:\n"
        f"  cert-file: {certs.server_cert}\n"
        f"  key-file: {certs.server_key}\n"
        "  client-cert-auth: true\n"
        f"  trusted-ca-file: {certs.ca_cert}\n"
        "  auto-tls: false\n"
        "peer-transport-security:\n"
        f"  cert-file: {certs.peer_cert}\n"
        f"  key-file: {certs.peer_key}\n"
        "  client-cert-auth: false\n"
        "  auto-tls: true\n",
        encoding="utf-8",
    )
    config = load_config([f"--config-file={config_file}"], {})
    assert config.client_tls == TlsFiles(
        str(certs.server_cert), str(certs.server_key), str(certs.ca_cert), True
    )
    assert config.peer_tls == TlsFiles(str(certs.peer_cert), str(certs.peer_key))
    assert [w for w in config.warnings if "transport-security" in w] == [
        f"ignoring {config_file}: peer-transport-security.auto-tls: raftkv does not implement "
        "this etcd setting"
    ]
    config_file.write_text("client-transport-security:\n  cert-fil: x\n", encoding="utf-8")
    assert error_of([f"--config-file={config_file}"]) == (
        f"{config_file}: unknown key client-transport-security.cert-fil"
    )
    config_file.write_text("peer-transport-security: yes\n", encoding="utf-8")
    assert error_of([f"--config-file={config_file}"]) == (
        f"{config_file}: peer-transport-security: expected a mapping of TLS settings"
    )
