"""Third-party etcd clients from PyPI, used as their users do, against a 3-member raftkv cluster.

- ``etcd3`` (gRPC, blocking) runs in a child process (``etcd3_scenarios.py``): its generated
  protobuf code needs the pure-Python protobuf runtime;
- ``aetcd`` (gRPC, asyncio) runs here;
- ``etcd3gw`` talks to the JSON gateway (``--listen-client-http-urls``).

Every test runs against raftkv and against a real etcd, so the expectations are etcd's own
behaviour. The clients talk to a raftkv follower, so every write also crosses raftkv's
forwarding to the leader.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import etcd3gw
import pytest

from tests.etcd_process import EtcdProcess
from tests.procs import RaftkvCluster

SCENARIO_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10
EVENT_TIMEOUT_S = 10.0
WRITE_DELAY_S = 0.3
LOCK_TTL_S = 10
LOCK_BLOCKED_TIMEOUT_S = 1
LOCK_RELEASE_DELAY_S = 0.5
# The waiter must not get the lock before the holder releases it (timer slack allowed).
MIN_WAIT_FRACTION = 0.8

_T = TypeVar("_T")


@dataclass(frozen=True)
class Server:
    """Where a client connects: gRPC host/port and the JSON gateway's host/port."""

    name: str
    grpc_host: str
    grpc_port: int
    gateway_host: str
    gateway_port: int
    member_count: int


def host_port(url_or_endpoint: str) -> tuple[str, int]:
    url = urlsplit(url_or_endpoint if "://" in url_or_endpoint else f"http://{url_or_endpoint}")
    assert url.hostname is not None and url.port is not None, url_or_endpoint
    return url.hostname, url.port


