"""Acceptance: a 3-member ``raftkv serve`` cluster with mutual TLS on its client, gateway and
peer URLs (``https://``, as etcd), driven by etcd's own etcdctl and by raftkv's client.

It serves clients with a certificate of its CA, and refuses a client without one, a
client whose certificate another CA signed, a plaintext client (fast, never a hang) and a
peer whose certificate another CA signed (and the members' logs say why).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.certs import DevCertFiles, generate_dev_certs
from raftkv.client import ClientTLS, SyncClient
from raftkv.verify.cluster import etcdctl_command, free_ports, log_tail

HOST = "127.0.0.1"
TOKEN = "tls-test"
START_TIMEOUT_S = 30.0
# etcdctl gives up on a refused connection after its dial timeout; the bound a refusal
# must stay under (the acceptance criterion: fast, never a hang).
REFUSAL_BOUND_S = 5.0


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    gateway_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{HOST}:{self.peer_port}"

    @property
    def gateway_url(self) -> str:
        return f"https://{HOST}:{self.gateway_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def plan(root: Path, names: Sequence[str]) -> list[Member]:
    ports = free_ports(3 * len(names))
    return [
        Member(
            name,
            *ports[3 * index : 3 * index + 3],
            data_dir=root / name,
            log_path=root / f"{name}.log",
        )
        for index, name in enumerate(names)
    ]


def tls_flags(certs: DevCertFiles, trusted: DevCertFiles) -> list[str]:
    """Mutual TLS on both sides with ``certs``' certificates, trusting ``trusted``'s CA."""
    return [
        f"--cert-file={certs.server_cert}",
        f"--key-file={certs.server_key}",
        f"--trusted-ca-file={trusted.ca_cert}",
        "--client-cert-auth",
        f"--peer-cert-file={certs.peer_cert}",
        f"--peer-key-file={certs.peer_key}",
        f"--peer-trusted-ca-file={trusted.ca_cert}",
        "--peer-client-cert-auth",
    ]


def spawn(member: Member, initial_cluster: str, state: str, flags: list[str]) -> None:
    command = [
        sys.executable,
        "-m",
        "raftkv",
        "serve",
        f"--name={member.name}",
        f"--data-dir={member.data_dir}",
        f"--listen-client-urls={member.client_url}",
        f"--advertise-client-urls={member.client_url}",
        f"--listen-client-http-urls={member.gateway_url}",
        f"--listen-peer-urls={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={state}",
        f"--initial-cluster-token={TOKEN}",
        *flags,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "RAFTKV_"))}
    env["PYTHONUNBUFFERED"] = "1"
    with member.log_path.open("ab") as log_file:
        member.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, killed whole at the end
        )


def kill(member: Member) -> None:
    if member.process is None:
        return
    with suppress(ProcessLookupError):
        os.killpg(member.process.pid, signal.SIGKILL)
    member.process.wait()


@dataclass
class TlsCluster:
    members: list[Member]
    certs: DevCertFiles
    other_certs: DevCertFiles
    root: Path

    @property
    def endpoints(self) -> list[str]:
        return [member.client_url for member in self.members]

    def client_tls(self) -> ClientTLS:
        return ClientTLS(self.certs.ca_cert, self.certs.client_cert, self.certs.client_key)

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n{log_tail(m.log_path)}" for m in self.members)


def wait_for_leader(cluster: TlsCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for member in cluster.members:
            assert member.process is not None and member.process.poll() is None, cluster.logs()
        try:
            with SyncClient(
                cluster.endpoints, tls=cluster.client_tls(), connect_timeout_s=1.0
            ) as client:
                leaders = {client.status(endpoint).leader for endpoint in cluster.endpoints}
            if len(leaders) == 1 and 0 not in leaders:
                return
        except Exception as error:  # not up yet
            last_error = error
        time.sleep(0.2)
    raise AssertionError(f"no leader in time ({last_error!r})\n{cluster.logs()}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    root = tmp_path_factory.mktemp("tls-cluster")
    certs = generate_dev_certs(root / "certs", [HOST, "localhost"])
    other_certs = generate_dev_certs(root / "other-certs", [HOST, "localhost"])
    members = plan(root, ["m1", "m2", "m3"])
    initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    tls_cluster = TlsCluster(members, certs, other_certs, root)
    with ExitStack() as cleanup:
        for member in members:
            cleanup.callback(kill, member)
            spawn(member, initial_cluster, "new", tls_flags(certs, certs))
        wait_for_leader(tls_cluster)
        yield tls_cluster


def etcdctl(
    cluster: TlsCluster, *args: str, endpoints: Sequence[str] | None = None, tls: Sequence[str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    command = etcdctl_command(list(endpoints or cluster.endpoints), 2.0, "--dial-timeout=1s")
    started = time.monotonic()
    completed = subprocess.run(
        [*command, *tls, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return completed, time.monotonic() - started


def good_tls(cluster: TlsCluster) -> list[str]:
    certs = cluster.certs
    return [f"--cacert={certs.ca_cert}", f"--cert={certs.client_cert}", f"--key={certs.client_key}"]


def test_etcdctl_with_certificates_works_through_every_member(cluster: TlsCluster) -> None:
    first, second, third = cluster.members
    put, _ = etcdctl(
        cluster, "put", "greeting", "hello", endpoints=[first.client_url], tls=good_tls(cluster)
    )
    assert put.returncode == 0 and put.stdout == "OK\n", put.stderr
    for member in (second, third):  # linearizable reads: the leader is asked over peer TLS
        got, _ = etcdctl(
            cluster, "get", "greeting", endpoints=[member.client_url], tls=good_tls(cluster)
        )
        assert got.returncode == 0 and got.stdout == "greeting\nhello\n", got.stderr
    listed, _ = etcdctl(cluster, "member", "list", "-w", "json", tls=good_tls(cluster))
    assert listed.returncode == 0, listed.stderr
    members = json.loads(listed.stdout)["members"]
    assert sorted(m["peerURLs"][0] for m in members) == sorted(m.peer_url for m in cluster.members)
    assert sorted(m["clientURLs"][0] for m in members) == sorted(cluster.endpoints)


def test_etcdctl_without_a_client_certificate_is_refused(cluster: TlsCluster) -> None:
    refused, elapsed_s = etcdctl(
        cluster, "get", "greeting", tls=[f"--cacert={cluster.certs.ca_cert}"]
    )
    assert refused.returncode != 0 and "hello" not in refused.stdout
    assert elapsed_s < REFUSAL_BOUND_S


def test_etcdctl_with_a_certificate_of_another_ca_is_refused(cluster: TlsCluster) -> None:
    other = cluster.other_certs
    # It trusts the cluster's CA: only its own certificate is wrong.
    tls = [
        f"--cacert={cluster.certs.ca_cert}",
        f"--cert={other.client_cert}",
        f"--key={other.client_key}",
    ]
    refused, elapsed_s = etcdctl(cluster, "get", "greeting", tls=tls)
    assert refused.returncode != 0 and "hello" not in refused.stdout
    assert elapsed_s < REFUSAL_BOUND_S


def test_etcdctl_refuses_members_of_another_ca(cluster: TlsCluster) -> None:
    other = cluster.other_certs
    tls = [f"--cacert={other.ca_cert}", f"--cert={other.client_cert}", f"--key={other.client_key}"]
    refused, elapsed_s = etcdctl(cluster, "get", "greeting", tls=tls)
    assert refused.returncode != 0 and "hello" not in refused.stdout
    assert "certificate signed by unknown authority" in refused.stderr
    assert elapsed_s < REFUSAL_BOUND_S


def test_a_plaintext_grpc_client_fails_fast_and_clearly(cluster: TlsCluster) -> None:
    address = cluster.endpoints[0].removeprefix("https://")
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Range(rpc_pb2.RangeRequest(key=b"greeting"), timeout=REFUSAL_BOUND_S + 5)
    assert time.monotonic() - started < REFUSAL_BOUND_S
    error = raised.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "failed to connect" in (error.details() or "")
    plaintext, elapsed_s = etcdctl(
        cluster, "get", "greeting", endpoints=[f"http://{address}"], tls=[]
    )
    assert plaintext.returncode != 0 and elapsed_s < REFUSAL_BOUND_S


def test_the_python_client_speaks_tls(cluster: TlsCluster) -> None:
    with SyncClient(cluster.endpoints, tls=cluster.client_tls()) as client:
        client.put("from-python", "yes")
        assert client.get("from-python").kvs[0].value == b"yes"
    started = time.monotonic()
    with pytest.raises(Exception, match="no endpoint"):
        SyncClient([cluster.endpoints[0].removeprefix("https://")], connect_timeout_s=10.0)
    assert time.monotonic() - started < REFUSAL_BOUND_S
    other = cluster.other_certs
    stranger = ClientTLS(cluster.certs.ca_cert, other.client_cert, other.client_key)
    with (
        pytest.raises(Exception, match="no endpoint"),
        SyncClient(cluster.endpoints[:1], tls=stranger, connect_timeout_s=3.0) as client,
    ):
        client.get("from-python")


def gateway_request(
    member: Member, path: str, body: bytes | None, context: ssl.SSLContext
) -> tuple[int, bytes]:
    connection = http.client.HTTPSConnection(HOST, member.gateway_port, context=context, timeout=10)
    try:
        connection.request("POST" if body is not None else "GET", path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_json_gateway_serves_https_to_certified_clients(cluster: TlsCluster) -> None:
    certs = cluster.certs
    member = cluster.members[1]
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    status, body = gateway_request(
        member, "/v3/kv/put", b'{"key": "Z3c=", "value": "b2s="}', context
    )
    assert status == 200, body
    status, body = gateway_request(member, "/v3/kv/range", b'{"key": "Z3c="}', context)
    assert status == 200 and json.loads(body)["kvs"][0]["value"] == "b2s=", body
    status, body = gateway_request(member, "/health", None, context)
    assert status == 200 and json.loads(body)["health"] == "true", body
    anonymous = ssl.create_default_context(cafile=str(certs.ca_cert))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        gateway_request(member, "/health", None, anonymous)
    with socket.create_connection((HOST, member.gateway_port), timeout=REFUSAL_BOUND_S) as plain:
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := plain.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert answer.endswith(b"Client sent an HTTP request to an HTTPS server.\n")


def log_lines_with(member: Member, *parts: str) -> list[str]:
    return [line for line in member.log().splitlines() if all(part in line for part in parts)]


def test_a_peer_with_a_certificate_of_another_ca_cannot_join(cluster: TlsCluster) -> None:
    (intruder,) = plan(cluster.root, ["m4"])
    added, _ = etcdctl(
        cluster,
        "member",
        "add",
        "m4",
        f"--peer-urls={intruder.peer_url}",
        "--learner",
        tls=good_tls(cluster),
    )
    assert added.returncode == 0, added.stderr
    initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in [*cluster.members, intruder])
    refused = ("peer listener: refused a connection", "CERTIFICATE_VERIFY_FAILED")
    told = ("cannot start", "did it refuse our TLS certificate")
    try:
        # It trusts the cluster's CA; its own certificates come from another CA. Joining,
        # it first asks every member for the member list (to learn its ID): each member's
        # listener refuses the intruder's certificate, and the intruder exits, told why.
        spawn(intruder, initial_cluster, "existing", tls_flags(cluster.other_certs, cluster.certs))
        assert intruder.process is not None
        assert intruder.process.wait(timeout=30.0) == 1, intruder.log()
        for member in cluster.members:
            assert log_lines_with(member, *refused), cluster.logs()
        assert log_lines_with(intruder, *told), intruder.log()
        # It never joined: it did not publish its name, no snapshot reached it.
        listed, _ = etcdctl(cluster, "member", "list", "-w", "json", tls=good_tls(cluster))
        members = json.loads(listed.stdout)["members"]
        (joined,) = [m for m in members if m["peerURLs"] == [intruder.peer_url]]
        assert joined.get("name", "") == "", "the intruder published its name: it joined"
        assert "received a snapshot" not in intruder.log()
    finally:
        kill(intruder)


CN_USER = "raftkv client"  # the common name of raftkv certs' client certificate
ROOT_PASSWORD = "tls-root-3d9a"


def test_with_client_cert_auth_the_certificate_names_the_user(cluster: TlsCluster) -> None:
    """etcd's rule: with auth on and --client-cert-auth, a call without a token is the
    user named by its certificate's CN. The JSON gateway's own loopback certificate
    never stands for an HTTP client."""
    tls = good_tls(cluster)
    as_root = [f"--user=root:{ROOT_PASSWORD}"]

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return etcdctl(cluster, *args, tls=tls)[0]

    for args in (
        ["user", "add", f"root:{ROOT_PASSWORD}"],
        ["role", "add", "cn-role"],
        ["role", "grant-permission", "cn-role", "readwrite", "/cn/", "--prefix"],
        ["user", "add", CN_USER, "--no-password"],
        ["user", "grant-role", CN_USER, "cn-role"],
        ["auth", "enable"],
    ):
        done = ctl(*args)
        assert done.returncode == 0, (args, done.stderr)
    try:
        assert ctl("put", "/cn/a", "1").returncode == 0  # no --user: the certificate's CN
        assert ctl("get", "/cn/a", "--print-value-only").stdout == "1\n"
        refused = ctl("put", "/elsewhere", "1")
        assert refused.returncode != 0 and "permission denied" in refused.stderr
        refused = ctl("user", "list")  # the CN's user is no root
        assert refused.returncode != 0 and "permission denied" in refused.stderr
        context = ssl.create_default_context(cafile=str(cluster.certs.ca_cert))
        context.load_cert_chain(str(cluster.certs.client_cert), str(cluster.certs.client_key))
        status, body = gateway_request(
            cluster.members[0], "/v3/kv/range", b'{"key": "L2NuL2E="}', context
        )
        assert status == 400 and b"user name is empty" in body, (status, body)
    finally:
        disabled = ctl(*as_root, "auth", "disable")
        assert disabled.returncode == 0, disabled.stderr
