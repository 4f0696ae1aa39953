"""The member's hooks (server/node.py) in-process: the disk histograms fill, and the slow
fdatasync / slow apply warnings carry etcd's message and fields."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from raftkv import limits
from raftkv.server import metrics
from raftkv.server.config import ServerConfig
from raftkv.server.node import Node
from raftkv.storage.mvcc import PutRequest

SLOW_APPLY_S = 0.03


def _config(root: Path, **extra: Any) -> ServerConfig:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return ServerConfig(
        name="m1",
        data_dir=str(root / "m1"),
        listen_peer_urls=(url,),
        initial_advertise_peer_urls=(url,),
        initial_cluster={"m1": (url,)},
        advertise_client_urls=("http://127.0.0.1:1",),
        heartbeat_interval_ms=20,
        election_timeout_ms=200,
        **extra,
    )


async def _wait_leader(node: Node) -> None:
    deadline = time.monotonic() + 10
    while not node.is_leader:
        assert time.monotonic() < deadline, "no leader"
        await asyncio.sleep(0.02)


def _fields(records: list[logging.LogRecord], message: str) -> list[dict[str, Any]]:
    return [dict(record.fields) for record in records if record.getMessage() == message]


async def _run_slow_member(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(_config(root, warning_apply_duration_ms=int(SLOW_APPLY_S * 1000 / 2)))
    fsyncs = metrics.WAL_FSYNC_SECONDS.count()
    commits = metrics.BACKEND_COMMIT_SECONDS.count()
    leader_changes = metrics.LEADER_CHANGES.value()
    slow_applies = metrics.SLOW_APPLY.value()
    await node.start()
    try:
        await _wait_leader(node)
        # Every fsync is "slow" now, and applying a batch takes SLOW_APPLY_S.
        monkeypatch.setattr(limits, "WAL_SLOW_FSYNC_WARN_S", 0.0)
        apply = node.applier.apply

        def slow_apply(*args: Any, **kwargs: Any) -> Any:
            time.sleep(SLOW_APPLY_S)
            return apply(*args, **kwargs)

        monkeypatch.setattr(node.applier, "apply", slow_apply)
        for index in range(3):
            await node.propose(PutRequest(key=b"k%d" % index, value=b"v"))
    finally:
        await node.stop()
    assert metrics.WAL_FSYNC_SECONDS.count() - fsyncs >= 3
    # Backend commits are batched (every BACKEND_BATCH_INTERVAL_MS, and at stop): each one
    # is measured, however many applies it carries.
    assert metrics.BACKEND_COMMIT_SECONDS.count() - commits >= 1
    assert metrics.LEADER_CHANGES.value() - leader_changes == 1
    assert metrics.SLOW_APPLY.value() - slow_applies >= 3


def test_slow_disk_and_apply_are_measured_and_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="raftkv.node"):
        asyncio.run(asyncio.wait_for(_run_slow_member(tmp_path, monkeypatch), 30))

    fsync_warnings = _fields(caplog.records, "slow fdatasync")
    assert fsync_warnings, "no slow fdatasync warning"
    for fields in fsync_warnings:
        assert fields["expected-duration"] == "0µs"  # the threshold patched to 0
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(s|ms|µs)", fields["took"]), fields
    apply_warnings = _fields(caplog.records, "apply request took too long")
    assert len(apply_warnings) >= 3
    for fields in apply_warnings:
        assert fields["expected-duration"] == "15.0ms"
        took = fields["took"]
        assert took.endswith("ms") and float(took[:-2]) >= SLOW_APPLY_S * 1000
        assert fields["first-index"] <= fields["last-index"]
