"""Auth through the real gRPC server (in process, over a LocalNode): every RPC family is
refused without a token, with a forged or expired token, and to a user lacking the
permission, with etcd's codes and messages; what a role grants works."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from raftkv import limits
from raftkv.api import authz
from raftkv.api.election import add_election_and_lock
from raftkv.api.etcdpb.authpb import auth_pb2
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.v3electionpb import v3election_pb2, v3election_pb2_grpc
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from raftkv.api.server import ApiOptions, start_grpc_server_bound
from raftkv.server.auth import errors
from raftkv.server.requests import AuthEnableRequest
from tests.api.conftest import ApiServer, Stubs
from tests.api.helpers import WatchStream, rpc_error, status_of
from tests.api.local_node import LocalNode

Metadata = tuple[tuple[str, str], ...]
CALL_TIMEOUT_S = 10.0
ROOT_PASSWORD = "root-pw-7f3a"
ALICE_PASSWORD = "alice-pw-91c2"
USER_EMPTY = (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
DENIED = (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
INVALID_TOKEN = (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")


class AuthApiServer(ApiServer):
    """The API server with Election and Lock too, and fast bcrypt."""

    async def _start(self) -> None:
        self.node = LocalNode(self.directory)
        self.node.auth.bcrypt_cost = limits.AUTH_BCRYPT_COST_MIN
        await self.node.start()
        bound = await start_grpc_server_bound(
            self.node,
            ["127.0.0.1:0"],
            self.options,
            extra_servicers=lambda server: add_election_and_lock(server, self.node),
        )
        self.server = bound.server
        self.endpoint = f"127.0.0.1:{bound.ports[0]}"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AuthApiServer]:
    server = AuthApiServer(tmp_path / "node", ApiOptions())
    try:
        server.start()
        yield server
    finally:
        server.stop()


def token_metadata(token: str) -> Metadata:
    return (("token", token),)


def authenticate(api: Stubs, name: str, password: str) -> Metadata:
    answer = api.auth.Authenticate(
        rpc_pb2.AuthenticateRequest(name=name, password=password), timeout=CALL_TIMEOUT_S
    )
    return token_metadata(answer.token)


def prefix_permission(kind: auth_pb2.Permission.Type, prefix: bytes) -> auth_pb2.Permission:
    return auth_pb2.Permission(permType=kind, key=prefix, range_end=prefix[:-1] + b"0")


@pytest.fixture
def secured(api: AuthApiServer) -> tuple[Metadata, Metadata]:
    return secure(api)


def secure(api: Stubs) -> tuple[Metadata, Metadata]:
    """root, and alice with readwrite on the prefix /p/ and read on /a; a lease of root's
    holding /secret; auth enabled. (root's token, alice's token)"""
    auth = api.auth
    auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password=ROOT_PASSWORD))
    auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="alice", password=ALICE_PASSWORD))
    auth.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="r1"))
    for perm in (
        prefix_permission(auth_pb2.Permission.READWRITE, b"/p/"),
        auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"/a"),
    ):
        auth.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(name="r1", perm=perm))
    auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="r1"))
    api.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=77, TTL=600))
    api.kv.Put(rpc_pb2.PutRequest(key=b"/secret", value=b"s", lease=77))
    auth.AuthEnable(rpc_pb2.AuthEnableRequest())
    return authenticate(api, "root", ROOT_PASSWORD), authenticate(api, "alice", ALICE_PASSWORD)


SECRET = b"/secret"


def calls(api: Stubs) -> dict[str, Callable[[Metadata], object]]:
    """One call per RPC that needs credentials, each touching /secret where it can."""
    election = v3election_pb2_grpc.ElectionStub(api._channel)
    lock = v3lock_pb2_grpc.LockStub(api._channel)
    read_secret = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=SECRET))
    disarm = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE)
    grant_all = rpc_pb2.AuthRoleGrantPermissionRequest(
        name="r1", perm=prefix_permission(auth_pb2.Permission.READWRITE, b"/")
    )
    unary: dict[str, tuple[Callable[..., Any], Any]] = {
        "Range": (api.kv.Range, rpc_pb2.RangeRequest(key=SECRET)),
        "Put": (api.kv.Put, rpc_pb2.PutRequest(key=SECRET, value=b"x")),
        "DeleteRange": (api.kv.DeleteRange, rpc_pb2.DeleteRangeRequest(key=SECRET)),
        "Txn": (api.kv.Txn, rpc_pb2.TxnRequest(success=[read_secret])),
        "LeaseRevoke": (api.lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=77)),
        "LeaseTimeToLive": (
            api.lease.LeaseTimeToLive,
            rpc_pb2.LeaseTimeToLiveRequest(ID=77, keys=True),
        ),
        "LeaseLeases": (api.lease.LeaseLeases, rpc_pb2.LeaseLeasesRequest()),
        "MemberAdd": (
            api.cluster.MemberAdd,
            rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:9"]),
        ),
        "MemberRemove": (api.cluster.MemberRemove, rpc_pb2.MemberRemoveRequest(ID=1)),
        "MemberUpdate": (api.cluster.MemberUpdate, rpc_pb2.MemberUpdateRequest(ID=1)),
        "MemberPromote": (api.cluster.MemberPromote, rpc_pb2.MemberPromoteRequest(ID=1)),
        "Defragment": (api.maintenance.Defragment, rpc_pb2.DefragmentRequest()),
        "Hash": (api.maintenance.Hash, rpc_pb2.HashRequest()),
        "HashKV": (api.maintenance.HashKV, rpc_pb2.HashKVRequest()),
        "MoveLeader": (api.maintenance.MoveLeader, rpc_pb2.MoveLeaderRequest(targetID=1)),
        "AlarmDisarm": (api.maintenance.Alarm, disarm),
        "AuthStatus": (api.auth.AuthStatus, rpc_pb2.AuthStatusRequest()),
        "AuthDisable": (api.auth.AuthDisable, rpc_pb2.AuthDisableRequest()),
        "UserAdd": (api.auth.UserAdd, rpc_pb2.AuthUserAddRequest(name="mallory", password="m")),
        "UserList": (api.auth.UserList, rpc_pb2.AuthUserListRequest()),
        "UserGetRoot": (api.auth.UserGet, rpc_pb2.AuthUserGetRequest(name="root")),
        "RoleGetRoot": (api.auth.RoleGet, rpc_pb2.AuthRoleGetRequest(role="root")),
        "RoleGrant": (api.auth.RoleGrantPermission, grant_all),
        "Campaign": (election.Campaign, v3election_pb2.CampaignRequest(name=SECRET, value=b"v")),
        "Leader": (election.Leader, v3election_pb2.LeaderRequest(name=SECRET)),
        "Lock": (lock.Lock, v3lock_pb2.LockRequest(name=SECRET)),
        # Streams: the requests go in as an iterator, the answers are drained.
        "LeaseKeepAlive": (api.lease.LeaseKeepAlive, iter([rpc_pb2.LeaseKeepAliveRequest(ID=77)])),
        "Snapshot": (api.maintenance.Snapshot, rpc_pb2.SnapshotRequest()),
    }
    streams = {"LeaseKeepAlive", "Snapshot"}
    return {
        name: functools.partial(_invoke, method, request, name in streams)
        for name, (method, request) in unary.items()
    }


def _invoke(method: Callable[..., Any], request: Any, drain: bool, metadata: Metadata) -> object:
    answer = method(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
    return list(answer) if drain else answer


def refusal(call: Callable[[Metadata], object], metadata: Metadata) -> tuple[Any, Any]:
    return status_of(rpc_error(functools.partial(call, metadata)))


# Lock and Election answer with code UNKNOWN and etcd's message, as etcd's do.
RECIPES = {"Campaign", "Leader", "Lock"}


# Calls with no key of their own need only a user (etcd's requireAuthInfo).
def user_only_calls(api: Stubs) -> dict[str, Callable[[Metadata], object]]:
    return {
        "Compact": functools.partial(
            _invoke, api.kv.Compact, rpc_pb2.CompactionRequest(revision=1), False
        ),
        "LeaseGrant": functools.partial(
            _invoke, api.lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=60), False
        ),
    }


def expect(name: str, expected: tuple[grpc.StatusCode, str]) -> tuple[grpc.StatusCode, str]:
    return (grpc.StatusCode.UNKNOWN, expected[1]) if name in RECIPES else expected


@pytest.mark.parametrize("read", ["Range", "read-only Txn"])
def test_a_read_is_checked_after_its_barrier_when_auth_was_enabled_meanwhile(
    api: AuthApiServer, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A linearizable read that began on a member which had not yet applied AuthEnable is
    checked once its read barrier has brought the member up to date, as etcd checks a
    read only after the barrier: it must not answer without credentials."""
    auth = api.auth
    auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password=ROOT_PASSWORD))
    auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    api.kv.Put(rpc_pb2.PutRequest(key=SECRET, value=b"s"))
    node = api.node
    barrier = node.read_barrier

    async def auth_enabled_during_the_barrier() -> None:
        # What another member's client did meanwhile, applied while this read waits.
        await node.propose(AuthEnableRequest())
        await barrier()

    monkeypatch.setattr(node, "read_barrier", auth_enabled_during_the_barrier)
    range_secret = rpc_pb2.RangeRequest(key=SECRET)
    calls = {
        "Range": lambda: api.kv.Range(range_secret),
        "read-only Txn": lambda: api.kv.Txn(
            rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=range_secret)])
        ),
    }
    assert status_of(rpc_error(calls[read])) == USER_EMPTY
    assert node.auth.enabled


