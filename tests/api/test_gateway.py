"""The JSON gateway: etcd's HTTP/JSON API over the member's gRPC, through plain HTTP
clients, etcd3gw, raw sockets for the HTTP parser, and compared with real etcd's."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcd3gw.client import Etcd3Client

from raftkv import limits
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.gateway import start_gateway
from raftkv.server.requests import AlarmAction, AlarmRequest
from raftkv.storage.alarm import AlarmType
from tests.api.full_server import FullServer, full, wait_until
from tests.etcd_process import run_etcd

__all__ = ["full"]  # the fixture

TIMEOUT_S = 10.0


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def request(
    base_url: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> Reply:
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        connection.request(method, path, body=raw, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def post(server: FullServer, path: str, body: dict[str, Any] | bytes | None = None) -> Any:
    """The JSON of a successful call."""
    reply = request(server.gateway_url, path, body if body is not None else {})
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.headers["Content-Type"] == "application/json"
    return reply.json


class ChunkedStream:
    """A streaming POST on a raw socket, read one HTTP chunk at a time."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        self.file = self.sock.makefile("rb")
        self.status_line = self.file.readline().decode().rstrip("\r\n")
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().rstrip("\r\n")) != "":
            name, _, value = line.partition(":")
            self.headers[name.lower()] = value.strip()

    def chunk(self) -> bytes:
        size = int(self.file.readline().strip(), 16)
        data = self.file.read(size)
        assert self.file.read(2) == b"\r\n"
        return data

    def message(self) -> Any:
        data = self.chunk()
        assert data.endswith(b"\n") and data.count(b"\n") == 1, data
        return json.loads(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def streams() -> Iterator[list[ChunkedStream]]:
    opened: list[ChunkedStream] = []
    try:
        yield opened
    finally:
        for stream in opened:
            stream.close()


def raw_exchange(port: int, data: bytes, timeout_s: float = TIMEOUT_S) -> bytes:
    """Send ``data`` and read until the server closes the connection. A server that
    closes while unread data is still coming makes the kernel answer with a reset: that
    is a close too, after whatever arrived before it."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return received


# --- KV ---------------------------------------------------------------------------------


def test_put_range_deleterange_txn(full: FullServer) -> None:
    put = post(full, "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    revision = put["header"]["revision"]
    assert isinstance(revision, str) and int(revision) >= 2
    assert put["header"]["member_id"] == str(full.node.member_id)
    ranged = post(full, "/v3/kv/range", {"key": b64("foo")})
    assert ranged["kvs"] == [
        {
            "key": b64("foo"),
            "create_revision": revision,
            "mod_revision": revision,
            "version": "1",
            "value": b64("bar"),
        }
    ]
    assert ranged["count"] == "1" and "more" not in ranged  # defaults are omitted
    txn = post(
        full,
        "/v3/kv/txn",
        {
            "compare": [
                {"key": b64("foo"), "target": "VALUE", "result": "EQUAL", "value": b64("bar")}
            ],
            "success": [{"request_put": {"key": b64("foo"), "value": b64("baz")}}],
            "failure": [{"request_range": {"key": b64("foo")}}],
        },
    )
    assert txn["succeeded"] is True
    assert txn["responses"] == [{"response_put": {"header": {"revision": str(int(revision) + 1)}}}]
    deleted = post(full, "/v3/kv/deleterange", {"key": b64("foo"), "prev_kv": True})
    assert deleted["deleted"] == "1" and deleted["prev_kvs"][0]["value"] == b64("baz")
    assert "kvs" not in post(full, "/v3/kv/range", {"key": b64("foo")})


def test_camel_case_input_and_enum_names_are_accepted(full: FullServer) -> None:
    for key in ("a1", "a2", "a3"):
        post(full, "/v3/kv/put", {"key": b64(key), "value": b64("v")})
    ranged = post(
        full,
        "/v3/kv/range",
        {
            "key": b64("a"),
            "rangeEnd": b64("b"),
            "sortOrder": "DESCEND",
            "sortTarget": "KEY",
            "keysOnly": True,
            "limit": "2",
        },
    )
    assert [kv["key"] for kv in ranged["kvs"]] == [b64("a3"), b64("a2")]
    assert ranged["more"] is True and ranged["count"] == "3"
    assert all("value" not in kv for kv in ranged["kvs"])
    txn = post(
        full,
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("new"), "target": "CREATE", "createRevision": 0}],
            "success": [{"requestPut": {"key": b64("new"), "value": b64("x")}}],
        },
    )
    assert txn["succeeded"] is True and "response_put" in txn["responses"][0]


def test_errors_have_grpc_gateway_body_and_status(full: FullServer) -> None:
    empty = request(full.gateway_url, "/v3/kv/range", {"key": ""})
    message = "etcdserver: key is not provided"
    assert empty.status == 400
    assert empty.json == {"error": message, "code": 3, "message": message}
    for index in range(4):
        post(full, "/v3/kv/put", {"key": b64("c"), "value": b64(str(index))})
    post(full, "/v3/kv/compaction", {"revision": "3"})
    compacted = request(full.gateway_url, "/v3/kv/range", {"key": b64("c"), "revision": "2"})
    message = "etcdserver: mvcc: required revision has been compacted"
    assert compacted.status == 400
    assert compacted.json == {"error": message, "code": 11, "message": message}
    lease = request(full.gateway_url, "/v3/lease/revoke", {"ID": "12345"})
    assert lease.status == 404 and lease.json["code"] == 5
    leader = request(full.gateway_url, "/v3/election/leader", {"name": b64("none")})
    assert (leader.status, leader.json["code"], leader.json["message"]) == (
        500,
        2,
        "election: no leader",
    )


# --- Streams ----------------------------------------------------------------------------


def test_watch_stream_receives_events_one_chunk_per_message(
    full: FullServer, streams: list[ChunkedStream]
) -> None:
    body = json.dumps({"create_request": {"key": b64("w"), "range_end": b64("x")}}).encode()
    stream = ChunkedStream(full.gateway_port, "/v3/watch", body)
    streams.append(stream)
    assert stream.status_line == "HTTP/1.1 200 OK"
    assert stream.headers["transfer-encoding"] == "chunked"
    created = stream.message()["result"]
    assert created["created"] is True
    put = post(full, "/v3/kv/put", {"key": b64("w1"), "value": b64("v")})
    post(full, "/v3/kv/deleterange", {"key": b64("w1")})
    events = stream.message()["result"]["events"]
    assert events == [
        {
            "kv": {
                "key": b64("w1"),
                "create_revision": put["header"]["revision"],
                "mod_revision": put["header"]["revision"],
                "version": "1",
                "value": b64("v"),
            }
        }
    ]
    (deleted,) = stream.message()["result"]["events"]
    assert deleted["type"] == "DELETE" and deleted["kv"]["key"] == b64("w1")
    # The client leaving ends the gRPC watch: no watcher stays behind.
    stream.close()
    wait_until(lambda: full.watcher_count() == 0, "the watch ended with the HTTP client")
    assert request(full.gateway_url, "/v3/kv/range", {"key": b64("w1")}).status == 200


def test_watch_with_several_create_requests_in_one_body(
    full: FullServer, streams: list[ChunkedStream]
) -> None:
    body = (
        json.dumps({"create_request": {"key": b64("p")}})
        + "\n"
        + json.dumps({"create_request": {"key": b64("q"), "watch_id": "7"}})
    ).encode()
    stream = ChunkedStream(full.gateway_port, "/v3/watch", body)
    streams.append(stream)
    first, second = stream.message()["result"], stream.message()["result"]
    assert first["created"] and second["created"] and second["watch_id"] == "7"
    post(full, "/v3/kv/put", {"key": b64("q"), "value": b64("1")})
    event = stream.message()["result"]
    assert event["watch_id"] == "7" and event["events"][0]["kv"]["key"] == b64("q")


def test_lease_grant_keepalive_timetolive(full: FullServer) -> None:
    granted = post(full, "/v3/lease/grant", {"TTL": "30"})
    lease_id = granted["ID"]
    assert granted["TTL"] == "30" and isinstance(lease_id, str)
    post(full, "/v3/kv/put", {"key": b64("leased"), "value": b64("v"), "lease": lease_id})
    body = (json.dumps({"ID": lease_id}) + " " + json.dumps({"ID": lease_id})).encode()
    stream = ChunkedStream(full.gateway_port, "/v3/lease/keepalive", body)
    try:
        for _ in range(2):
            result = stream.message()["result"]
            assert (result["ID"], result["TTL"]) == (lease_id, "30")
        assert stream.chunk() == b""  # the stream ends once both are answered
    finally:
        stream.close()
    for path in ("/v3/lease/timetolive", "/v3/kv/lease/timetolive"):
        ttl = post(full, path, {"ID": lease_id, "keys": True})
        assert ttl["grantedTTL"] == "30" and 0 < int(ttl["TTL"]) <= 30
        assert ttl["keys"] == [b64("leased")]
    leases = post(full, "/v3/lease/leases", {})
    assert leases["leases"] == [{"ID": lease_id}]
    post(full, "/v3/kv/lease/revoke", {"ID": lease_id})
    assert post(full, "/v3/lease/timetolive", {"ID": lease_id})["TTL"] == "-1"
    assert "kvs" not in post(full, "/v3/kv/range", {"key": b64("leased")})


def test_lock_and_election_through_the_gateway(
    full: FullServer, streams: list[ChunkedStream]
) -> None:
    lease_id = post(full, "/v3/lease/grant", {"TTL": "30"})["ID"]
    locked = post(full, "/v3/lock/lock", {"name": b64("gw"), "lease": lease_id})
    assert base64.b64decode(locked["key"]) == b"gw/" + format(int(lease_id), "x").encode()
    post(full, "/v3/lock/unlock", {"key": locked["key"]})
    campaign = post(
        full, "/v3/election/campaign", {"name": b64("el"), "lease": lease_id, "value": b64("me")}
    )
    leader = campaign["leader"]
    assert leader["lease"] == lease_id and leader["rev"] == campaign["header"]["revision"]
    # Like grpc-gateway, the stream's status line waits for its first message.
    observe = json.dumps({"name": b64("el")}).encode()
    stream = ChunkedStream(full.gateway_port, "/v3/election/observe", observe)
    streams.append(stream)
    assert stream.message()["result"]["kv"]["value"] == b64("me")
    post(full, "/v3/election/proclaim", {"leader": leader, "value": b64("again")})
    assert stream.message()["result"]["kv"]["value"] == b64("again")
    assert post(full, "/v3/election/leader", {"name": b64("el")})["kv"]["value"] == b64("again")
    post(full, "/v3/election/resign", {"leader": leader})


def test_snapshot_stream(full: FullServer) -> None:
    stream = ChunkedStream(full.gateway_port, "/v3/maintenance/snapshot", b"{}")
    try:
        blobs = []
        while chunk := stream.chunk():
            result = json.loads(chunk)["result"]
            blobs.append(base64.b64decode(result["blob"]))
        assert "remaining_bytes" not in result  # the last message has 0 left
        assert sum(len(blob) for blob in blobs) > 0
    finally:
        stream.close()


# --- Malformed input --------------------------------------------------------------------

MALFORMED_BODIES = [
    b"{bad",
    b'{"key": "Zm9v"} trailing',
    b'{"key": "Zm9v", "unknown": 1}',
    b'{"key": 5}',
    b'{"key": "Zm9v", "key": "YmFy"}',
    b"[1, 2]",
    b"\xff\xfe",
    b"[" * 100_000,
    b'{"limit": "many"}',
    b'{"sort_order": "SIDEWAYS"}',
]


@pytest.mark.parametrize("body", MALFORMED_BODIES, ids=range(len(MALFORMED_BODIES)))
def test_malformed_json_is_400_and_the_server_still_serves(full: FullServer, body: bytes) -> None:
    reply = request(full.gateway_url, "/v3/kv/range", body)
    assert reply.status == 400, reply.body
    error = reply.json
    assert error["code"] == 3 and error["message"] == error["error"] and error["message"]
    assert post(full, "/v3/kv/put", {"key": b64("still"), "value": b64("ok")})["header"]


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
        b"GARBAGE\r\n\r\n",
        b"\x00" * 70_000,
    ],
    ids=["tls", "line", "zeros"],
)
def test_garbage_closes_the_connection_and_the_server_still_serves(
    full: FullServer, data: bytes
) -> None:
    answer = raw_exchange(full.gateway_port, data)
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 "))
    assert post(full, "/v3/kv/put", {"key": b64("still"), "value": b64("ok")})["header"]


TWO_LENGTHS = b"Content-Length: 1\r\nContent-Length: 2\r\n"


def head_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n" + TWO_LENGTHS + b"\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 400),  # no Host
        (b"POST /v3/kv/range HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"POST /v3/kv/range HTTP/1.1\nHost: x\n\n", 400),  # bare LF ends no line
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
        (b"POST http://x/v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", 417),
        (b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
    ids=[
        "chunked",
        "too-long",
        "negative-length",
        "two-lengths",
        "two-length-fields",
        "no-host",
        "http2",
        "bare-lf",
        "folded",
        "space-in-name",
        "control-char",
        "absolute-form",
        "expect",
        "huge-head",
    ],
)
def test_http_parser_refuses_and_closes(full: FullServer, head: bytes, status: int) -> None:
    answer = raw_exchange(full.gateway_port, head)
    assert head_status(answer) == status, answer[:200]
    assert b"\r\nConnection: close\r\n" in answer.split(b"\r\n\r\n")[0] + b"\r\n"


def test_keep_alive_pipelining_and_http10(full: FullServer) -> None:
    body = json.dumps({"key": b64("k")}).encode()
    one = f"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    last = one.replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n")
    answer = raw_exchange(full.gateway_port, one.encode() + body + last.encode() + body)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    http10 = f"POST /v3/kv/range HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n"
    answer = raw_exchange(full.gateway_port, http10.encode() + body)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in answer


def test_expect_100_continue(full: FullServer) -> None:
    body = json.dumps({"key": b64("k"), "value": b64("v" * 5000)}).encode()
    head = (
        f"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", full.gateway_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


def test_largest_request_fits_the_body_limit(full: FullServer) -> None:
    # A value that, with its key, is just under the request limit passes in base64 JSON.
    value = b"x" * (full.options.max_request_bytes - 1024)
    put = post(full, "/v3/kv/put", {"key": b64("big"), "value": b64(value)})
    assert put["header"]["revision"]
    too_big = request(
        full.gateway_url,
        "/v3/kv/put",
        {"key": b64("big"), "value": b64(value + b"x" * 2048)},
    )
    assert too_big.status == 400 and too_big.json["message"] == "etcdserver: request is too large"


def test_slow_and_idle_connections_time_out(
    full: FullServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "GATEWAY_READ_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(limits, "GATEWAY_IDLE_TIMEOUT_SECONDS", 0.3)
    started = time.monotonic()
    answer = raw_exchange(full.gateway_port, b"POST /v3/kv/range HTTP/1.1\r\nHost:")
    assert head_status(answer) == 408 and time.monotonic() - started < TIMEOUT_S / 2
    assert raw_exchange(full.gateway_port, b"") == b""  # idle: closed without an answer


def test_methods_and_paths(full: FullServer) -> None:
    wrong = request(full.gateway_url, "/v3/kv/range", method="GET")
    assert (wrong.status, wrong.headers["Allow"], wrong.body) == (
        405,
        "POST",
        b"Method Not Allowed\n",
    )
    missing = request(full.gateway_url, "/v3/kv/nothing", {})
    assert (missing.status, missing.body) == (404, b"Not Found\n")
    assert request(full.gateway_url, "/nothing", method="GET").status == 404
    assert request(full.gateway_url, "/health", {}).status == 405


def test_unimplemented_rpc_maps_to_501(full: FullServer) -> None:
    reply = request(full.gateway_url, "/v3/maintenance/downgrade", {})
    assert reply.status == 501 and reply.json["code"] == 12


# --- Local endpoints --------------------------------------------------------------------


def test_version_health_livez_readyz(full: FullServer) -> None:
    version = request(full.gateway_url, "/version", method="GET")
    assert version.json == {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
    health = request(full.gateway_url, "/health", method="GET")
    assert (health.status, health.json) == (200, {"health": "true", "reason": ""})
    assert request(full.gateway_url, "/livez", method="GET").body == b"ok"
    assert request(full.gateway_url, "/readyz", method="GET").body == b"ok"
    full.node.leader_id = 0
    health = request(full.gateway_url, "/health", method="GET")
    assert (health.status, health.json) == (503, {"health": "false", "reason": "RAFT NO LEADER"})
    assert request(full.gateway_url, "/readyz", method="GET").status == 503
    assert request(full.gateway_url, "/livez", method="GET").status == 200
    serializable = request(full.gateway_url, "/health?serializable=true", method="GET")
    assert serializable.status == 200


def test_health_reports_alarms_unless_excluded(full: FullServer) -> None:
    alarm = AlarmRequest(AlarmAction.ACTIVATE, full.node.member_id, AlarmType.NOSPACE)
    full.call(full.node.propose(alarm))
    health = request(full.gateway_url, "/health", method="GET")
    assert (health.status, health.json["reason"]) == (503, "ALARM NOSPACE")
    excluded = request(full.gateway_url, "/health?exclude=NOSPACE", method="GET")
    assert excluded.json == {"health": "true", "reason": ""}


# --- Metadata ---------------------------------------------------------------------------


class _FakeMember:
    """A stand-in gRPC server: Range answers with the token metadata it got; Snapshot
    sends ``snapshot_messages`` messages and then fails with UNAVAILABLE."""

    def __init__(self, snapshot_messages: int) -> None:
        self.server = grpc.aio.server()

        async def range_call(request: rpc_pb2.RangeRequest, context: Any) -> Any:
            metadata = dict(context.invocation_metadata() or ())
            token = metadata.get("token", "<none>")
            return rpc_pb2.RangeResponse(kvs=[{"key": request.key, "value": token.encode()}])

        async def snapshot_call(request: rpc_pb2.SnapshotRequest, context: Any) -> None:
            for index in range(snapshot_messages):
                await context.write(rpc_pb2.SnapshotResponse(blob=bytes([index])))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "member went away")

        kv = {
            "Range": grpc.unary_unary_rpc_method_handler(
                range_call,
                request_deserializer=rpc_pb2.RangeRequest.FromString,
                response_serializer=rpc_pb2.RangeResponse.SerializeToString,
            )
        }
        maintenance = {
            "Snapshot": grpc.unary_stream_rpc_method_handler(
                snapshot_call,
                request_deserializer=rpc_pb2.SnapshotRequest.FromString,
                response_serializer=rpc_pb2.SnapshotResponse.SerializeToString,
            )
        }
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("etcdserverpb.KV", kv),
                grpc.method_handlers_generic_handler("etcdserverpb.Maintenance", maintenance),
            )
        )


@pytest.fixture
def fake_gateway(full: FullServer) -> Iterator[Callable[[int], str]]:
    """Start a gateway in front of a _FakeMember; the gateway's base URL."""
    started: list[tuple[Any, Any]] = []

    async def start(snapshot_messages: int) -> tuple[Any, Any]:
        fake = _FakeMember(snapshot_messages)
        port = fake.server.add_insecure_port("127.0.0.1:0")
        await fake.server.start()
        gateway = await start_gateway(["127.0.0.1:0"], f"127.0.0.1:{port}", 1024)
        return fake, gateway

    def make(snapshot_messages: int) -> str:
        fake, gateway = full.call(start(snapshot_messages))
        started.append((fake, gateway))
        return f"http://127.0.0.1:{gateway.ports[0]}"

    try:
        yield make
    finally:
        for fake, gateway in started:
            full.call(gateway.close())
            full.call(fake.server.stop(0))


def test_authorization_header_is_the_token_metadata(fake_gateway: Callable[[int], str]) -> None:
    url = fake_gateway(0)
    headers = {"Authorization": "secret-token"}
    reply = request(url, "/v3/kv/range", {"key": b64("k")}, headers=headers)
    assert base64.b64decode(reply.json["kvs"][0]["value"]) == b"secret-token"
    reply = request(url, "/v3/kv/range", {"key": b64("k")})
    assert base64.b64decode(reply.json["kvs"][0]["value"]) == b"<none>"


def test_stream_failing_before_its_first_message_answers_like_a_unary_call(
    fake_gateway: Callable[[int], str],
) -> None:
    reply = request(fake_gateway(0), "/v3/maintenance/snapshot", {})
    assert reply.status == 503
    assert reply.json == {"error": "member went away", "code": 14, "message": "member went away"}


def test_stream_failing_later_ends_with_an_error_chunk(fake_gateway: Callable[[int], str]) -> None:
    port = int(fake_gateway(2).rsplit(":", 1)[1])
    stream = ChunkedStream(port, "/v3/maintenance/snapshot", b"{}")
    try:
        assert stream.status_line == "HTTP/1.1 200 OK"
        assert [stream.message()["result"]["blob"] for _ in range(2)] == [b64(b"\0"), b64(b"\1")]
        assert stream.message() == {
            "error": {
                "grpc_code": 14,
                "http_code": 503,
                "message": "member went away",
                "http_status": "Service Unavailable",
            }
        }
        assert stream.chunk() == b""
    finally:
        stream.close()


def test_client_leaving_cancels_a_waiting_lock(full: FullServer) -> None:
    holder = int(post(full, "/v3/lease/grant", {"TTL": "30"})["ID"])
    waiter = post(full, "/v3/lease/grant", {"TTL": "30"})["ID"]
    held = post(full, "/v3/lock/lock", {"name": b64("bye"), "lease": str(holder)})["key"]
    body = json.dumps({"name": b64("bye"), "lease": waiter}).encode()
    head = f"POST /v3/lock/lock HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", full.gateway_port), timeout=TIMEOUT_S) as sock:
        sock.sendall(head.encode() + body)
        wait_until(lambda: full.watcher_count() == 1, "the HTTP locker waits")
    wait_until(lambda: full.watcher_count() == 0, "the abandoned Lock call was canceled")

    def queued() -> list[str]:
        prefix = {"key": b64("bye/"), "range_end": b64("bye0"), "keys_only": True}
        return [kv["key"] for kv in post(full, "/v3/kv/range", prefix).get("kvs", [])]

    wait_until(lambda: queued() == [held], "the abandoned waiter left the queue")


