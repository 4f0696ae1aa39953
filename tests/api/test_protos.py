"""The generated etcd v3 schema: names, field numbers, freshness, and wire compatibility
with a real etcd 3.5."""

from __future__ import annotations

import filecmp
import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from raftkv.api.etcdpb.authpb import auth_pb2
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.api.etcdpb.v3electionpb import v3election_pb2
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2
from tests.etcd_process import run_etcd

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED_DIR = REPO_ROOT / "src" / "raftkv" / "api" / "etcdpb"
RPC_TIMEOUT_S = 5.0
GENERATED_PACKAGES = ("mvccpb", "authpb", "etcdserverpb", "v3electionpb", "v3lockpb")

# Every method of etcd v3.5's services, as gRPC paths "/<package>.<Service>/<Method>".
ETCD_METHODS: dict[ServiceDescriptor, list[str]] = {
    rpc_pb2.DESCRIPTOR.services_by_name["KV"]: ["Range", "Put", "DeleteRange", "Txn", "Compact"],
    rpc_pb2.DESCRIPTOR.services_by_name["Watch"]: ["Watch"],
    rpc_pb2.DESCRIPTOR.services_by_name["Lease"]: [
        "LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases",
    ],
    rpc_pb2.DESCRIPTOR.services_by_name["Cluster"]: [
        "MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote",
    ],
    rpc_pb2.DESCRIPTOR.services_by_name["Maintenance"]: [
        "Alarm", "Status", "Defragment", "Hash", "HashKV", "Snapshot", "MoveLeader", "Downgrade",
    ],
    rpc_pb2.DESCRIPTOR.services_by_name["Auth"]: [
        "AuthEnable", "AuthDisable", "AuthStatus", "Authenticate", "UserAdd", "UserGet",
        "UserList", "UserDelete", "UserChangePassword", "UserGrantRole", "UserRevokeRole",
        "RoleAdd", "RoleGet", "RoleList", "RoleDelete", "RoleGrantPermission",
        "RoleRevokePermission",
    ],
    v3election_pb2.DESCRIPTOR.services_by_name["Election"]: [
        "Campaign", "Proclaim", "Leader", "Observe", "Resign",
    ],
    v3lock_pb2.DESCRIPTOR.services_by_name["Lock"]: ["Lock", "Unlock"],
}


def grpc_paths(service: ServiceDescriptor) -> set[str]:
    return {f"/{service.full_name}/{method.name}" for method in service.methods}


@pytest.mark.parametrize("service", list(ETCD_METHODS), ids=lambda s: s.full_name)
def test_service_methods_are_etcds_grpc_paths(service: ServiceDescriptor) -> None:
    package = service.full_name.split(".")[0]
    expected = {f"/{package}.{service.name}/{name}" for name in ETCD_METHODS[service]}
    assert grpc_paths(service) == expected


def test_well_known_grpc_paths_exist() -> None:
    all_paths = set().union(*(grpc_paths(service) for service in ETCD_METHODS))
    for path in (
        "/etcdserverpb.KV/Range",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/Downgrade",
        "/v3electionpb.Election/Campaign",
        "/v3lockpb.Lock/Lock",
    ):
        assert path in all_paths


def test_streaming_shapes_match_etcd() -> None:
    def shape(service: str, method: str) -> tuple[bool, bool]:
        descriptor = rpc_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        return descriptor.client_streaming, descriptor.server_streaming

    assert shape("Watch", "Watch") == (True, True)
    assert shape("Lease", "LeaseKeepAlive") == (True, True)
    assert shape("Maintenance", "Snapshot") == (False, True)
    assert shape("KV", "Range") == (False, False)
    observe = v3election_pb2.DESCRIPTOR.services_by_name["Election"].methods_by_name["Observe"]
    assert (observe.client_streaming, observe.server_streaming) == (False, True)