def test_every_rpc_is_refused_without_a_token(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    check_refused_without_a_token(api, secured)


def check_refused_without_a_token(api: Stubs, secured: tuple[Metadata, Metadata]) -> None:
    for name, call in calls(api).items():
        assert refusal(call, ()) == expect(name, USER_EMPTY), name
    for name, call in user_only_calls(api).items():
        assert refusal(call, ()) == USER_EMPTY, name
    range_ = api.kv.Range(rpc_pb2.RangeRequest(key=b"/secret"), metadata=secured[0])
    assert [kv.value for kv in range_.kvs] == [b"s"]  # nothing above changed it


def test_every_rpc_is_refused_to_a_user_lacking_the_permission(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    check_refused_to_a_user_lacking_the_permission(api, secured)


def check_refused_to_a_user_lacking_the_permission(
    api: Stubs, secured: tuple[Metadata, Metadata]
) -> None:
    _, alice = secured
    for name, call in calls(api).items():
        assert refusal(call, alice) == expect(name, DENIED), name
    range_ = api.kv.Range(rpc_pb2.RangeRequest(key=b"/secret"), metadata=secured[0])
    assert [kv.value for kv in range_.kvs] == [b"s"]  # nothing above changed it


def test_root_may_do_what_alice_may_not(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    root, _ = secured
    api.kv.Put(rpc_pb2.PutRequest(key=b"/secret", value=b"new", ignore_lease=True), metadata=root)
    assert api.auth.UserList(rpc_pb2.AuthUserListRequest(), metadata=root).users == [
        "alice",
        "root",
    ]
    ttl = api.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=77, keys=True), metadata=root)
    assert list(ttl.keys) == [b"/secret"]
    status = api.auth.AuthStatus(rpc_pb2.AuthStatusRequest(), metadata=root)
    assert status.enabled


def test_alice_may_do_what_her_role_grants(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    check_what_a_role_grants(api, secured)


def check_what_a_role_grants(api: Stubs, secured: tuple[Metadata, Metadata]) -> None:
    _, alice = secured
    api.kv.Put(rpc_pb2.PutRequest(key=b"/p/1", value=b"v"), metadata=alice)
    got = api.kv.Range(rpc_pb2.RangeRequest(key=b"/p/", range_end=b"/p0"), metadata=alice)
    assert [kv.key for kv in got.kvs] == [b"/p/1"]
    api.kv.Range(rpc_pb2.RangeRequest(key=b"/a"), metadata=alice)
    # A txn whose ops are all hers succeeds; one forbidden op refuses all of it.
    txn = rpc_pb2.TxnRequest(
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/p/2", value=b"v")),
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/a", value=b"v")),
        ]
    )
    assert status_of(rpc_error(lambda: api.kv.Txn(txn, metadata=alice))) == DENIED
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"/p/2"), metadata=alice).count == 0
    del txn.success[1]
    assert api.kv.Txn(txn, metadata=alice).succeeded
    # Her own user and role, and the recipes on her prefix.
    assert api.auth.UserGet(rpc_pb2.AuthUserGetRequest(name="alice"), metadata=alice).roles == [
        "r1"
    ]
    assert len(api.auth.RoleGet(rpc_pb2.AuthRoleGetRequest(role="r1"), metadata=alice).perm) == 2
    lock = v3lock_pb2_grpc.LockStub(api._channel)
    held = lock.Lock(v3lock_pb2.LockRequest(name=b"/p/lock"), metadata=alice, timeout=10)
    lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), metadata=alice, timeout=10)
    granted = api.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), metadata=alice)
    api.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=granted.ID), metadata=alice)


