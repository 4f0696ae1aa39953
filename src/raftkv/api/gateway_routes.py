"""The gateway's routes: etcd 3.5's grpc-gateway paths and the gRPC method each calls.

Every route is ``POST`` with the whole body as the request message (``body: "*"``).
The message types and the streaming shape come from the generated descriptors, so
the table only names paths and methods (etcd's ``google.api.http`` annotations in
``rpc.proto``, ``v3election.proto`` and ``v3lock.proto``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.v3electionpb import v3election_pb2
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2


class CallKind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"  # one request message, a stream of responses
    BIDI_STREAM = "bidi_stream"  # the body's messages, a stream of responses


@dataclass(frozen=True, slots=True)
class Route:
    grpc_method: str  # "/etcdserverpb.KV/Range"
    request_type: type[Message]
    response_type: type[Message]
    kind: CallKind
    # Bidi only: end the request stream after the body's messages. The lease
    # keepalive stream then ends once each renewal is answered; a watch stays open
    # until the HTTP client goes (etcd's watch server ignores the end of requests).
    half_close: bool


_SERVICES: dict[str, ServiceDescriptor] = {
    service.full_name: service
    for module in (rpc_pb2, v3election_pb2, v3lock_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
}

# Path -> (service, method). Aliases are etcd's additional_bindings.
_PATHS: dict[str, tuple[str, str]] = {
    "/v3/kv/range": ("etcdserverpb.KV", "Range"),
    "/v3/kv/put": ("etcdserverpb.KV", "Put"),
    "/v3/kv/deleterange": ("etcdserverpb.KV", "DeleteRange"),
    "/v3/kv/txn": ("etcdserverpb.KV", "Txn"),
    "/v3/kv/compaction": ("etcdserverpb.KV", "Compact"),
    "/v3/watch": ("etcdserverpb.Watch", "Watch"),
    "/v3/lease/grant": ("etcdserverpb.Lease", "LeaseGrant"),
    "/v3/lease/revoke": ("etcdserverpb.Lease", "LeaseRevoke"),
    "/v3/kv/lease/revoke": ("etcdserverpb.Lease", "LeaseRevoke"),
    "/v3/lease/keepalive": ("etcdserverpb.Lease", "LeaseKeepAlive"),
    "/v3/lease/timetolive": ("etcdserverpb.Lease", "LeaseTimeToLive"),
    "/v3/kv/lease/timetolive": ("etcdserverpb.Lease", "LeaseTimeToLive"),
    "/v3/lease/leases": ("etcdserverpb.Lease", "LeaseLeases"),
    "/v3/kv/lease/leases": ("etcdserverpb.Lease", "LeaseLeases"),
    "/v3/cluster/member/add": ("etcdserverpb.Cluster", "MemberAdd"),
    "/v3/cluster/member/remove": ("etcdserverpb.Cluster", "MemberRemove"),
    "/v3/cluster/member/update": ("etcdserverpb.Cluster", "MemberUpdate"),
    "/v3/cluster/member/list": ("etcdserverpb.Cluster", "MemberList"),
    "/v3/cluster/member/promote": ("etcdserverpb.Cluster", "MemberPromote"),
    "/v3/maintenance/alarm": ("etcdserverpb.Maintenance", "Alarm"),
    "/v3/maintenance/status": ("etcdserverpb.Maintenance", "Status"),
    "/v3/maintenance/defragment": ("etcdserverpb.Maintenance", "Defragment"),
    "/v3/maintenance/hash": ("etcdserverpb.Maintenance", "Hash"),
    "/v3/maintenance/hashkv": ("etcdserverpb.Maintenance", "HashKV"),
    "/v3/maintenance/snapshot": ("etcdserverpb.Maintenance", "Snapshot"),
    "/v3/maintenance/transfer-leadership": ("etcdserverpb.Maintenance", "MoveLeader"),
    "/v3/maintenance/downgrade": ("etcdserverpb.Maintenance", "Downgrade"),
    "/v3/auth/enable": ("etcdserverpb.Auth", "AuthEnable"),
    "/v3/auth/disable": ("etcdserverpb.Auth", "AuthDisable"),
    "/v3/auth/status": ("etcdserverpb.Auth", "AuthStatus"),
    "/v3/auth/authenticate": ("etcdserverpb.Auth", "Authenticate"),
    "/v3/auth/user/add": ("etcdserverpb.Auth", "UserAdd"),
    "/v3/auth/user/get": ("etcdserverpb.Auth", "UserGet"),
    "/v3/auth/user/list": ("etcdserverpb.Auth", "UserList"),
    "/v3/auth/user/delete": ("etcdserverpb.Auth", "UserDelete"),
    "/v3/auth/user/changepw": ("etcdserverpb.Auth", "UserChangePassword"),
    "/v3/auth/user/grant": ("etcdserverpb.Auth", "UserGrantRole"),
    "/v3/auth/user/revoke": ("etcdserverpb.Auth", "UserRevokeRole"),
    "/v3/auth/role/add": ("etcdserverpb.Auth", "RoleAdd"),
    "/v3/auth/role/get": ("etcdserverpb.Auth", "RoleGet"),
    "/v3/auth/role/list": ("etcdserverpb.Auth", "RoleList"),
    "/v3/auth/role/delete": ("etcdserverpb.Auth", "RoleDelete"),
    "/v3/auth/role/grant": ("etcdserverpb.Auth", "RoleGrantPermission"),
    "/v3/auth/role/revoke": ("etcdserverpb.Auth", "RoleRevokePermission"),
    "/v3/election/campaign": ("v3electionpb.Election", "Campaign"),
    "/v3/election/proclaim": ("v3electionpb.Election", "Proclaim"),
    "/v3/election/leader": ("v3electionpb.Election", "Leader"),
    "/v3/election/observe": ("v3electionpb.Election", "Observe"),
    "/v3/election/resign": ("v3electionpb.Election", "Resign"),
    "/v3/lock/lock": ("v3lockpb.Lock", "Lock"),
    "/v3/lock/unlock": ("v3lockpb.Lock", "Unlock"),
}

# Bidi routes whose request stream stays open after the body (see Route.half_close).
_KEEP_REQUESTS_OPEN = frozenset({"/v3/watch"})


def _route(path: str, service_name: str, method_name: str) -> Route:
    method = _SERVICES[service_name].methods_by_name[method_name]
    assert not (method.client_streaming and not method.server_streaming), (
        f"{method.full_name}: client streaming alone has no gateway mapping"
    )
    if method.client_streaming:
        kind = CallKind.BIDI_STREAM
    elif method.server_streaming:
        kind = CallKind.SERVER_STREAM
    else:
        kind = CallKind.UNARY
    return Route(
        grpc_method=f"/{service_name}/{method_name}",
        request_type=message_factory.GetMessageClass(method.input_type),
        response_type=message_factory.GetMessageClass(method.output_type),
        kind=kind,
        half_close=path not in _KEEP_REQUESTS_OPEN,
    )


ROUTES: dict[str, Route] = {
    path: _route(path, service, method) for path, (service, method) in _PATHS.items()
}

assert all(
    route.kind is CallKind.BIDI_STREAM
    for path, route in ROUTES.items()
    if path in ("/v3/watch", "/v3/lease/keepalive")
)