# --- etcd3gw ----------------------------------------------------------------------------


def test_etcd3gw_client(full: FullServer) -> None:
    client = Etcd3Client(host="127.0.0.1", port=full.gateway_port, timeout=TIMEOUT_S)
    assert client.put("gw/a", "1") is True
    client.put("gw/b", "2")
    assert client.get("gw/a") == [b"1"]
    assert sorted(value for value, _ in client.get_prefix("gw/")) == [b"1", b"2"]
    assert client.delete("gw/b") is True
    assert client.get("gw/b") == []
    lease = client.lease(ttl=30)
    client.put("gw/leased", "v", lease=lease)
    assert lease.ttl() > 0 and lease.refresh() == 30
    assert lease.keys() == [b"gw/leased"]
    lease.revoke()
    assert client.get("gw/leased") == []
    events, cancel = client.watch("gw/w")
    try:
        client.put("gw/w", "seen")
        event = next(events)
        assert (event["kv"]["key"], event["kv"]["value"]) == (b"gw/w", b"seen")
    finally:
        cancel()
    lock = client.lock("gwlock", ttl=30)
    assert lock.acquire() is True
    assert client.lock("gwlock", ttl=30).acquire() is False
    assert lock.is_acquired() and lock.release() is True
    wait_until(lambda: full.watcher_count() == 0, "etcd3gw's watch ended")


