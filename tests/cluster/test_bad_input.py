"""Bad input against real raftkv member processes: a clear refusal, and nothing breaks.

The tests share one 3-member cluster, started with a small ``--max-request-bytes`` and
``--max-txn-ops`` so the limits are cheap to cross, and one real etcd 3.5 started with the
same limits. Each test sends one kind of bad input and shows three things:

(a) a clear error: the same gRPC code and message as etcd (asked the same question), where
    etcd defines one; otherwise the documented raftkv answer (docs/compatibility.md,
    "Bad input");
(b) the member keeps serving: its process is running, and a put and a get through it work;
(c) no data is lost, and bad input wrote nothing: after a linearizable read on a member
    (a barrier: it has applied everything committed before), that member's serializable
    view of the whole key space is exactly what the tests wrote.

The last two tests start members of their own: bad flags, and a data dir with a corrupted WAL.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import queue
import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import pytest

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from raftkv.server.transport import (
    MAGIC,
    PROTOCOL_VERSION,
    ConnectionKind,
    FrameKind,
    encode_frame,
    encode_handshake,
)
from raftkv.storage.wal.record import DecodeStatus, RecordType, decode_record
from tests.etcd_process import EtcdProcess, free_port, run_etcd
from tests.procs import RaftkvCluster, RaftkvMember, log_tail

MAX_REQUEST_BYTES = 64 * 1024
MAX_TXN_OPS = 4
# etcd lets gRPC receive max-request-bytes plus this much; beyond it gRPC itself refuses.
GRPC_OVERHEAD_BYTES = 512 * 1024
GRPC_RECEIVE_LIMIT_BYTES = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES
# Twice etcd's default: a loaded test machine must not cause an election, because the
# garbage test checks that the leader and term stay the same.
ELECTION_TIMEOUT_MS = 2000
LIMIT_FLAGS = {"max_request_bytes": MAX_REQUEST_BYTES, "max_txn_ops": MAX_TXN_OPS}
ETCD_LIMIT_FLAGS = [
    f"--max-request-bytes={MAX_REQUEST_BYTES}",
    f"--max-txn-ops={MAX_TXN_OPS}",
]
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 4 * GRPC_RECEIVE_LIMIT_BYTES)]
RPC_TIMEOUT_S = 10.0
SOCKET_TIMEOUT_S = 5.0
LOG_WAIT_S = 5.0
POLL_INTERVAL_S = 0.05
PROCESS_EXIT_TIMEOUT_S = 30.0
UNKNOWN_LEASE_ID = 12345
TOO_LARGE_LEASE_TTL_S = 9_000_000_001  # etcd's MaxLeaseTTL is 9,000,000,000 s
NOT_A_MEMBER_ID = 0xBAD

OK = grpc.StatusCode.OK
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
Outcome = tuple[grpc.StatusCode, str]
REQUEST_TOO_LARGE: Outcome = (INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_OPS: Outcome = (INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY: Outcome = (INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
KEY_NOT_PROVIDED: Outcome = (INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND: Outcome = (INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED: Outcome = (INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_NOT_FOUND: Outcome = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
BAD_MEMBER_URLS: Outcome = (INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND: Outcome = (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
LEASE_TTL_TOO_LARGE: Outcome = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
COMPACTED: Outcome = (
    grpc.StatusCode.OUT_OF_RANGE,
    "etcdserver: mvcc: required revision has been compacted",
)
FUTURE_REVISION: Outcome = (
    grpc.StatusCode.OUT_OF_RANGE,
    "etcdserver: mvcc: required revision is a future revision",
)
# grpc-go's refusals of a request that is not protobuf (what etcd answers); the reason after
# the prefix is the protobuf library's own.
UNARY_UNDECODABLE_PREFIX = "grpc: error unmarshalling request: "
STREAM_UNDECODABLE_PREFIX = "grpc: failed to unmarshal the received message "
UNDECODABLE = b"\x0f\x01"  # field 1 with wire type 7, which does not exist
# Field numbers in rpc.proto, for encoding a txn nested deeper than Python protobuf builds.
TXN_SUCCESS_FIELD = 2
REQUEST_OP_TXN_FIELD = 4
PROTOBUF_UNPARSABLE_TXN_LEVELS = 60  # 120 nested messages; Python protobuf stops at 100
# gRPC's own refusal; Go's and grpcio's texts differ around it, the sizes must not.
GRPC_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)", re.IGNORECASE)

_Request = TypeVar("_Request")


# --- The servers ---------------------------------------------------------------------------


@dataclass
class Servers:
    """The shared raftkv cluster and etcd, and every key the tests wrote to raftkv."""

    cluster: RaftkvCluster
    etcd: EtcdProcess
    member_channels: list[grpc.Channel]
    etcd_channel: grpc.Channel
    written: dict[bytes, bytes] = field(default_factory=dict)

    def put(self, index: int, key: bytes, value: bytes) -> None:
        """Put through member ``index`` and remember it (check (c) expects it)."""
        kv = rpc_pb2_grpc.KVStub(self.member_channels[index])
        kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
        self.written[key] = value

    def put_before(self, name: str) -> None:
        """Keys written just before a test's bad input, through every member."""
        for index in range(len(self.member_channels)):
            self.put(index, f"bad/{name}/before/{index}".encode(), f"{name}-{index}".encode())


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    cluster_dir = tmp_path_factory.mktemp("raftkv")
    etcd_dir = tmp_path_factory.mktemp("etcd")
    with (
        RaftkvCluster.start(
            cluster_dir, size=3, election_timeout=ELECTION_TIMEOUT_MS, **LIMIT_FLAGS
        ) as cluster,
        run_etcd(etcd_dir, ETCD_LIMIT_FLAGS) as etcd,
    ):
        cluster.wait_for_leader()
        channels = [
            grpc.insecure_channel(member.client_endpoint, options=CHANNEL_OPTIONS)
            for member in cluster.members
        ]
        etcd_channel = grpc.insecure_channel(etcd.endpoint, options=CHANNEL_OPTIONS)
        try:
            yield Servers(cluster, etcd, channels, etcd_channel)
        finally:
            for channel in [*channels, etcd_channel]:
                channel.close()