def test_a_watch_on_a_forbidden_range_is_canceled_and_others_work(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    check_watch_on_a_forbidden_range(api, secured)


def check_watch_on_a_forbidden_range(api: Stubs, secured: tuple[Metadata, Metadata]) -> None:
    _, alice = secured
    stream = WatchStream(api.watch.Watch, alice)
    try:
        stream.create(b"/secret")
        refused = stream.receive()
        assert refused.created and refused.canceled
        assert refused.cancel_reason == (
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        )
        stream.create(b"/p/", range_end=b"/p0")
        created = stream.receive()
        assert created.created and not created.canceled
        api.kv.Put(rpc_pb2.PutRequest(key=b"/p/w", value=b"v"), metadata=alice)
        event = stream.receive()
        assert [e.kv.key for e in event.events] == [b"/p/w"]
    finally:
        stream.close()
    anonymous = WatchStream(api.watch.Watch, None)
    try:
        anonymous.create(b"/p/x")
        assert anonymous.receive().cancel_reason == (
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
        )
    finally:
        anonymous.close()


def test_forged_and_expired_tokens_are_refused(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    root, _ = secured
    read = rpc_pb2.RangeRequest(key=b"/secret")
    ranges = functools.partial(_invoke, api.kv.Range, read, False)
    for forged in ("forged.1", "x" * 40 + ".999999", "garbage", root[0][1] + "x"):
        assert refusal(ranges, token_metadata(forged)) == INVALID_TOKEN, forged
    # etcd also takes the token as "authorization" metadata.
    api.kv.Range(read, metadata=(("authorization", root[0][1]),))
    api.run(lambda: setattr(api.node.auth.tokens, "ttl_s", 0.3))
    short_lived = authenticate(api, "root", ROOT_PASSWORD)
    api.kv.Range(read, metadata=short_lived)
    time.sleep(0.5)
    assert status_of(rpc_error(lambda: api.kv.Range(read, metadata=short_lived))) == INVALID_TOKEN


def test_changing_a_password_or_deleting_a_user_ends_its_tokens(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    root, alice = secured
    read = rpc_pb2.RangeRequest(key=b"/a")
    api.kv.Range(read, metadata=alice)
    api.auth.UserChangePassword(
        rpc_pb2.AuthUserChangePasswordRequest(name="alice", password="n3w"), metadata=root
    )
    assert status_of(rpc_error(lambda: api.kv.Range(read, metadata=alice))) == INVALID_TOKEN
    wrong = rpc_error(lambda: authenticate(api, "alice", ALICE_PASSWORD))
    assert status_of(wrong) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "etcdserver: authentication failed, invalid user ID or password",
    )
    fresh = authenticate(api, "alice", "n3w")
    api.kv.Range(read, metadata=fresh)
    api.auth.UserDelete(rpc_pb2.AuthUserDeleteRequest(name="alice"), metadata=root)
    assert status_of(rpc_error(lambda: api.kv.Range(read, metadata=fresh))) == INVALID_TOKEN


def test_open_calls_need_no_token(api: AuthApiServer, secured: tuple[Metadata, Metadata]) -> None:
    api.maintenance.Status(rpc_pb2.StatusRequest())
    api.maintenance.Alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET))
    assert len(api.cluster.MemberList(rpc_pb2.MemberListRequest()).members) == 1


