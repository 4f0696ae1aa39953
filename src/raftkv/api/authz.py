"""Who may call what: the API's half of etcd's auth checks.

Every RPC passes through ``begin`` (from the ``unary``/``stream`` wrappers of
``raftkv.api.errors`` and the Lock/Election ``handler``), named by its method. While auth
is disabled it does nothing. While it is enabled it

* resolves the client's token (gRPC metadata ``token``, or ``authorization`` as etcd
  also accepts; the JSON gateway sends its ``Authorization`` header as ``token``) into
  an ``AuthInfo``: an unknown or expired token is refused with "invalid auth token". A
  call without a token is, with --client-cert-auth, the user named by the common name
  of its verified client certificate, as in etcd; otherwise it has no credentials. The
  gateway's own calls (marked ``grpcgateway-accept``, etcd's grpc-gateway header) never
  take a certificate's name: the certificate is the member's, not the HTTP client's;
* applies the method's policy (``_POLICIES``), etcd's: Status, MemberList and
  Authenticate are open to all; root may do everything; maintenance (except Status and
  listing alarms), membership changes and auth management need root; UserGet and
  RoleGet also answer a user about itself and its roles; reads need read permission
  on their keys; writes are checked when applied (``raftkv.server.apply``); the lease,
  compaction, watch, Lock and Election calls need a user at least and check keys where
  they touch them;
* publishes the credentials in ``request_auth`` for the rest of the call, so that every
  proposal it makes carries them to the apply step.

A read checked here may be served after an await (a linearizable read waits for the
read index). ``finish`` then checks it again if the auth store changed meanwhile, so a
read never returns what a revoked permission or an ended token no longer covers, and is
refused as etcd refuses a read checked after its read barrier.

Nothing here logs a token or a password.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc.aio

from raftkv.api import convert
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.server.apply import check_op_permitted
from raftkv.server.auth.context import NO_CREDENTIALS, AuthInfo, request_auth
from raftkv.server.auth.errors import InvalidAuthTokenError, go_status_text
from raftkv.server.auth.store import AuthStore
from raftkv.server.interface import NodeAPI
from raftkv.storage.errors import RequestError
from raftkv.storage.mvcc import TxnRequest
from raftkv.storage.mvcc.apply import is_txn_read_only

Context = grpc.aio.ServicerContext[Any, Any]

# etcd's rpctypes.TokenFieldNameGRPC and TokenFieldNameSwagger.
TOKEN_METADATA_KEYS = ("token", "authorization")
# Sent by the JSON gateway on its loopback calls, as etcd's grpc-gateway does.
GATEWAY_METADATA_KEY = "grpcgateway-accept"


class Policy(enum.Enum):
    OPEN = "open"  # credentials are not even looked at
    STREAM = "stream"  # the stream opens; each of its requests is checked
    USER = "user"  # any authenticated user; keys, if any, are checked where touched
    ADMIN = "admin"  # the root role
    RANGE = "range"  # read permission on the request's range
    TXN = "txn"  # a read-only txn: read permission on all it reads; else checked at apply
    WRITE = "write"  # checked at apply; here only the token
    ALARM = "alarm"  # listing is open, raising or clearing needs root
    USER_GET = "user_get"  # root, or a user asking about itself
    ROLE_GET = "role_get"  # root, or a user asking about a role it holds
    LEASE_KEYS = "lease_keys"  # a user; root or read permission on the lease's keys


_POLICIES: dict[str, Policy] = {
    # KV
    "Range": Policy.RANGE,
    "Put": Policy.WRITE,
    "DeleteRange": Policy.WRITE,
    "Txn": Policy.TXN,
    "Compact": Policy.USER,  # etcd lets anyone compact; raftkv wants a user
    # Watch: each create request is checked (watch_refusal) and refused alone
    "Watch": Policy.STREAM,
    # Lease (etcd's newer rules: a user for each; keys where the answer shows them)
    "LeaseGrant": Policy.USER,
    "LeaseRevoke": Policy.USER,  # and write permission on its keys, at apply
    "LeaseKeepAlive": Policy.STREAM,  # each renewal: check_lease_renew
    "LeaseTimeToLive": Policy.LEASE_KEYS,
    "LeaseLeases": Policy.LEASE_KEYS,
    # Cluster
    "MemberAdd": Policy.ADMIN,
    "MemberRemove": Policy.ADMIN,
    "MemberUpdate": Policy.ADMIN,
    "MemberList": Policy.OPEN,
    "MemberPromote": Policy.ADMIN,
    # Maintenance
    "Alarm": Policy.ALARM,
    "Status": Policy.OPEN,
    "Defragment": Policy.ADMIN,
    "Hash": Policy.ADMIN,
    "HashKV": Policy.ADMIN,
    "Snapshot": Policy.ADMIN,
    "MoveLeader": Policy.ADMIN,
    "Downgrade": Policy.ADMIN,
    # Auth
    "Authenticate": Policy.OPEN,
    "AuthEnable": Policy.ADMIN,
    "AuthDisable": Policy.ADMIN,
    "AuthStatus": Policy.ADMIN,
    "UserAdd": Policy.ADMIN,
    "UserGet": Policy.USER_GET,
    "UserList": Policy.ADMIN,
    "UserDelete": Policy.ADMIN,
    "UserChangePassword": Policy.ADMIN,
    "UserGrantRole": Policy.ADMIN,
    "UserRevokeRole": Policy.ADMIN,
    "RoleAdd": Policy.ADMIN,
    "RoleGet": Policy.ROLE_GET,
    "RoleList": Policy.ADMIN,
    "RoleDelete": Policy.ADMIN,
    "RoleGrantPermission": Policy.ADMIN,
    "RoleRevokePermission": Policy.ADMIN,
    # Election and Lock: a user; their reads here, their writes at apply
    "Campaign": Policy.USER,
    "Proclaim": Policy.USER,
    "Leader": Policy.USER,
    "Observe": Policy.USER,
    "Resign": Policy.USER,
    "Lock": Policy.USER,
    "Unlock": Policy.USER,
}


def policy_of(method_name: str) -> Policy:
    """The policy of an RPC; every servicer method must have one (checked at import)."""
    policy = _POLICIES.get(method_name)
    assert policy is not None, f"RPC {method_name} has no auth policy in raftkv.api.authz"
    return policy


@dataclass(frozen=True, slots=True)
class CallAuth:
    """What ``begin`` checked: the credentials and the auth store state it saw."""

    info: AuthInfo
    enabled: bool
    store: AuthStore | None  # None: nothing was checked (auth disabled or an open call)
    # The call answers what it reads under the checked permissions (see ``finish``).
    reads: bool = False
    # Auth was off when the call began: if it is on by the time a read is answered (a
    # linearizable read waits for entries, AuthEnable among them), ``finish`` checks it
    # then, as etcd checks a read only after its read barrier.
    auth_was_off: bool = False


_UNCHECKED = CallAuth(NO_CREDENTIALS, False, None)
_AUTH_OFF = CallAuth(NO_CREDENTIALS, False, None, auth_was_off=True)


async def begin(
    node: NodeAPI, context: Context, policy: Policy, request: object, live: bool = False
) -> CallAuth:
    """Check the call's credentials against ``policy``; raise the refusal. Sets
    ``request_auth`` for the rest of the call (``live`` credentials: see ``AuthInfo``)."""
    store = node.auth
    if policy is Policy.OPEN:
        request_auth.set(NO_CREDENTIALS)
        return _UNCHECKED
    if not store.enabled:
        request_auth.set(NO_CREDENTIALS)
        return _AUTH_OFF
    try:
        info = await resolve(node, context)
    except InvalidAuthTokenError:
        if policy is not Policy.STREAM:
            raise
        info = NO_CREDENTIALS  # each request of the stream will be refused on its own
    store = node.auth  # a snapshot may have replaced it while the token was waited for
    request_auth.set(AuthInfo(info.username, info.revision, live) if live else info)
    reads = _check(node, store, policy, info, request)
    return CallAuth(info, store.enabled, store, reads)


def finish(
    node: NodeAPI, call: CallAuth, context: Context, policy: Policy, request: object
) -> None:
    """After a read: check it again if the auth store changed since ``begin``.

    Nothing awaits between the read and this call, so the store now is the one the answer
    was read under: checking against it is exact. etcd checks a read after its read
    barrier and then refuses it with "revision of auth store is old" if the store moved
    while it was read; a single-threaded member has no such window, so a change that
    leaves the read permitted (an unrelated role added) does not fail it, and one that
    does not (a new password, a revoked permission) gets etcd's answer for it."""
    store = node.auth
    if call.auth_was_off:
        if store.enabled:
            _check_read_now(node, context, policy, request)
        return
    if call.store is None or not call.reads:
        return
    if store is call.store and (store.enabled, store.revision) == (
        call.enabled,
        call.info.revision,
    ):
        return
    _check(node, store, policy, resolve_now(node, context), request)