# --- Outcomes and checks -------------------------------------------------------------------


def outcome(call: Callable[[], object]) -> Outcome:
    """(OK, "") or the gRPC code and message the call failed with."""
    try:
        call()
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call), error
        return error.code(), error.details() or ""
    return OK, ""


def assert_same_as_etcd(
    servers: Servers, call: Callable[[grpc.Channel], object], expected: Outcome
) -> None:
    """Every member answers ``call`` as etcd does, and that answer is ``expected``."""
    etcd_outcome = outcome(lambda: call(servers.etcd_channel))
    assert etcd_outcome == expected, "etcd itself answers differently"
    for member, channel in zip(servers.cluster.members, servers.member_channels, strict=True):
        assert outcome(functools.partial(call, channel)) == expected, member.name


def assert_still_safe(servers: Servers) -> None:
    """(b) every member runs and serves a put and a get; (c) every member holds exactly
    what the tests wrote."""
    cluster = servers.cluster
    for index, member in enumerate(cluster.members):
        assert member.is_running(), f"{member.name} exited\n{cluster.logs_tail()}"
        key = f"bad/alive/{member.name}/{len(servers.written)}".encode()
        servers.put(index, key, b"alive")
        kv = rpc_pb2_grpc.KVStub(servers.member_channels[index])
        got = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=RPC_TIMEOUT_S)
        assert [(kv.key, kv.value) for kv in got.kvs] == [(key, b"alive")], member.name
    for member, channel in zip(cluster.members, servers.member_channels, strict=True):
        assert member_key_space(channel) == servers.written, member.name


def member_key_space(channel: grpc.Channel) -> dict[bytes, bytes]:
    """One member's own (serializable) view of every key, after a linearizable barrier."""
    kv = rpc_pb2_grpc.KVStub(channel)
    kv.Range(rpc_pb2.RangeRequest(key=b"bad/barrier"), timeout=RPC_TIMEOUT_S)
    local = kv.Range(
        rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", serializable=True),  # every key
        timeout=RPC_TIMEOUT_S,
    )
    return {kv.key: kv.value for kv in local.kvs}


# --- Request builders ----------------------------------------------------------------------


def put_call(
    key: bytes,
    value: bytes = b"v",
    lease: int = 0,
    ignore_value: bool = False,
    ignore_lease: bool = False,
) -> Callable[[grpc.Channel], object]:
    def call(channel: grpc.Channel) -> object:
        request = rpc_pb2.PutRequest(
            key=key, value=value, lease=lease, ignore_value=ignore_value, ignore_lease=ignore_lease
        )
        return rpc_pb2_grpc.KVStub(channel).Put(request, timeout=RPC_TIMEOUT_S)

    return call


def send_txn(request: rpc_pb2.TxnRequest) -> Callable[[grpc.Channel], object]:
    def call(channel: grpc.Channel) -> object:
        return rpc_pb2_grpc.KVStub(channel).Txn(request, timeout=RPC_TIMEOUT_S)

    return call


def txn_call(
    success: list[rpc_pb2.RequestOp] | None = None,
    failure: list[rpc_pb2.RequestOp] | None = None,
    compare: list[rpc_pb2.Compare] | None = None,
) -> Callable[[grpc.Channel], object]:
    def call(channel: grpc.Channel) -> object:
        request = rpc_pb2.TxnRequest(success=success, failure=failure, compare=compare)
        return rpc_pb2_grpc.KVStub(channel).Txn(request, timeout=RPC_TIMEOUT_S)

    return call


def put_op(key: bytes, value: bytes = b"v", lease: int = 0) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))


def delete_op(key: bytes, range_end: bytes = b"") -> rpc_pb2.RequestOp:
    request = rpc_pb2.DeleteRangeRequest(key=key, range_end=range_end)
    return rpc_pb2.RequestOp(request_delete_range=request)


def puts(prefix: str, count: int, value: bytes = b"v") -> list[rpc_pb2.RequestOp]:
    return [put_op(f"{prefix}/{i}".encode(), value) for i in range(count)]


# --- 1. Oversized requests -----------------------------------------------------------------


def test_oversized_requests(servers: Servers) -> None:
    servers.put_before("size")
    # Control: a request just below the flag's limit is taken (by etcd too), so the
    # refusals below come from --max-request-bytes, not from something smaller.
    under_limit = b"u" * (MAX_REQUEST_BYTES - 1024)
    put_under_limit = put_call(b"bad/size/under", under_limit)
    assert outcome(lambda: put_under_limit(servers.etcd_channel)) == (OK, "")
    servers.put(0, b"bad/size/under", under_limit)

    # Between the limit and gRPC's receive limit: etcd's own refusal.
    for value_bytes in (MAX_REQUEST_BYTES + 1, GRPC_RECEIVE_LIMIT_BYTES - 1024):
        value = b"x" * value_bytes
        assert_same_as_etcd(servers, put_call(b"bad/size/over", value), REQUEST_TOO_LARGE)
        oversized_txn = txn_call(success=[put_op(b"bad/size/txn", value)])
        assert_same_as_etcd(servers, oversized_txn, REQUEST_TOO_LARGE)

    # Above it gRPC refuses the message before any handler sees it.
    huge_put = put_call(b"bad/size/huge", b"x" * (GRPC_RECEIVE_LIMIT_BYTES + 1))
    etcd_code, etcd_message = outcome(lambda: huge_put(servers.etcd_channel))
    etcd_sizes = grpc_size_refusal(etcd_code, etcd_message)
    assert etcd_sizes[1] == GRPC_RECEIVE_LIMIT_BYTES
    for member, channel in zip(servers.cluster.members, servers.member_channels, strict=True):
        code, message = outcome(functools.partial(huge_put, channel))
        assert grpc_size_refusal(code, message) == etcd_sizes, member.name

    assert_still_safe(servers)


