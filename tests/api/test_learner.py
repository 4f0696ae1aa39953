"""A learner answers only Status and serializable Ranges, like etcd's learners."""

from __future__ import annotations

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from tests.api.conftest import ApiServer

LEARNER_MESSAGE = "etcdserver: rpc not supported for learner"


def test_a_learner_serves_serializable_reads_and_status_only(api: ApiServer) -> None:
    api.kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"))
    api.node.is_learner = True
    stale = api.kv.Range(rpc_pb2.RangeRequest(key=b"k", serializable=True))
    assert [kv.value for kv in stale.kvs] == [b"v"]
    assert api.maintenance.Status(rpc_pb2.StatusRequest()).header.member_id
    refused = [
        lambda: api.kv.Range(rpc_pb2.RangeRequest(key=b"k")),
        lambda: api.kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"w")),
        lambda: api.lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=10)),
        lambda: api.cluster.MemberList(rpc_pb2.MemberListRequest()),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == LEARNER_MESSAGE
    api.node.is_learner = False
    assert api.kv.Range(rpc_pb2.RangeRequest(key=b"k")).kvs[0].value == b"v"