# --- Against real etcd's gateway --------------------------------------------------------

# Values that differ between two servers by nature: their ids, Raft terms, lease ids.
_VOLATILE = {"cluster_id", "member_id", "raft_term", "ID", "lease"}


def _normalize(document: Any) -> Any:
    if isinstance(document, dict):
        return {
            key: "*" if key in _VOLATILE else _normalize(value) for key, value in document.items()
        }
    if isinstance(document, list):
        return [_normalize(item) for item in document]
    return document


def _session(base_url: str, port: int) -> list[Any]:
    """A fixed sequence of calls; what each answered (status, normalized JSON)."""
    out: list[Any] = []

    def call(path: str, body: dict[str, Any], mask: Callable[[Any], Any] = _normalize) -> Any:
        reply = request(base_url, path, body)
        document = reply.json
        out.append((path, reply.status, mask(document)))
        return document

    call("/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
    call("/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True})
    call("/v3/kv/range", {"key": b64("foo")})
    call("/v3/kv/range", {"key": b64("f"), "range_end": b64("g"), "count_only": True})
    call(
        "/v3/kv/txn",
        {
            "compare": [{"key": b64("foo"), "target": "CREATE", "result": "EQUAL"}],
            "success": [{"request_put": {"key": b64("foo"), "value": b64("x")}}],
            "failure": [
                {"request_range": {"key": b64("foo")}},
                {"request_delete_range": {"key": b64("none")}},
            ],
        },
    )
    lease_id = call("/v3/lease/grant", {"TTL": "40"})["ID"]
    call("/v3/kv/put", {"key": b64("l"), "value": b64("v"), "lease": lease_id})
    call(
        "/v3/lease/timetolive",
        {"ID": lease_id, "keys": True},
        lambda document: _normalize({**document, "TTL": "*"}),
    )
    call("/v3/kv/deleterange", {"key": b64("f"), "range_end": b64("g"), "prev_kv": True})
    call("/v3/kv/range", {"key": ""})
    call("/v3/kv/range", {"key": b64("foo"), "revision": "99"})
    call("/v3/kv/compaction", {"revision": "3"})
    call("/v3/kv/range", {"key": b64("foo"), "revision": "2"})
    call("/v3/election/leader", {"name": b64("nobody")})
    call("/v3/lock/unlock", {"key": ""})
    call("/v3/lock/lock", {"name": b64("x"), "lease": "424242"})
    call(
        "/v3/maintenance/status",
        {},
        # raftkv also reports etcd 3.6's dbSizeQuota, which etcd 3.5 lacks.
        lambda document: sorted(set(document) - {"dbSizeQuota"}),
    )
    call("/v3/lease/revoke", {"ID": lease_id})
    watch = ChunkedStream(
        port,
        "/v3/watch",
        json.dumps({"create_request": {"key": b64("l"), "start_revision": "2"}}).encode(),
    )
    try:
        out.append(("watch", watch.status_line, [_normalize(watch.message()) for _ in range(2)]))
    finally:
        watch.close()
    return out


def test_same_json_as_etcds_gateway(full: FullServer, tmp_path: Path) -> None:
    ours = _session(full.gateway_url, full.gateway_port)
    (tmp_path / "etcd").mkdir()
    with run_etcd(tmp_path / "etcd") as etcd:
        port = int(etcd.client_url.rsplit(":", 1)[1])
        theirs = _session(etcd.client_url, port)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine == reference