def grpc_size_refusal(code: grpc.StatusCode, message: str) -> tuple[int, int]:
    """(message bytes, limit bytes) of gRPC's RESOURCE_EXHAUSTED receive-size refusal."""
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, message)
    match = GRPC_TOO_LARGE.search(message)
    assert match is not None, message
    return int(match[1]), int(match[2])


# --- 2. Transactions -----------------------------------------------------------------------


def test_too_many_txn_ops_and_duplicate_keys(servers: Servers) -> None:
    servers.put_before("txn")
    refused = "bad/txn/refused"
    too_many = puts(refused, MAX_TXN_OPS + 1)
    assert_same_as_etcd(servers, txn_call(success=too_many), TOO_MANY_OPS)
    assert_same_as_etcd(servers, txn_call(failure=too_many), TOO_MANY_OPS)

    twice = put_op(f"{refused}/twice".encode())
    assert_same_as_etcd(servers, txn_call(success=[twice, twice]), DUPLICATE_KEY)
    assert_same_as_etcd(servers, txn_call(failure=[twice, twice]), DUPLICATE_KEY)
    put_and_delete = [twice, delete_op(f"{refused}/twice".encode())]
    assert_same_as_etcd(servers, txn_call(success=put_and_delete), DUPLICATE_KEY)
    put_and_delete_range = [twice, delete_op(f"{refused}/".encode(), f"{refused}0".encode())]
    assert_same_as_etcd(servers, txn_call(success=put_and_delete_range), DUPLICATE_KEY)

    # Control: exactly --max-txn-ops operations are taken.
    accepted = puts("bad/txn/accepted", MAX_TXN_OPS, b"accepted")
    assert outcome(lambda: txn_call(success=accepted)(servers.etcd_channel)) == (OK, "")
    response = rpc_pb2_grpc.KVStub(servers.member_channels[1]).Txn(
        rpc_pb2.TxnRequest(success=accepted), timeout=RPC_TIMEOUT_S
    )
    assert response.succeeded and len(response.responses) == MAX_TXN_OPS
    servers.written.update((op.request_put.key, op.request_put.value) for op in accepted)

    # A nested txn gets what its parent left of the budget: one level too deep is refused,
    # as deep as the budget allows is taken.
    too_deep = nested_txn(MAX_TXN_OPS + 1, f"{refused}/nested".encode())
    assert_same_as_etcd(servers, send_txn(too_deep), TOO_MANY_OPS)
    deepest = nested_txn(MAX_TXN_OPS, b"bad/txn/nested")
    assert outcome(lambda: send_txn(deepest)(servers.etcd_channel)) == (OK, "")
    assert (
        rpc_pb2_grpc.KVStub(servers.member_channels[2])
        .Txn(deepest, timeout=RPC_TIMEOUT_S)
        .succeeded
    )
    servers.written[b"bad/txn/nested"] = b"nested"

    # Python protobuf cannot parse messages nested more than 100 deep (a txn in a txn, 50
    # times): raftkv refuses what etcd calls too many operations as undecodable instead.
    beyond_parser = nested_txn_bytes(PROTOBUF_UNPARSABLE_TXN_LEVELS)
    assert outcome(lambda: raw_txn_call(beyond_parser)(servers.etcd_channel)) == TOO_MANY_OPS
    for member, channel in zip(servers.cluster.members, servers.member_channels, strict=True):
        code, message = outcome(functools.partial(raw_txn_call(beyond_parser), channel))
        assert code == grpc.StatusCode.INTERNAL, (member.name, message)
        assert message.startswith(UNARY_UNDECODABLE_PREFIX), (member.name, message)

    assert_still_safe(servers)


def nested_txn(levels: int, key: bytes) -> rpc_pb2.TxnRequest:
    """A txn whose one op is a txn whose one op is ... (``levels`` txns), then a put."""
    txn = rpc_pb2.TxnRequest(success=[put_op(key, b"nested")])
    for _ in range(levels - 1):
        txn = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_txn=txn)])
    return txn


def nested_txn_bytes(levels: int) -> bytes:
    """``nested_txn`` encoded by hand: Python protobuf cannot build one this deep."""
    encoded = nested_txn(1, b"bad/txn/too-deep").SerializeToString()
    for _ in range(levels - 1):
        request_op = length_delimited(REQUEST_OP_TXN_FIELD, encoded)
        encoded = length_delimited(TXN_SUCCESS_FIELD, request_op)
    return encoded


def length_delimited(field_number: int, data: bytes) -> bytes:
    return varint(field_number << 3 | 2) + varint(len(data)) + data


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def raw_call(method: str, data: bytes) -> Callable[[grpc.Channel], object]:
    """A unary call that sends ``data`` as the request's bytes."""

    def call(channel: grpc.Channel) -> object:
        send = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return send(data, timeout=RPC_TIMEOUT_S)

    return call


def raw_txn_call(data: bytes) -> Callable[[grpc.Channel], object]:
    return raw_call("/etcdserverpb.KV/Txn", data)


# --- 3. Empty keys and other invalid arguments ---------------------------------------------