@pytest.mark.parametrize(
    ("message", "name", "number", "kind"),
    [
        (rpc_pb2.ResponseHeader, "cluster_id", 1, FieldDescriptor.TYPE_UINT64),
        (rpc_pb2.ResponseHeader, "member_id", 2, FieldDescriptor.TYPE_UINT64),
        (rpc_pb2.ResponseHeader, "revision", 3, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.ResponseHeader, "raft_term", 4, FieldDescriptor.TYPE_UINT64),
        (rpc_pb2.RangeRequest, "serializable", 7, FieldDescriptor.TYPE_BOOL),
        (rpc_pb2.RangeRequest, "max_create_revision", 13, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.Compare, "range_end", 64, FieldDescriptor.TYPE_BYTES),
        (rpc_pb2.Compare, "lease", 8, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.WatchCreateRequest, "fragment", 8, FieldDescriptor.TYPE_BOOL),
        (rpc_pb2.WatchResponse, "events", 11, FieldDescriptor.TYPE_MESSAGE),
        (rpc_pb2.PutRequest, "ignore_lease", 6, FieldDescriptor.TYPE_BOOL),
        (rpc_pb2.StatusResponse, "dbSizeInUse", 9, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.StatusResponse, "isLearner", 10, FieldDescriptor.TYPE_BOOL),
        (rpc_pb2.LeaseGrantRequest, "TTL", 1, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.LeaseTimeToLiveResponse, "grantedTTL", 4, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.LeaseCheckpoint, "remaining_TTL", 2, FieldDescriptor.TYPE_INT64),
        (rpc_pb2.Member, "clientURLs", 4, FieldDescriptor.TYPE_STRING),
        (rpc_pb2.AuthUserAddRequest, "hashedPassword", 4, FieldDescriptor.TYPE_STRING),
        (rpc_pb2.AuthStatusResponse, "authRevision", 3, FieldDescriptor.TYPE_UINT64),
        (kv_pb2.KeyValue, "lease", 6, FieldDescriptor.TYPE_INT64),
        (kv_pb2.Event, "prev_kv", 3, FieldDescriptor.TYPE_MESSAGE),
        (auth_pb2.Permission, "permType", 1, FieldDescriptor.TYPE_ENUM),
        (v3election_pb2.LeaderKey, "rev", 3, FieldDescriptor.TYPE_INT64),
        (v3lock_pb2.LockResponse, "key", 2, FieldDescriptor.TYPE_BYTES),
    ],
)
def test_field_numbers_and_types(message: type[Message], name: str, number: int, kind: int) -> None:
    descriptor = message.DESCRIPTOR.fields_by_name[name]
    assert (descriptor.number, descriptor.type) == (number, kind)


def test_oneofs_and_enums() -> None:
    compare_union = rpc_pb2.Compare.DESCRIPTOR.oneofs_by_name["target_union"]
    assert [f.name for f in compare_union.fields] == [
        "version", "create_revision", "mod_revision", "value", "lease",
    ]
    assert "range_end" not in [f.name for f in compare_union.fields]
    request_union = rpc_pb2.RequestOp.DESCRIPTOR.oneofs_by_name["request"]
    assert [(f.name, f.number) for f in request_union.fields] == [
        ("request_range", 1), ("request_put", 2), ("request_delete_range", 3), ("request_txn", 4),
    ]
    assert rpc_pb2.Compare.NOT_EQUAL == 3
    assert rpc_pb2.Compare.LEASE == 4
    assert rpc_pb2.AlarmType.Value("CORRUPT") == 2
    assert rpc_pb2.RangeRequest.DESCEND == 2
    assert rpc_pb2.RangeRequest.VALUE == 4
    assert kv_pb2.Event.DELETE == 1
    assert rpc_pb2.WatchCreateRequest.NODELETE == 1
    assert rpc_pb2.DowngradeRequest.CANCEL == 2


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    """proto/ and the committed modules agree: regenerating changes nothing."""
    # The script runs `python` and finds protoc-gen-mypy_grpc on PATH: use this venv's.
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", os.defpath)])}
    subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env=env,
    )
    for package in GENERATED_PACKAGES:
        comparison = filecmp.dircmp(tmp_path / package, GENERATED_DIR / package, ignore=[
            "__pycache__",
        ])
        assert comparison.left_only == [] and comparison.right_only == [], package
        _, mismatch, errors = filecmp.cmpfiles(
            tmp_path / package, GENERATED_DIR / package, comparison.common_files, shallow=False
        )
        assert mismatch == [] and errors == [], (package, mismatch, errors)


@pytest.mark.parametrize("ours_first", [True, False])
def test_coexists_with_a_third_party_etcd_client(ours_first: bool) -> None:
    """aetcd registers etcdserverpb.* in protobuf's default pool; ours must not collide."""
    ours = "from raftkv.api.etcdpb.etcdserverpb import rpc_pb2 as ours"
    theirs = "from aetcd.rpc import rpc_pb2 as theirs"
    imports = [ours, theirs] if ours_first else [theirs, ours]
    check = (
        "data = ours.PutRequest(key=b'k', value=b'v', lease=7).SerializeToString()\n"
        "decoded = theirs.PutRequest.FromString(data)\n"
        "assert (decoded.key, decoded.value, decoded.lease) == (b'k', b'v', 7)\n"
    )
    subprocess.run([sys.executable, "-c", "\n".join([*imports, check])], check=True)