def test_passwords_are_stored_only_as_salted_hashes(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    data = b"".join(path.read_bytes() for path in Path(api.directory).rglob("*") if path.is_file())
    assert ROOT_PASSWORD.encode() not in data and ALICE_PASSWORD.encode() not in data
    for token in (secured[0][0][1], secured[1][0][1]):
        assert token.encode() not in data and token.split(".")[0].encode() not in data
    root = api.run(lambda: api.node.auth.user("root"))
    assert root is not None and root.password_hash.startswith(b"$2")


class FakeContext:
    """What authz reads of a gRPC context: the call's metadata."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Metadata:
        return self._metadata


def test_a_read_checked_before_an_auth_change_is_checked_again_after_it(
    api: AuthApiServer, secured: tuple[Metadata, Metadata]
) -> None:
    root, alice = secured
    read = rpc_pb2.RangeRequest(key=b"/a")
    write = rpc_pb2.TxnRequest(
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/p/t", value=b"v"))]
    )
    node = api.node

    async def checked(request: object, policy: authz.Policy) -> authz.CallAuth:
        context: Any = FakeContext(alice)
        return await authz.begin(node, context, policy, request)

    context: Any = FakeContext(alice)
    read_call = api.call(checked(read, authz.Policy.RANGE))
    write_call = api.call(checked(write, authz.Policy.TXN))

    def finish_read() -> None:
        authz.finish(node, read_call, context, authz.Policy.RANGE, read)

    api.run(finish_read)  # nothing changed: the answer stands
    api.auth.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="unrelated"), metadata=root)
    api.run(finish_read)  # still permitted under the store the answer was read from
    # a write was checked when applied
    api.run(lambda: authz.finish(node, write_call, context, authz.Policy.TXN, write))
    api.auth.RoleRevokePermission(
        rpc_pb2.AuthRoleRevokePermissionRequest(role="r1", key=b"/a"), metadata=root
    )
    with pytest.raises(errors.PermissionDeniedError):
        api.run(finish_read)
    api.auth.UserChangePassword(
        rpc_pb2.AuthUserChangePasswordRequest(name="alice", password="n3w"), metadata=root
    )
    with pytest.raises(errors.InvalidAuthTokenError):
        api.run(finish_read)