def test_empty_keys(servers: Servers) -> None:
    servers.put_before("empty")

    def range_empty(channel: grpc.Channel) -> object:
        request = rpc_pb2.RangeRequest(key=b"")
        return rpc_pb2_grpc.KVStub(channel).Range(request, timeout=RPC_TIMEOUT_S)

    def delete_empty(channel: grpc.Channel) -> object:
        request = rpc_pb2.DeleteRangeRequest(key=b"")
        return rpc_pb2_grpc.KVStub(channel).DeleteRange(request, timeout=RPC_TIMEOUT_S)

    range_op = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b""))
    compare_empty = rpc_pb2.Compare(key=b"", target=rpc_pb2.Compare.VALUE, value=b"x")
    for call in (
        put_call(b""),
        range_empty,
        delete_empty,
        txn_call(success=[put_op(b"")]),
        txn_call(success=[range_op]),
        txn_call(failure=[delete_op(b"")]),
        txn_call(compare=[compare_empty]),
    ):
        assert_same_as_etcd(servers, call, KEY_NOT_PROVIDED)

    # A put that keeps the value or lease of a key that does not exist, or that both keeps
    # and gives a value.
    assert_same_as_etcd(servers, put_call(b"bad/empty/none", b"", ignore_value=True), KEY_NOT_FOUND)
    assert_same_as_etcd(servers, put_call(b"bad/empty/none", ignore_lease=True), KEY_NOT_FOUND)
    given_and_kept = put_call(b"bad/empty/before/0", b"new", ignore_value=True)
    assert_same_as_etcd(servers, given_and_kept, VALUE_PROVIDED)

    assert_still_safe(servers)


# --- 4. Unknown lease ids ------------------------------------------------------------------


def test_unknown_lease_ids(servers: Servers) -> None:
    servers.put_before("lease")
    leased_put = put_call(b"bad/lease/put", lease=UNKNOWN_LEASE_ID)
    assert_same_as_etcd(servers, leased_put, LEASE_NOT_FOUND)
    leased_txn = txn_call(success=[put_op(b"bad/lease/txn", lease=UNKNOWN_LEASE_ID)])
    assert_same_as_etcd(servers, leased_txn, LEASE_NOT_FOUND)

    def revoke(channel: grpc.Channel) -> object:
        request = rpc_pb2.LeaseRevokeRequest(ID=UNKNOWN_LEASE_ID)
        return rpc_pb2_grpc.LeaseStub(channel).LeaseRevoke(request, timeout=RPC_TIMEOUT_S)

    def grant_too_long(channel: grpc.Channel) -> object:
        request = rpc_pb2.LeaseGrantRequest(TTL=TOO_LARGE_LEASE_TTL_S)
        return rpc_pb2_grpc.LeaseStub(channel).LeaseGrant(request, timeout=RPC_TIMEOUT_S)

    assert_same_as_etcd(servers, revoke, LEASE_NOT_FOUND)
    assert_same_as_etcd(servers, grant_too_long, LEASE_TTL_TOO_LARGE)

    # Not errors in etcd: TimeToLive answers TTL -1, a keepalive answers TTL 0 (followers
    # forward both to the leader, so every member is asked).
    etcd_answers = (time_to_live(servers.etcd_channel), keep_alive_once(servers.etcd_channel))
    assert etcd_answers == ((UNKNOWN_LEASE_ID, -1, 0, []), (UNKNOWN_LEASE_ID, 0))
    for member, channel in zip(servers.cluster.members, servers.member_channels, strict=True):
        assert (time_to_live(channel), keep_alive_once(channel)) == etcd_answers, member.name

    assert_still_safe(servers)


def time_to_live(channel: grpc.Channel) -> tuple[int, int, int, list[bytes]]:
    request = rpc_pb2.LeaseTimeToLiveRequest(ID=UNKNOWN_LEASE_ID, keys=True)
    answer = rpc_pb2_grpc.LeaseStub(channel).LeaseTimeToLive(request, timeout=RPC_TIMEOUT_S)
    return answer.ID, answer.TTL, answer.grantedTTL, list(answer.keys)


def keep_alive_once(channel: grpc.Channel) -> tuple[int, int]:
    requests = OpenRequests(rpc_pb2.LeaseKeepAliveRequest(ID=UNKNOWN_LEASE_ID))
    # The response iterator is also the call (cancel); grpc-stubs do not say so.
    call: Any = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(
        iter(requests), timeout=RPC_TIMEOUT_S
    )
    try:
        for answer in call:
            return answer.ID, answer.TTL
        raise AssertionError("the keepalive stream ended without an answer")
    finally:
        call.cancel()
        requests.close()


class OpenRequests(Generic[_Request]):
    """A request stream that sends its first message and then stays open until closed
    (a stream the client half-closes may end before the server has answered)."""

    def __init__(self, first: _Request) -> None:
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._queue.put(first)

    def __iter__(self) -> Iterator[_Request]:
        while (item := self._queue.get()) is not None:
            yield item

    def close(self) -> None:
        self._queue.put(None)


# --- 4b. Invalid membership changes -------------------------------------------------------