@pytest.fixture(scope="module", params=["raftkv", "etcd"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "etcd":
        etcd: EtcdProcess = request.getfixturevalue("real_etcd")
        return Server("etcd", *host_port(etcd.endpoint), *host_port(etcd.client_url), 1)
    cluster: RaftkvCluster = request.getfixturevalue("raftkv_cluster")
    follower = cluster.member((cluster.wait_for_leader() + 1) % len(cluster.members))
    return Server(
        "raftkv",
        *host_port(follower.client_endpoint),
        *host_port(follower.gateway_url),
        len(cluster.members),
    )


# --- etcd3 ------------------------------------------------------------------------------


def run_etcd3(server: Server, scenario: str) -> dict[str, Any]:
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    script = Path(__file__).with_name("etcd3_scenarios.py")
    result = subprocess.run(
        [sys.executable, str(script), server.grpc_host, str(server.grpc_port), scenario]
        + [f"etcd3/{scenario}/"],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCENARIO_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    observed: dict[str, Any] = json.loads(result.stdout)
    return observed


def test_etcd3_kv(server: Server) -> None:
    seen = run_etcd3(server, "kv")
    assert seen["get"] == ["v1", 1, True]
    assert seen["prefix"] == [["etcd3/kv/p/a", "1"], ["etcd3/kv/p/b", "2"]]
    assert seen["prev_kv"] == ["etcd3/kv/k1", "v1"]
    assert seen["deleted"] is True and seen["missing_delete"] is False
    assert seen["prefix_deleted"] == 2
    assert seen["after"] == [None, 0]


def test_etcd3_transaction(server: Server) -> None:
    seen = run_etcd3(server, "txn")
    assert seen == {
        "first": True,
        "first_get": ["b"],
        "second": False,
        "second_get": ["b"],
        "value": "b",
    }


def test_etcd3_watch(server: Server) -> None:
    seen = run_etcd3(server, "watch")
    assert seen["events"] == [
        ["PutEvent", "etcd3/watch/w", "1"],
        ["DeleteEvent", "etcd3/watch/w", ""],
    ]


def test_etcd3_lease(server: Server) -> None:
    seen = run_etcd3(server, "lease")
    assert seen["granted_ttl"] == 30 and 28 <= seen["remaining_ttl"] <= 30
    assert seen["keys"] == ["etcd3/lease/leased"] and seen["key_lease_matches"]
    assert seen["refreshed_ttl"] == [30]
    assert seen["after_revoke"] is None
    assert seen["ttl_after_revoke"] == -1


def test_etcd3_lock(server: Server) -> None:
    seen = run_etcd3(server, "lock")
    assert seen["acquired"] is True
    assert seen["blocked"] is False and seen["blocked_s"] >= LOCK_BLOCKED_TIMEOUT_S
    assert seen["after_release"] is True
    assert seen["waited_s"] >= LOCK_RELEASE_DELAY_S * MIN_WAIT_FRACTION
    assert seen["holder_has_it"] is False and seen["waiter_has_it"] is True
    assert seen["released"] is True


# --- aetcd ------------------------------------------------------------------------------


def run_async(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(asyncio.wait_for(coroutine, SCENARIO_TIMEOUT_S))


def aetcd_client(server: Server) -> Any:
    return aetcd.Client(host=server.grpc_host, port=server.grpc_port, timeout=CALL_TIMEOUT_S)


def test_aetcd_kv(server: Server) -> None:
    async def scenario() -> None:
        async with aetcd_client(server) as client:
            await client.put(b"aetcd/kv/k1", b"v1")
            await client.put(b"aetcd/kv/p/a", b"1")
            await client.put(b"aetcd/kv/p/b", b"2")
            got = await client.get(b"aetcd/kv/k1")
            assert got.value == b"v1" and got.version == 1
            assert got.create_revision == got.mod_revision < got.header.revision
            listed = await client.get_prefix(b"aetcd/kv/p/")
            assert [(kv.key, kv.value) for kv in listed] == [
                (b"aetcd/kv/p/a", b"1"),
                (b"aetcd/kv/p/b", b"2"),
            ]
            replaced = await client.put(b"aetcd/kv/k1", b"v2", prev_kv=True)
            assert replaced.prev_kv.value == b"v1"
            deleted = await client.delete(b"aetcd/kv/k1", prev_kv=True)
            assert deleted.deleted == 1 and deleted.prev_kv.value == b"v2"
            assert await client.get(b"aetcd/kv/k1") is None
            assert (await client.delete_prefix(b"aetcd/kv/p/")).deleted == 2
            assert not await client.get_prefix(b"aetcd/kv/")

    run_async(scenario())


def test_aetcd_transaction(server: Server) -> None:
    async def scenario() -> None:
        async with aetcd_client(server) as client:
            key = b"aetcd/txn/k"
            await client.put(key, b"a")
            ops = client.transactions

            async def swap() -> tuple[bool, list[Any]]:
                succeeded, responses = await client.transaction(
                    compare=[ops.value(key) == b"a", ops.version(key) > 0],
                    success=[ops.put(key, b"b"), ops.get(key)],
                    failure=[ops.get(key)],
                )
                return succeeded, responses

            succeeded, responses = await swap()
            assert succeeded is True
            assert [value for value, _ in responses[1]] == [b"b"]
            succeeded, responses = await swap()
            assert succeeded is False
            assert [value for value, _ in responses[0]] == [b"b"]

    run_async(scenario())


def test_aetcd_watch(server: Server) -> None:
    async def scenario() -> None:
        async with aetcd_client(server) as client:
            key = b"aetcd/watch/w"
            watch = await client.watch(key, prev_kv=True)

            async def writes() -> None:
                await asyncio.sleep(WRITE_DELAY_S)
                await client.put(key, b"1")
                await client.put(b"aetcd/watch/unwatched", b"x")
                await client.put(key, b"2")
                await client.delete(key)

            writer = asyncio.create_task(writes())
            seen = []
            async for event in watch:
                # aetcd wraps an absent prev_kv as an empty KeyValue.
                previous = (event.prev_kv.key, event.prev_kv.value)
                seen.append((event.kind, event.kv.key, event.kv.value, previous))
                if len(seen) == 3:
                    break
            await watch.cancel()
            await writer
            assert seen == [
                ("PUT", key, b"1", (b"", b"")),
                ("PUT", key, b"2", (key, b"1")),
                ("DELETE", key, b"", (key, b"2")),
            ]

    run_async(scenario())


def test_aetcd_lease(server: Server) -> None:
    async def scenario() -> None:
        async with aetcd_client(server) as client:
            key = b"aetcd/lease/leased"
            lease = await client.lease(30)
            await client.put(key, b"v", lease=lease)
            assert (await client.get(key)).lease == lease.id
            assert await lease.granted_ttl() == 30
            assert 28 <= await lease.remaining_ttl() <= 30
            assert await lease.keys() == [key]
            assert (await lease.refresh()).TTL == 30
            await lease.revoke()
            assert await client.get(key) is None
            assert await lease.remaining_ttl() == -1

    run_async(scenario())


def test_aetcd_lock(server: Server) -> None:
    async def scenario() -> None:
        async with aetcd_client(server) as client:
            holder = client.lock(b"aetcd/lock/L", ttl=LOCK_TTL_S)
            waiter = client.lock(b"aetcd/lock/L", ttl=LOCK_TTL_S)
            assert await holder.acquire(timeout=5) is True
            assert await holder.is_acquired()
            started = time.monotonic()
            assert await waiter.acquire(timeout=LOCK_BLOCKED_TIMEOUT_S) is False
            assert time.monotonic() - started >= LOCK_BLOCKED_TIMEOUT_S * MIN_WAIT_FRACTION

            async def release_later() -> None:
                await asyncio.sleep(LOCK_RELEASE_DELAY_S)
                assert await holder.release() is True

            releaser = asyncio.create_task(release_later())
            started = time.monotonic()
            assert await waiter.acquire(timeout=CALL_TIMEOUT_S) is True
            assert time.monotonic() - started >= LOCK_RELEASE_DELAY_S * MIN_WAIT_FRACTION
            await releaser
            assert await waiter.is_acquired() and not await holder.is_acquired()
            assert await waiter.release() is True

    run_async(scenario())


# --- etcd3gw (the JSON gateway) ---------------------------------------------------------


@pytest.fixture
def gateway(server: Server) -> Iterator[Any]:
    client = etcd3gw.client(
        host=server.gateway_host, port=server.gateway_port, timeout=CALL_TIMEOUT_S
    )
    yield client
    client.session.close()


def test_etcd3gw_kv(server: Server, gateway: Any) -> None:
    assert gateway.api_path == "/v3/"  # discovered from /version
    assert gateway.put("gw/kv/k1", "v1") is True
    gateway.put("gw/kv/p/a", "1")
    gateway.put("gw/kv/p/b", "2")
    assert gateway.get("gw/kv/k1") == [b"v1"]
    ((value, meta),) = gateway.get("gw/kv/k1", metadata=True)
    assert value == b"v1" and meta["key"] == b"gw/kv/k1" and meta["version"] == "1"
    assert [(m["key"], v) for v, m in gateway.get_prefix("gw/kv/p/")] == [
        (b"gw/kv/p/a", b"1"),
        (b"gw/kv/p/b", b"2"),
    ]
    assert gateway.create("gw/kv/k1", "again") is False
    assert gateway.create("gw/kv/new", "fresh") is True
    assert gateway.replace("gw/kv/k1", "v1", "v2") is True
    assert gateway.replace("gw/kv/k1", "v1", "v3") is False
    assert gateway.get("gw/kv/k1") == [b"v2"]
    assert gateway.delete("gw/kv/k1") is True
    assert gateway.delete("gw/kv/k1") is False
    assert gateway.get("gw/kv/k1") == []
    assert gateway.delete_prefix("gw/kv/") is True
    assert gateway.get_prefix("gw/kv/") == []
    assert len(gateway.members()) == server.member_count
    assert "leader" in gateway.status()


def test_etcd3gw_transaction(gateway: Any) -> None:
    gateway.put("gw/txn/k", "a")
    key = etcd3gw.utils._encode("gw/txn/k")
    txn = {
        "compare": [{"key": key, "result": "EQUAL", "target": "VALUE", "value": "YQ=="}],
        "success": [{"request_put": {"key": key, "value": "Yg=="}}],
        "failure": [{"request_range": {"key": key}}],
    }
    first = gateway.transaction(txn)
    assert first["succeeded"] is True and "response_put" in first["responses"][0]
    second = gateway.transaction(txn)
    assert second.get("succeeded", False) is False
    (kv,) = second["responses"][0]["response_range"]["kvs"]
    assert etcd3gw.utils._decode(kv["value"]) == b"b"


def test_etcd3gw_watch(gateway: Any) -> None:
    revision = int(gateway.status()["header"]["revision"])
    # From the next revision: the watch stream may still be opening when the writes land.
    events, cancel = gateway.watch("gw/watch/w", start_revision=revision + 1)
    seen: list[tuple[str, bytes, bytes]] = []

    def read() -> None:
        for event in events:
            kv = event["kv"]
            seen.append((event.get("type", "PUT"), kv["key"], kv.get("value", b"")))
            if len(seen) == 2:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    gateway.put("gw/watch/w", "1")
    gateway.put("gw/watch/unwatched", "x")
    gateway.delete("gw/watch/w")
    reader.join(timeout=EVENT_TIMEOUT_S)
    cancel()
    assert seen == [("PUT", b"gw/watch/w", b"1"), ("DELETE", b"gw/watch/w", b"")]


def test_etcd3gw_lease(gateway: Any) -> None:
    lease = gateway.lease(30)
    assert gateway.put("gw/lease/leased", "v", lease=lease)
    assert 28 <= lease.ttl() <= 30
    assert lease.keys() == [b"gw/lease/leased"]
    assert lease.refresh() == 30
    assert lease.revoke() is True
    assert gateway.get("gw/lease/leased") == []
    assert lease.ttl() == -1


def test_etcd3gw_lock(gateway: Any) -> None:
    holder = gateway.lock("gw-lock", ttl=LOCK_TTL_S)
    other = gateway.lock("gw-lock", ttl=LOCK_TTL_S)
    assert holder.acquire() is True and holder.is_acquired()
    # etcd3gw's lock does not wait: a second acquire fails while the lock is held.
    assert other.acquire() is False and not other.is_acquired()
    assert holder.refresh() == LOCK_TTL_S
    assert holder.release() is True
    assert other.acquire() is True and other.is_acquired()
    assert other.release() is True
    for lock in (holder, other):
        lock.lease.revoke()
