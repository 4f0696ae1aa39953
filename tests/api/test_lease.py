"""The Lease service over gRPC: grant, revoke, keepalive stream, TTL queries, expiry."""

from __future__ import annotations

import time

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from tests.api.conftest import ApiServer
from tests.api.helpers import BidiStream, rpc_error, status_of

EXPIRY_WAIT_S = 6.0


def grant(api: ApiServer, ttl_seconds: int, lease_id: int = 0) -> rpc_pb2.LeaseGrantResponse:
    return api.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl_seconds, ID=lease_id))


def test_grant_picks_an_id_or_takes_the_given_one(api: ApiServer) -> None:
    picked = grant(api, 60)
    assert picked.ID > 0 and picked.TTL == 60 and picked.error == ""
    chosen = grant(api, 60, lease_id=42)
    assert chosen.ID == 42
    assert chosen.header.revision == 1  # a grant makes no revision
    assert chosen.header.member_id == api.node.member_id
    short = grant(api, 1)
    assert api.node.lessor.min_ttl_seconds == short.TTL  # raised to the minimum, as etcd
    leases = api.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest())
    assert sorted(item.ID for item in leases.leases) == sorted([picked.ID, 42, short.ID])


def test_grant_refusals(api: ApiServer) -> None:
    grant(api, 60, lease_id=42)
    exists = rpc_error(lambda: grant(api, 60, lease_id=42))
    assert status_of(exists) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "etcdserver: lease already exists",
    )
    too_long = rpc_error(lambda: grant(api, 9_000_000_001))
    assert status_of(too_long) == (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")


def test_revoke_deletes_the_attached_keys(api: ApiServer) -> None:
    lease_id = grant(api, 60).ID
    api.kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"1", lease=lease_id))
    api.kv.Put(rpc_pb2.PutRequest(key=b"b", value=b"2", lease=lease_id))
    api.kv.Put(rpc_pb2.PutRequest(key=b"c", value=b"3"))
    revoked = api.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id))
    assert revoked.header.revision == 5  # one revision deletes both keys
    left = api.kv.Range(rpc_pb2.RangeRequest(key=b"a", range_end=b"d"))
    assert [kv.key for kv in left.kvs] == [b"c"]
    again = rpc_error(lambda: api.lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id)))
    assert status_of(again) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")


def test_time_to_live(api: ApiServer) -> None:
    lease_id = grant(api, 60).ID
    api.kv.Put(rpc_pb2.PutRequest(key=b"k2", lease=lease_id))
    api.kv.Put(rpc_pb2.PutRequest(key=b"k1", lease=lease_id))
    answer = api.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=True))
    assert lease_id == answer.ID and answer.grantedTTL == 60
    assert 58 <= answer.TTL <= 60
    assert list(answer.keys) == [b"k1", b"k2"]
    assert answer.header.revision == 3
    without_keys = api.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id))
    assert list(without_keys.keys) == []
    unknown = api.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=777))
    assert (unknown.ID, unknown.TTL, unknown.grantedTTL) == (777, -1, 0)  # etcd: not an error


def test_keepalive_stream(api: ApiServer) -> None:
    lease_id = grant(api, 30).ID
    stream: BidiStream[rpc_pb2.LeaseKeepAliveRequest, rpc_pb2.LeaseKeepAliveResponse]
    stream = BidiStream(api.lease.LeaseKeepAlive)
    try:
        for _ in range(3):
            stream.send(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
            renewed = stream.receive()
            assert (lease_id, 30) == (renewed.ID, renewed.TTL)
            assert renewed.header.member_id == api.node.member_id
        stream.send(rpc_pb2.LeaseKeepAliveRequest(ID=4242))
        unknown = stream.receive()
        assert (unknown.ID, unknown.TTL) == (4242, 0)  # etcd answers TTL 0, not an error
        stream.send(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
        assert stream.receive().TTL == 30  # the stream goes on
    finally:
        stream.close()


def test_an_expired_lease_is_revoked_with_its_keys(api: ApiServer) -> None:
    lease_id = grant(api, 1).ID  # raised to the 2 s minimum
    api.kv.Put(rpc_pb2.PutRequest(key=b"ephemeral", lease=lease_id))
    kept_id = grant(api, 1).ID
    deadline = time.monotonic() + EXPIRY_WAIT_S
    stream: BidiStream[rpc_pb2.LeaseKeepAliveRequest, rpc_pb2.LeaseKeepAliveResponse]
    stream = BidiStream(api.lease.LeaseKeepAlive)
    try:
        while time.monotonic() < deadline:
            stream.send(rpc_pb2.LeaseKeepAliveRequest(ID=kept_id))
            assert stream.receive().TTL > 0  # kept alive
            gone = api.kv.Range(rpc_pb2.RangeRequest(key=b"ephemeral")).count == 0
            if gone:
                break
            time.sleep(0.2)
        assert gone, "the expired lease's key is still there"
    finally:
        stream.close()
    ttl = api.lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id))
    assert ttl.TTL == -1
    leases = api.lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest())
    assert [item.ID for item in leases.leases] == [kept_id]