def test_invalid_membership_changes(servers: Servers) -> None:
    servers.put_before("members")
    members_before = member_list(servers.member_channels[0])

    def add(peer_urls: list[str]) -> Callable[[grpc.Channel], object]:
        def call(channel: grpc.Channel) -> object:
            request = rpc_pb2.MemberAddRequest(peerURLs=peer_urls)
            return rpc_pb2_grpc.ClusterStub(channel).MemberAdd(request, timeout=RPC_TIMEOUT_S)

        return call

    def remove_unknown(channel: grpc.Channel) -> object:
        request = rpc_pb2.MemberRemoveRequest(ID=NOT_A_MEMBER_ID)
        return rpc_pb2_grpc.ClusterStub(channel).MemberRemove(request, timeout=RPC_TIMEOUT_S)

    # A member without peer URLs used to be committed, and applying it stopped every member
    # (and every restart after, since the change is in the log): refused now, as by etcd.
    assert_same_as_etcd(servers, add([]), BAD_MEMBER_URLS)
    assert_same_as_etcd(servers, add(["not a url"]), BAD_MEMBER_URLS)
    assert_same_as_etcd(servers, remove_unknown, MEMBER_NOT_FOUND)

    # A port out of range: etcd takes it (and a single etcd then loses its quorum to a
    # member that cannot exist); raftkv refuses it, since applying it stopped every member.
    for member, channel in zip(servers.cluster.members, servers.member_channels, strict=True):
        for url in ("http://localhost:99999", "http://127.0.0.1:65536"):
            assert outcome(functools.partial(add([url]), channel)) == BAD_MEMBER_URLS, member.name

    # etcd 3.5.1 takes an update to no URLs (and the call then hangs); raftkv refuses it.
    update_to_nothing = rpc_pb2.MemberUpdateRequest(ID=members_before[0][0], peerURLs=[])
    for member, channel in zip(servers.cluster.members, servers.member_channels, strict=True):
        update = functools.partial(
            rpc_pb2_grpc.ClusterStub(channel).MemberUpdate,
            update_to_nothing,
            timeout=RPC_TIMEOUT_S,
        )
        assert outcome(update) == BAD_MEMBER_URLS, member.name

    for channel in servers.member_channels:
        assert member_list(channel) == members_before
    assert_still_safe(servers)


def member_list(channel: grpc.Channel) -> list[tuple[int, str, tuple[str, ...]]]:
    request = rpc_pb2.MemberListRequest(linearizable=True)
    members = rpc_pb2_grpc.ClusterStub(channel).MemberList(request, timeout=RPC_TIMEOUT_S)
    return sorted((m.ID, m.name, tuple(m.peerURLs)) for m in members.members)


# --- 5. Compacted and future revisions -----------------------------------------------------


def test_compacted_and_future_revisions(servers: Servers) -> None:
    servers.put_before("compact")
    etcd_answers = compaction_answers(servers.etcd_channel, [servers.etcd_channel], b"c")
    assert etcd_answers == {
        "range below the compaction": COMPACTED,
        "range at the compaction": (OK, "v3"),
        "range in the future": FUTURE_REVISION,
        "compact again": COMPACTED,
        "compact below": COMPACTED,
        "compact in the future": FUTURE_REVISION,
        "watch below the compaction": ("canceled", "compact_revision = the compaction"),
    }, "etcd itself answers differently"
    key = b"bad/compact/key"
    raftkv_answers = compaction_answers(servers.member_channels[0], servers.member_channels, key)
    assert raftkv_answers == etcd_answers
    servers.written[key] = b"v4"
    assert_still_safe(servers)