async def resolve(node: NodeAPI, context: Context) -> AuthInfo:
    """The credentials the call's token stands for (none without a token)."""
    token = _token_of(context)
    if not node.auth.enabled:
        return NO_CREDENTIALS
    if token is None:
        return _certificate_user(node, context)
    username = node.auth.tokens.user_of(token)
    if username is None and node.auth.tokens.may_be_pending(token):
        # Issued through another member, whose Authenticate entry this one has not
        # applied yet: catch up first (etcd waits for the token's index likewise).
        await node.read_barrier()
        if not node.auth.enabled:
            return NO_CREDENTIALS
        username = node.auth.tokens.user_of(token)
    if username is None:
        raise InvalidAuthTokenError()
    return AuthInfo(username, node.auth.revision)


def resolve_now(node: NodeAPI, context: Context) -> AuthInfo:
    """``resolve`` without waiting: for each request of a stream whose token ``begin``
    already resolved (it may have expired or been revoked since)."""
    token = _token_of(context)
    if not node.auth.enabled:
        return NO_CREDENTIALS
    if token is None:
        return _certificate_user(node, context)
    username = node.auth.tokens.user_of(token)
    if username is None:
        raise InvalidAuthTokenError()
    return AuthInfo(username, node.auth.revision)


def _certificate_user(node: NodeAPI, context: Context) -> AuthInfo:
    """etcd's AuthInfoFromTLS: the common name of the client's verified certificate. The
    user need not exist here: the permission checks refuse an unknown one."""
    if not node.client_cert_auth:
        return NO_CREDENTIALS
    if any(key == GATEWAY_METADATA_KEY for key, _ in context.invocation_metadata() or ()):
        return NO_CREDENTIALS
    names = list(context.auth_context().get("x509_common_name") or ())
    if not names or not names[0]:
        return NO_CREDENTIALS
    return AuthInfo(names[0].decode("utf-8", "replace"), node.auth.revision)


