"""The deployment's TLS mode against a real member with mutual TLS.

The StatefulSet's start script with ``TLS_ENABLED=true`` must give flags that raftkv accepts
with certificates laid out as the two kubernetes.io/tls Secrets are mounted (tls.crt,
tls.key, ca.crt). With mutual TLS the kubelet's HTTPS probes (no client certificate) are
refused, so the Helm chart then uses exec probes that present the member's certificate:
that probe is run here against a member serving the gateway over TLS.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from raftkv.certs import generate_dev_certs
from raftkv.server.config import load_config
from tests.deploy.test_manifests import (
    NAMESPACE,
    fixed_env,
    free_port,
    helper_body,
    raftkv_container,
    run_start_script,
    statefulset,
    template_as_yaml,
)

SECRETS_MOUNT = "/etc/raftkv/tls"
PROBE_GATEWAY = "https://127.0.0.1:2381"
MEMBER_READY_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.2
STOP_TIMEOUT_S = 10.0


def write_secrets(root: Path, hosts: tuple[str, ...]) -> Path:
    """A CA and certificates for ``hosts``, laid out as the pod mounts its two Secrets:
    ``root/client/{tls.crt,tls.key,ca.crt}`` and ``root/peer/...``."""
    files = generate_dev_certs(root / "generated", hosts)
    for secret, cert, key in (
        ("client", files.server_cert, files.server_key),
        ("peer", files.peer_cert, files.peer_key),
    ):
        (root / secret).mkdir(parents=True)
        shutil.copy(cert, root / secret / "tls.crt")
        shutil.copy(key, root / secret / "tls.key")
        shutil.copy(files.ca_cert, root / secret / "ca.crt")
    return root


def tls_probe_command(secrets: Path, gateway: str, path: str) -> list[str]:
    """The chart's TLS exec probe for ``path``, reading ``secrets`` and probing ``gateway``."""
    probe = yaml.safe_load(template_as_yaml(helper_body("raftkv.probe", "if")))
    python, flag, script, _ = probe["exec"]["command"]
    assert (python, flag) == ("python", "-c")
    assert f"{SECRETS_MOUNT}/client/" in script and PROBE_GATEWAY in script
    script = script.replace(f"{SECRETS_MOUNT}/", f"{secrets}/").replace(PROBE_GATEWAY, gateway)
    return [sys.executable, flag, script, path]


def run_probe(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)


@pytest.fixture(scope="module")
def tls_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(Secrets directory, gateway URL) of a one-member cluster with mutual TLS on every
    URL, using the certificates as the pod mounts them."""
    root = tmp_path_factory.mktemp("tls-member")
    secrets = write_secrets(root / "secrets", ("127.0.0.1", "localhost"))
    client_port, peer_port, gateway_port = free_port(), free_port(), free_port()
    peer_url = f"https://127.0.0.1:{peer_port}"
    command = [
        sys.executable,
        "-m",
        "raftkv",
        "serve",
        "--name=raftkv-0",
        f"--data-dir={root / 'data'}",
        f"--listen-client-urls=https://127.0.0.1:{client_port}",
        f"--advertise-client-urls=https://127.0.0.1:{client_port}",
        f"--listen-client-http-urls=https://127.0.0.1:{gateway_port}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=raftkv-0={peer_url}",
        f"--cert-file={secrets}/client/tls.crt",
        f"--key-file={secrets}/client/tls.key",
        f"--trusted-ca-file={secrets}/client/ca.crt",
        "--client-cert-auth",
        f"--peer-cert-file={secrets}/peer/tls.crt",
        f"--peer-key-file={secrets}/peer/tls.key",
        f"--peer-trusted-ca-file={secrets}/peer/ca.crt",
        "--peer-client-cert-auth",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "RAFTKV_"))}
    log_path = root / "member.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        gateway = f"https://127.0.0.1:{gateway_port}"
        wait_until_ready(tls_probe_command(secrets, gateway, "/readyz"), process, log_path)
        yield secrets, gateway
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def wait_until_ready(probe: list[str], process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + MEMBER_READY_TIMEOUT_S
    while run_probe(probe).returncode != 0:
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(POLL_INTERVAL_S)


def test_the_tls_start_flags_are_accepted_with_the_secrets_as_mounted(tmp_path: Path) -> None:
    hosts = tuple(f"raftkv-{i}.raftkv-peer.{NAMESPACE}.svc.cluster.local" for i in range(3))
    secrets = write_secrets(tmp_path / "secrets", hosts)
    arguments = run_start_script("raftkv-1", {"TLS_ENABLED": "true"}, tmp_path)
    arguments = [arg.replace(f"{SECRETS_MOUNT}/", f"{secrets}/") for arg in arguments]
    environ = {
        key: value
        for key, value in fixed_env(raftkv_container(statefulset())).items()
        if key.startswith("ETCD_")
    }
    config = load_config(arguments, environ)
    assert config.client_tls is not None and config.client_tls.client_cert_auth
    assert config.peer_tls is not None and config.peer_tls.client_cert_auth
    assert config.client_tls.cert_file == f"{secrets}/client/tls.crt"
    assert config.peer_tls.trusted_ca_file == f"{secrets}/peer/ca.crt"
    assert all(url.startswith("https://") for url in config.listen_client_http_urls)
    assert config.warnings == ()


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_the_charts_tls_exec_probe_passes_on_a_healthy_member(
    tls_member: tuple[Path, str], path: str
) -> None:
    secrets, gateway = tls_member
    result = run_probe(tls_probe_command(secrets, gateway, path))
    assert result.returncode == 0, result.stderr


def test_the_tls_exec_probe_fails_with_certificates_of_another_ca(
    tls_member: tuple[Path, str], tmp_path: Path
) -> None:
    _, gateway = tls_member
    strangers = write_secrets(tmp_path / "strangers", ("127.0.0.1",))
    result = run_probe(tls_probe_command(strangers, gateway, "/livez"))
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


def test_a_probe_without_a_client_certificate_is_refused(tls_member: tuple[Path, str]) -> None:
    # What the kubelet's HTTPS probe does: TLS without verifying the server and without a
    # client certificate. Mutual TLS refuses it, hence the exec probes.
    _, gateway = tls_member
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"{gateway}/livez", timeout=PROBE_TIMEOUT_S, context=context)
