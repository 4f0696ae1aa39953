"""Maintenance, Cluster and Auth services over gRPC."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.storage.etcdsnap import layout, snapshot_status
from raftkv.storage.etcdsnap.bbolt import open_reader
from tests.api.conftest import ApiServer
from tests.api.helpers import rpc_error, status_of

ALARM = rpc_pb2.AlarmRequest


def put(api: ApiServer, key: bytes, value: bytes = b"v") -> int:
    return api.kv.Put(rpc_pb2.PutRequest(key=key, value=value)).header.revision


def test_status_reports_the_node(api: ApiServer) -> None:
    put(api, b"k")
    status = api.maintenance.Status(rpc_pb2.StatusRequest())
    expected = api.run(api.node.status)
    assert status.version == expected.version == "3.5.0"
    assert status.leader == api.node.member_id
    assert (status.raftIndex, status.raftAppliedIndex, status.raftTerm) == (1, 1, 1)
    assert status.dbSize == expected.db_size_bytes > 0
    assert status.dbSizeInUse == expected.db_size_in_use_bytes > 0
    assert status.dbSizeQuota == expected.db_size_quota_bytes
    assert not status.isLearner and list(status.errors) == []
    assert status.header.revision == 2


def test_hash_and_hash_kv(api: ApiServer) -> None:
    first = put(api, b"a", b"1")
    put(api, b"a", b"2")
    hashed = api.maintenance.Hash(rpc_pb2.HashRequest())
    assert hashed.hash == api.run(api.node.kv.hash)
    at_first = api.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=first))
    current = api.maintenance.HashKV(rpc_pb2.HashKVRequest())
    assert at_first.hash_revision == first and current.hash_revision == 3
    assert at_first.hash != current.hash
    assert at_first.compact_revision == -1  # never compacted, as etcd
    assert at_first.header.revision == 3  # etcd: the current revision, not the hashed one
    assert at_first.hash == api.run(lambda: api.node.kv.hash_kv(first).hash)
    future = rpc_error(lambda: api.maintenance.HashKV(rpc_pb2.HashKVRequest(revision=99)))
    assert status_of(future) == (
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    )


def test_alarms_get_activate_deactivate(api: ApiServer) -> None:
    member = api.node.member_id
    listed = api.maintenance.Alarm(ALARM(action=ALARM.GET))
    assert list(listed.alarms) == []
    raised = api.maintenance.Alarm(
        ALARM(action=ALARM.ACTIVATE, memberID=member, alarm=rpc_pb2.NOSPACE)
    )
    assert [(a.memberID, a.alarm) for a in raised.alarms] == [(member, rpc_pb2.NOSPACE)]
    refused = rpc_error(lambda: put(api, b"k"))
    assert status_of(refused) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "etcdserver: mvcc: database space exceeded",
    )
    status = api.maintenance.Status(rpc_pb2.StatusRequest())
    assert list(status.errors) == [f"memberID:{member} alarm:NOSPACE"]
    only_corrupt = api.maintenance.Alarm(ALARM(action=ALARM.GET, alarm=rpc_pb2.CORRUPT))
    assert list(only_corrupt.alarms) == []
    api.maintenance.Alarm(ALARM(action=ALARM.DEACTIVATE, memberID=member, alarm=rpc_pb2.NOSPACE))
    assert list(api.maintenance.Alarm(ALARM(action=ALARM.GET)).alarms) == []
    put(api, b"k")
    unknown = rpc_error(lambda: api.maintenance.Alarm(ALARM(action=7)))  # type: ignore[arg-type]
    assert status_of(unknown) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "raftkv: unknown alarm action value 7",
    )


def test_snapshot_stream_is_an_etcd_database_plus_its_sha256(
    api: ApiServer, tmp_path: Path
) -> None:
    for i in range(200):
        put(api, b"key%03d" % i, b"x" * 10_000)  # a few MiB: several chunks
    chunks = list(api.maintenance.Snapshot(rpc_pb2.SnapshotRequest()))
    assert len(chunks) >= 3
    data = b"".join(chunk.blob for chunk in chunks[:-1])
    digest = chunks[-1]
    assert digest.blob == hashlib.sha256(data).digest() and digest.remaining_bytes == 0
    remaining = [chunk.remaining_bytes for chunk in chunks[:-1]]
    assert remaining == [
        len(data) - sum(len(c.blob) for c in chunks[: i + 1]) for i in range(len(remaining))
    ]
    # The bytes are etcd's bbolt database with etcd's buckets, holding the data.
    path = tmp_path / "snapshot.db"
    path.write_bytes(data + digest.blob)
    status = snapshot_status(str(path))
    assert status.revision == 201 and status.total_size_bytes == len(data)
    with open_reader(str(path)) as reader:
        assert reader.check() == []
        assert [bucket.key for bucket in reader.buckets()] == list(layout.BUCKETS)
        key_bucket = reader.bucket(layout.BUCKET_KEY)
        assert key_bucket is not None
        keys = [layout.decode_key_value(e.value, "").key for e in reader.items(key_bucket)]
    assert keys == [b"key%03d" % i for i in range(200)]


def test_defragment_keeps_the_data(api: ApiServer) -> None:
    for i in range(50):
        put(api, b"d%d" % i, b"y" * 1000)
    api.kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"d", range_end=b"e"))
    api.kv.Compact(rpc_pb2.CompactionRequest(revision=52))
    put(api, b"after", b"z")
    api.maintenance.Defragment(rpc_pb2.DefragmentRequest())
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"after")).kvs[0].value == b"z"
    put(api, b"after", b"zz")
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"after")).kvs[0].version == 2


def test_move_leader_and_downgrade(api: ApiServer) -> None:
    api.maintenance.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=api.node.member_id))
    bad = rpc_error(lambda: api.maintenance.MoveLeader(rpc_pb2.MoveLeaderRequest(targetID=5)))
    assert status_of(bad) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: bad leader transferee",
    )
    downgrade = rpc_error(lambda: api.maintenance.Downgrade(rpc_pb2.DowngradeRequest()))
    assert status_of(downgrade)[0] == grpc.StatusCode.UNIMPLEMENTED


def test_member_list(api: ApiServer) -> None:
    listed = api.cluster.MemberList(rpc_pb2.MemberListRequest(linearizable=True))
    (member,) = listed.members
    assert api.node.member_id == member.ID and member.name == "local"
    assert list(member.clientURLs) == [f"http://{api.endpoint}"]
    assert not member.isLearner
    # etcd's cluster responses carry no revision.
    assert listed.header.revision == 0 and listed.header.member_id == api.node.member_id
    add = rpc_error(
        lambda: api.cluster.MemberAdd(rpc_pb2.MemberAddRequest(peerURLs=["http://127.0.0.1:9"]))
    )
    assert status_of(add)[0] == grpc.StatusCode.UNIMPLEMENTED  # the test double's answer


def test_auth_starts_disabled_and_needs_root_to_enable(api: ApiServer) -> None:
    status = api.auth.AuthStatus(rpc_pb2.AuthStatusRequest())
    assert not status.enabled and status.authRevision == 1
    refused = rpc_error(lambda: api.auth.AuthEnable(rpc_pb2.AuthEnableRequest()))
    assert status_of(refused) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: root user does not exist",
    )
    not_enabled = rpc_error(
        lambda: api.auth.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="x"))
    )
    assert status_of(not_enabled) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: authentication is not enabled",
    )