def _token_of(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key in TOKEN_METADATA_KEYS and isinstance(value, str):
            return value
    return None


def _check_read_now(node: NodeAPI, context: Context, policy: Policy, request: object) -> None:
    """The check of a read call, against the auth store as it is now. Writes are not
    checked here: their entries were checked when applied."""
    reads = policy is Policy.RANGE or (
        policy is Policy.TXN
        and isinstance(request, rpc_pb2.TxnRequest)
        and is_txn_read_only(convert.txn_request(request))
    )
    if reads:
        _check(node, node.auth, policy, resolve_now(node, context), request)


def _check(
    node: NodeAPI, store: AuthStore, policy: Policy, info: AuthInfo, request: object
) -> bool:
    """Raise the refusal, if any; whether the call is a read answered under the checked
    permissions (a write is checked again when applied)."""
    match policy:
        case Policy.USER:
            store.check_user(info)
        case Policy.ADMIN:
            store.check_admin(info)
        case Policy.RANGE:
            assert isinstance(request, rpc_pb2.RangeRequest)
            store.check_range(info, request.key, request.range_end)
            return True
        case Policy.TXN:
            assert isinstance(request, rpc_pb2.TxnRequest)
            return _check_txn(node, store, info, convert.txn_request(request))
        case Policy.ALARM:
            assert isinstance(request, rpc_pb2.AlarmRequest)
            if request.action != rpc_pb2.AlarmRequest.GET:
                store.check_admin(info)
        case Policy.USER_GET:
            assert isinstance(request, rpc_pb2.AuthUserGetRequest)
            if request.name != info.username or not info.username:
                store.check_admin(info)
        case Policy.ROLE_GET:
            assert isinstance(request, rpc_pb2.AuthRoleGetRequest)
            if not store.has_role(info.username, request.role):
                store.check_admin(info)
        case Policy.LEASE_KEYS:
            store.check_user(info)
            _check_lease_keys(node, store, info, request)
            return True
        case Policy.WRITE | Policy.STREAM | Policy.OPEN:
            pass  # writes are checked whole when applied, streams request by request
    return False


def _check_txn(node: NodeAPI, store: AuthStore, info: AuthInfo, txn: TxnRequest) -> bool:
    """A read-only txn is answered here: check all it reads. A txn that writes is checked
    whole when applied (one forbidden op refuses all of it)."""
    if is_txn_read_only(txn):
        check_op_permitted(store, node.lessor, info, txn)
        return True
    store.check_user(info)
    return False


def _check_lease_keys(node: NodeAPI, store: AuthStore, info: AuthInfo, request: object) -> None:
    """A TTL answer with keys, or the lease list, shows keys: root, or read permission on
    every key shown (etcd's checkLeaseTimeToLive and checkLeaseLeases)."""
    if store.is_admin(info):
        return
    if isinstance(request, rpc_pb2.LeaseTimeToLiveRequest):
        lease_ids: Iterable[int] = [request.ID] if request.keys else []
    else:
        lease_ids = node.lessor.leases()
    for lease_id in lease_ids:
        lease = node.lessor.lookup(lease_id)
        for key in sorted(lease.keys) if lease is not None else ():
            store.check_range(info, key)


# --- Checks inside streams and recipes ------------------------------------------------


def watch_refusal(node: NodeAPI, context: Context, key: bytes, range_end: bytes) -> str | None:
    """Why a watch may not be created (etcd's cancel_reason wording), or None."""
    if not node.auth.enabled:
        return None
    try:
        info = resolve_now(node, context)
        node.auth.check_range(info, key, range_end)
    except RequestError as error:
        return go_status_text(error)
    return None


def check_lease_renew(node: NodeAPI, context: Context, lease_id: int) -> None:
    """A keepalive needs a user, and root or write permission on the lease's keys
    (etcd's checkLeaseRenew): renewing keeps them alive."""
    store = node.auth
    if not store.enabled:
        return
    info = resolve_now(node, context)
    store.check_user(info)
    if store.is_admin(info):
        return
    lease = node.lessor.lookup(lease_id)
    for key in sorted(lease.keys) if lease is not None else ():
        store.check_put(info, key)


def check_read(node: NodeAPI, key: bytes, range_end: bytes = b"") -> None:
    """For the Lock and Election recipes, which read and watch the store themselves:
    the caller (``request_auth``) must be allowed to read the range."""
    store = node.auth
    info = request_auth.get()
    revision = info.revision_now(store.revision)
    store.check_range(AuthInfo(info.username, revision), key, range_end)