def compaction_answers(
    write_channel: grpc.Channel, read_channels: list[grpc.Channel], key: bytes
) -> dict[str, object]:
    """Write four versions of ``key``, compact to the third, then ask what etcd's compaction
    errors are about; every read channel must answer the same."""
    kv = rpc_pb2_grpc.KVStub(write_channel)
    revisions = [
        kv.Put(rpc_pb2.PutRequest(key=key, value=b"v%d" % n), timeout=RPC_TIMEOUT_S).header.revision
        for n in (1, 2, 3, 4)
    ]
    compacted = revisions[2]
    kv.Compact(rpc_pb2.CompactionRequest(revision=compacted), timeout=RPC_TIMEOUT_S)
    future = revisions[-1] + 1000
    answers: list[dict[str, object]] = []
    for channel in read_channels:
        reader = rpc_pb2_grpc.KVStub(channel)

        def value_at(revision: int, reader: rpc_pb2_grpc.KVStub = reader) -> Outcome:
            request = rpc_pb2.RangeRequest(key=key, revision=revision)
            try:
                found = reader.Range(request, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                return error.code(), error.details() or ""
            return OK, b"".join(kv.value for kv in found.kvs).decode()

        def compact(revision: int, reader: rpc_pb2_grpc.KVStub = reader) -> Outcome:
            request = rpc_pb2.CompactionRequest(revision=revision)
            return outcome(lambda: reader.Compact(request, timeout=RPC_TIMEOUT_S))

        answers.append(
            {
                "range below the compaction": value_at(revisions[1]),
                "range at the compaction": value_at(compacted),
                "range in the future": value_at(future),
                "compact again": compact(compacted),
                "compact below": compact(revisions[0]),
                "compact in the future": compact(future),
                "watch below the compaction": watch_from(channel, key, revisions[0], compacted),
            }
        )
    assert all(answer == answers[0] for answer in answers), answers
    return answers[0]


def watch_from(channel: grpc.Channel, key: bytes, start: int, compacted: int) -> tuple[str, str]:
    """How a watch starting at ``start`` (below ``compacted``) ends."""
    create = rpc_pb2.WatchCreateRequest(key=key, start_revision=start)
    requests = OpenRequests(rpc_pb2.WatchRequest(create_request=create))
    call: Any = rpc_pb2_grpc.WatchStub(channel).Watch(iter(requests), timeout=RPC_TIMEOUT_S)
    try:
        for response in call:
            assert not response.events, response
            if response.canceled:
                if response.compact_revision == compacted:
                    return "canceled", "compact_revision = the compaction"
                return "canceled", f"compact_revision {response.compact_revision} != {compacted}"
        return "ended", "without a cancel"
    finally:
        call.cancel()
        requests.close()


# --- 6. Malformed JSON on the gateway ------------------------------------------------------

MALFORMED_BODIES = [
    b'{"key": ',  # truncated
    b"[]",  # not an object
    b'{"key": 5}',  # wrong type
    b'{"key": "not base64!!"}',  # bytes that are not base64
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def http_post(address: tuple[str, int], path: str, body: bytes) -> tuple[int, str, bytes]:
    """(status, content type, body) of one POST."""
    connection = http.client.HTTPConnection(*address, timeout=SOCKET_TIMEOUT_S)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        connection.close()


def host_port(url_or_endpoint: str) -> tuple[str, int]:
    host, port = url_or_endpoint.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def assert_json_error(status: int, content_type: str, body: bytes, where: str) -> None:
    """grpc-gateway's error answer: 400, {"error", "code": 3 (InvalidArgument), "message"}."""
    assert (status, content_type) == (400, "application/json"), (where, body)
    document = json.loads(body)
    assert document["code"] == 3, (where, document)
    assert document["message"] and document["error"] == document["message"], (where, document)


def test_malformed_json_on_the_gateway(servers: Servers) -> None:
    servers.put_before("gateway")
    etcd_address = host_port(servers.etcd.client_url)  # etcd serves its gateway there too
    for body in MALFORMED_BODIES:
        assert_json_error(*http_post(etcd_address, "/v3/kv/put", body), f"etcd, {body!r}")
        for member in servers.cluster.members:
            answer = http_post(host_port(member.gateway_url), "/v3/kv/put", body)
            assert_json_error(*answer, f"{member.name}, {body!r}")

    for member in servers.cluster.members:
        address = host_port(member.gateway_url)
        # raftkv refuses an unknown field (etcd ignores it): docs/api.md.
        unknown_field = json.dumps({"key": b64(b"bad/gateway/unknown"), "bogus": 1}).encode()
        assert_json_error(*http_post(address, "/v3/kv/put", unknown_field), member.name)
        # A body larger than any request is refused from its Content-Length, unread.
        status, reason = raw_http(address, content_length=10**12, body=b"{}")
        assert (status, reason) == (413, "Request Entity Too Large"), member.name
        # The client ends the connection inside its body.
        status, reason = raw_http(address, content_length=1000, body=b'{"key": "YQ=="}')
        assert (status, reason) == (400, "Bad Request"), member.name

        # The gateway still serves: a put and a range through it.
        key = f"bad/gateway/after/{member.name}".encode()
        put = json.dumps({"key": b64(key), "value": b64(b"after")}).encode()
        assert http_post(address, "/v3/kv/put", put)[0] == 200, member.name
        get = json.dumps({"key": b64(key)}).encode()
        status, _, found = http_post(address, "/v3/kv/range", get)
        assert status == 200, member.name
        assert [kv["value"] for kv in json.loads(found)["kvs"]] == [b64(b"after")], member.name
        servers.written[key] = b"after"

    assert_still_safe(servers)


def raw_http(address: tuple[str, int], content_length: int, body: bytes) -> tuple[int, str]:
    """Send a put whose Content-Length is not its body's, end the request side, and return
    the answer's status and reason (the server must answer and close)."""
    head = (
        f"POST /v3/kv/put HTTP/1.1\r\nHost: raftkv\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()
    answer = exchange(address, head + body, half_close=True)
    match = re.match(rb"HTTP/1\.1 (\d{3}) ([^\r]*)\r\n", answer)
    assert match is not None, answer
    return int(match[1]), match[2].decode()


# --- 7. Garbage on the ports ---------------------------------------------------------------


def exchange(address: tuple[str, int], data: bytes, half_close: bool) -> bytes:
    """Send ``data`` and read until the server closes the connection; it must close it."""
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as connection:
        return send_and_read_to_end(connection, data, half_close)


def send_and_read_to_end(connection: socket.socket, data: bytes, half_close: bool) -> bytes:
    connection.sendall(data)
    if half_close:
        connection.shutdown(socket.SHUT_WR)
    received = bytearray()
    try:
        while chunk := connection.recv(64 * 1024):
            received += chunk
    except ConnectionResetError:
        pass  # closed with unread data: a close all the same
    except TimeoutError:
        raise AssertionError(
            f"the server kept the connection open for {SOCKET_TIMEOUT_S} s; got {bytes(received)!r}"
        ) from None
    return bytes(received)


@dataclass(frozen=True)
class PeerGarbage:
    """What to send a member's peer port, and the warning it must log (empty: none)."""

    name: str
    data: bytes
    warning: str
    accepted: bool  # the handshake is valid: the member answers with its own first
    half_close: bool = False


def peer_garbage(cluster_id: int) -> list[PeerGarbage]:
    rng = random.Random(7)  # the same garbage every run
    stream = encode_handshake(cluster_id, NOT_A_MEMBER_ID, ConnectionKind.STREAM)
    snapshot = encode_handshake(cluster_id, NOT_A_MEMBER_ID, ConnectionKind.SNAPSHOT)
    message = encode_frame(FrameKind.MESSAGE, rng.randbytes(100))
    bad_checksum = message[:4] + bytes([message[4] ^ 0xFF]) + message[5:]
    huge_snapshot = struct.pack(">Q", 2**63) + rng.randbytes(40)
    frame_header = struct.Struct(">IIB")  # length, crc32, kind: the transport's layout
    return [
        PeerGarbage("random bytes", rng.randbytes(4096), "bad magic", accepted=False),
        PeerGarbage(
            "another cluster's handshake",
            encode_handshake(cluster_id ^ 0xFF, NOT_A_MEMBER_ID, ConnectionKind.STREAM),
            "cluster ID mismatch",
            accepted=False,
        ),
        PeerGarbage(
            "an unknown protocol version",
            struct.pack(">4sBQQB", MAGIC, PROTOCOL_VERSION + 98, cluster_id, 1, 1),
            "protocol version",
            accepted=False,
        ),
        PeerGarbage(
            "an oversized frame",
            stream + frame_header.pack(2**32 - 1, 0, FrameKind.MESSAGE),
            "exceeds the limit",
            accepted=True,
        ),
        PeerGarbage("a checksum mismatch", stream + bad_checksum, "checksum mismatch", True),
        PeerGarbage("an undecodable message", stream + message, "undecodable message", True),
        PeerGarbage(
            "a truncated frame",  # indistinguishable from a peer that died: no warning
            stream + frame_header.pack(1000, 0, FrameKind.MESSAGE) + b"x" * 10,
            "",
            accepted=True,
            half_close=True,
        ),
        PeerGarbage(
            "a snapshot of 2**63 bytes",
            snapshot + encode_frame(FrameKind.SNAPSHOT_BEGIN, huge_snapshot),
            "exceeds the limit",
            accepted=True,
        ),
    ]


def leadership(servers: Servers) -> set[tuple[int, int]]:
    """The (leader id, term) every member reports."""
    views = set()
    for channel in servers.member_channels:
        status = rpc_pb2_grpc.MaintenanceStub(channel).Status(
            rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S
        )
        views.add((status.leader, status.raftTerm))
    return views


def wait_for_log_line(member: RaftkvMember, *parts: str) -> None:
    """Wait until the member logs a line that contains every one of ``parts``."""
    deadline = time.monotonic() + LOG_WAIT_S
    while not any(
        all(part in line for part in parts)
        for line in member.log_path.read_text(errors="replace").splitlines()
    ):
        assert time.monotonic() < deadline, f"{member.name} logged no line with {parts}"
        time.sleep(POLL_INTERVAL_S)


def test_garbage_on_every_port(servers: Servers) -> None:
    servers.put_before("garbage")
    before = leadership(servers)
    assert len(before) == 1, before
    cluster_id = (
        rpc_pb2_grpc.MaintenanceStub(servers.member_channels[0])
        .Status(rpc_pb2.StatusRequest(), timeout=RPC_TIMEOUT_S)
        .header.cluster_id
    )

    for member in servers.cluster.members:
        peer_address = host_port(member.peer_url)
        for garbage in peer_garbage(cluster_id):
            with socket.create_connection(peer_address, timeout=SOCKET_TIMEOUT_S) as connection:
                local_port = connection.getsockname()[1]
                answer = send_and_read_to_end(connection, garbage.data, garbage.half_close)
            assert answer.startswith(MAGIC) == garbage.accepted, (member.name, garbage.name)
            if garbage.warning:
                wait_for_log_line(member, f"peer 127.0.0.1:{local_port}: ", garbage.warning)
        assert_request_garbage_is_answered(peer_address, cluster_id, member.name)

        # The client ports: gRPC (HTTP/2) closes the connection; the gateway answers 400.
        rng = random.Random(member.name)
        for data in (rng.randbytes(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            exchange(host_port(member.client_endpoint), data, half_close=False)
        for data in (rng.randbytes(4096), b"\x16\x03\x01\x02\x00" + rng.randbytes(200)):
            answer = exchange(host_port(member.gateway_url), data, half_close=False)
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (member.name, answer)

    assert_undecodable_requests_refused_as_by_etcd(servers)
    assert leadership(servers) == before, "the garbage disturbed the leadership"
    # Puts through every member reach every member (assert_still_safe reads each one).
    assert_still_safe(servers)


def assert_undecodable_requests_refused_as_by_etcd(servers: Servers) -> None:
    """Bytes that are no protobuf message, as a unary request, a server-streaming request
    and a message of a request stream: INTERNAL with grpc-go's text, as etcd answers."""
    calls = {
        "Put": (raw_call("/etcdserverpb.KV/Put", UNDECODABLE), UNARY_UNDECODABLE_PREFIX),
        "Snapshot": (
            raw_server_stream("/etcdserverpb.Maintenance/Snapshot"),
            STREAM_UNDECODABLE_PREFIX,
        ),
        "Watch": (raw_bidi_stream("/etcdserverpb.Watch/Watch"), STREAM_UNDECODABLE_PREFIX),
        "LeaseKeepAlive": (
            raw_bidi_stream("/etcdserverpb.Lease/LeaseKeepAlive"),
            STREAM_UNDECODABLE_PREFIX,
        ),
    }
    for name, (call, prefix) in calls.items():
        for where, channel in [("etcd", servers.etcd_channel), *named_channels(servers)]:
            code, message = outcome(functools.partial(call, channel))
            assert code == grpc.StatusCode.INTERNAL, (name, where, message)
            assert message.startswith(prefix), (name, where, message)


def named_channels(servers: Servers) -> list[tuple[str, grpc.Channel]]:
    names = [member.name for member in servers.cluster.members]
    return list(zip(names, servers.member_channels, strict=True))


def raw_server_stream(method: str) -> Callable[[grpc.Channel], object]:
    def call(channel: grpc.Channel) -> object:
        receive = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        return list(receive(UNDECODABLE, timeout=RPC_TIMEOUT_S))

    return call


def raw_bidi_stream(method: str) -> Callable[[grpc.Channel], object]:
    def call(channel: grpc.Channel) -> object:
        exchange = channel.stream_stream(
            method, request_serializer=None, response_deserializer=None
        )
        return list(exchange(iter([UNDECODABLE]), timeout=RPC_TIMEOUT_S))

    return call


def assert_request_garbage_is_answered(
    address: tuple[str, int], cluster_id: int, name: str
) -> None:
    """A peer request the member cannot parse is answered REQUEST_FAILED, with the reason."""
    request_id = 7
    hello = encode_handshake(cluster_id, NOT_A_MEMBER_ID, ConnectionKind.REQUEST)
    request = encode_frame(FrameKind.REQUEST, struct.pack(">Q", request_id) + b"not a call")
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as connection:
        connection.sendall(hello + request)
        reply = read_exactly(connection, len(hello) + 9)  # handshake, then a frame header
        length, _, kind = struct.unpack(">IIB", reply[len(hello) :])
        payload = read_exactly(connection, length)
    assert reply.startswith(MAGIC), name
    assert kind == FrameKind.REQUEST_FAILED, (name, kind, payload)
    assert struct.unpack(">Q", payload[:8]) == (request_id,), name
    assert b"malformed" in payload[8:], (name, payload)


def read_exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


# --- 8. Invalid settings and a corrupted WAL at startup ------------------------------------

BAD_FLAGS = [
    (["--election-timeout", "10", "--heartbeat-interval", "100"], "--election-timeout"),
    (["--initial-cluster-state", "bogus"], "--initial-cluster-state"),
    (["--max-request-bytes", "0"], "--max-request-bytes"),
    (["--max-txn-ops", "-1"], "--max-txn-ops"),
    (["--heartbeat-interval", "abc"], "--heartbeat-interval"),
    (["--auto-compaction-retention", "xyz"], "--auto-compaction-retention"),
]
CORRUPT_WAL_KEYS = 30


def serve_command(data_dir: Path, bad_flags: list[str]) -> list[str]:
    """``raftkv serve`` with valid flags for one member on free ports, plus ``bad_flags``."""
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    return [
        sys.executable, "-m", "raftkv", "serve",
        "--name", "m1",
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"m1={peer_url}",
        *bad_flags,
    ]  # fmt: skip


def test_invalid_flags_stop_the_member_with_a_message(tmp_path: Path) -> None:
    processes = []
    try:
        for index, (bad_flags, _) in enumerate(BAD_FLAGS):
            command = serve_command(tmp_path / f"data-{index}", bad_flags)
            processes.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            )
        for index, (bad_flags, flag) in enumerate(BAD_FLAGS):
            process = processes[index]
            _, stderr = process.communicate(timeout=PROCESS_EXIT_TIMEOUT_S)
            message = stderr.decode()
            assert process.returncode == 2, (bad_flags, message)
            assert message.startswith(f"raftkv serve: {flag}"), (bad_flags, message)
            assert "Traceback" not in message, message
            assert not (tmp_path / f"data-{index}").exists(), "a refused start made its data dir"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_port_in_use_stops_the_member_cleanly(tmp_path: Path) -> None:
    """The member is up when a later listener (here /metrics) finds its port taken: it
    stops everything that started and exits 1 with the reason, not with a traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = serve_command(
            tmp_path / "data", ["--listen-metrics-urls", f"http://127.0.0.1:{port}"]
        )
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            _, stderr = process.communicate(timeout=PROCESS_EXIT_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    message = stderr.decode()
    assert process.returncode == 1, message
    assert "cannot start" in message and "address already in use" in message, message
    assert "Traceback" not in message and "AssertionError" not in message, message


def test_corrupted_wal_record_stops_the_member_naming_file_and_offset(tmp_path: Path) -> None:
    with RaftkvCluster.start(tmp_path, size=1) as cluster:
        cluster.wait_for_leader()
        written = {
            f"wal/key-{i:02d}".encode(): f"wal-value-{i:02d}".encode()
            for i in range(CORRUPT_WAL_KEYS)
        }
        with grpc.insecure_channel(cluster.member(0).client_endpoint) as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            for key, value in written.items():
                kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT_S)
        assert cluster.stop(0) == 0

        (wal_path,) = (cluster.member(0).data_dir / "member" / "wal").glob("*.wal")
        intact = wal_path.read_bytes()
        middle = f"wal-value-{CORRUPT_WAL_KEYS // 2:02d}".encode()
        record_offset, byte_offset = entry_record_holding(intact, middle)
        last_put = intact.rfind(f"wal-value-{CORRUPT_WAL_KEYS - 1:02d}".encode())
        assert record_offset < byte_offset < last_put, "the damaged record must not be the tail"
        corrupted = bytearray(intact)
        corrupted[byte_offset] ^= 0x01
        wal_path.write_bytes(corrupted)

        cluster.restart(0)
        process = cluster.member(0).process
        assert process is not None
        exit_code = process.wait(timeout=PROCESS_EXIT_TIMEOUT_S)
        log = log_tail(cluster.member(0).log_path)
        assert exit_code != 0, log
        assert str(wal_path) in log and f"offset {record_offset}" in log, log
        assert wal_path.read_bytes() == corrupted, "the refused start changed the WAL"

        # Undo the damage: the member starts again with every key.
        wal_path.write_bytes(intact)
        cluster.restart(0)
        cluster.wait_for_leader()
        with grpc.insecure_channel(cluster.member(0).client_endpoint) as channel:
            assert member_key_space(channel) == written


def entry_record_holding(wal: bytes, text: bytes) -> tuple[int, int]:
    """(offset of the ENTRY record whose payload holds ``text``, offset of ``text``)."""
    offset = 0
    while (decoded := decode_record(wal, offset)).status is DecodeStatus.OK:
        assert decoded.record is not None
        payload_at = wal.find(text, offset, decoded.next_offset)
        if decoded.record.type is RecordType.ENTRY and payload_at >= 0:
            return offset, payload_at
        offset = decoded.next_offset
    raise AssertionError(f"no ENTRY record holds {text!r}")