class WatchRequests:
    """A request iterator for a bidirectional Watch stream that stays open until closed."""

    def __init__(self) -> None:
        self._pending: queue.Queue[rpc_pb2.WatchRequest | None] = queue.Queue()

    def send(self, request: rpc_pb2.WatchRequest) -> None:
        self._pending.put(request)

    def close(self) -> None:
        self._pending.put(None)

    def __iter__(self) -> Iterator[rpc_pb2.WatchRequest]:
        while (request := self._pending.get()) is not None:
            yield request


def test_round_trip_against_real_etcd(tmp_path: Path) -> None:
    with run_etcd(tmp_path) as etcd, grpc.insecure_channel(etcd.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        lease = rpc_pb2_grpc.LeaseStub(channel)
        watch = rpc_pb2_grpc.WatchStub(channel)
        cluster = rpc_pb2_grpc.ClusterStub(channel)
        maintenance = rpc_pb2_grpc.MaintenanceStub(channel)

        first_put = kv.Put(rpc_pb2.PutRequest(key=b"k1", value=b"v1"), timeout=RPC_TIMEOUT_S)
        second_put = kv.Put(
            rpc_pb2.PutRequest(key=b"k1", value=b"v2", prev_kv=True), timeout=RPC_TIMEOUT_S
        )
        assert second_put.header.revision == first_put.header.revision + 1
        assert second_put.prev_kv.value == b"v1"
        assert first_put.header.cluster_id != 0 and first_put.header.member_id != 0

        got = kv.Range(rpc_pb2.RangeRequest(key=b"k1"), timeout=RPC_TIMEOUT_S)
        assert [(item.key, item.value, item.version) for item in got.kvs] == [(b"k1", b"v2", 2)]
        assert got.kvs[0].create_revision == first_put.header.revision
        assert got.kvs[0].mod_revision == second_put.header.revision
        assert got.count == 1

        txn = kv.Txn(
            rpc_pb2.TxnRequest(
                compare=[
                    rpc_pb2.Compare(
                        key=b"k1",
                        target=rpc_pb2.Compare.VALUE,
                        result=rpc_pb2.Compare.EQUAL,
                        value=b"v2",
                    )
                ],
                success=[
                    rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k2", value=b"t")),
                    rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k1")),
                ],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k2"))],
            ),
            timeout=RPC_TIMEOUT_S,
        )
        assert txn.succeeded
        assert [r.WhichOneof("response") for r in txn.responses] == [
            "response_put", "response_range",
        ]
        assert txn.responses[1].response_range.kvs[0].value == b"v2"
        assert txn.header.revision == second_put.header.revision + 1

        granted = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=60), timeout=RPC_TIMEOUT_S)
        assert granted.ID != 0 and granted.TTL == 60 and granted.error == ""
        kv.Put(
            rpc_pb2.PutRequest(key=b"leased", value=b"x", lease=granted.ID), timeout=RPC_TIMEOUT_S
        )
        alive = lease.LeaseTimeToLive(
            rpc_pb2.LeaseTimeToLiveRequest(ID=granted.ID, keys=True), timeout=RPC_TIMEOUT_S
        )
        assert alive.grantedTTL == 60 and list(alive.keys) == [b"leased"]

        requests = WatchRequests()
        responses = iter(watch.Watch(iter(requests), timeout=RPC_TIMEOUT_S))
        try:
            requests.send(
                rpc_pb2.WatchRequest(
                    create_request=rpc_pb2.WatchCreateRequest(key=b"w", prev_kv=True)
                )
            )
            created = next(responses)
            assert created.created and not created.canceled
            put_w = kv.Put(rpc_pb2.PutRequest(key=b"w", value=b"seen"), timeout=RPC_TIMEOUT_S)
            update = next(responses)
            assert update.watch_id == created.watch_id
            assert [(e.type, e.kv.key, e.kv.value) for e in update.events] == [
                (kv_pb2.Event.PUT, b"w", b"seen"),
            ]
            assert update.events[0].kv.mod_revision == put_w.header.revision
        finally:
            # Ends the request side; leaving the channel's `with` cancels the call itself.
            requests.close()

        members = cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=RPC_TIMEOUT_S)
        assert len(members.members) == 1
        assert list(members.members[0].clientURLs) == [etcd.client_url]
        assert list(members.members[0].peerURLs) == [etcd.peer_url]
        assert first_put.header.member_id == members.members[0].ID

        status = maintenance.Status(rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)
        assert status.version.startswith("3.5.")
        assert status.leader == first_put.header.member_id
        assert status.dbSize > 0 and 0 < status.dbSizeInUse <= status.dbSize
        assert status.raftIndex >= status.raftAppliedIndex > 0
        assert status.header.revision == put_w.header.revision
