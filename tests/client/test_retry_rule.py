"""The retry rule: which failures are retried for which calls, and the attempt bound.

`Client.call` runs against a real etcd endpoint (so connecting works), with an `invoke`
that fails as scripted instead of sending a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from raftkv.client import Client
from raftkv.client._transport import Connection
from raftkv.client.errors import (
    CompactedError,
    ElectionNoLeaderError,
    ElectionNotLeaderError,
    NoLeaderError,
    NotLeaderError,
    RetryVerdict,
    UnavailableError,
    error_from_status,
    retry_verdict,
)
from raftkv.limits import CLIENT_MAX_ATTEMPTS
from tests.etcd_process import EtcdProcess

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused"
)
BROKEN = "Stream removed (Socket closed)"
COMPACTED = "etcdserver: mvcc: required revision has been compacted"


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def failing(
    failures: list[tuple[grpc.StatusCode, str]], attempts: list[int]
) -> Callable[[Connection, float | None], Awaitable[str]]:
    """An invoke that raises the scripted failures in turn, then answers "ok"."""

    async def invoke(connection: Connection, timeout_s: float | None) -> str:
        attempts.append(connection.index)  # which entry of the endpoint list
        if len(attempts) <= len(failures):
            raise rpc_error(*failures[len(attempts) - 1])
        return "ok"

    return invoke


def test_verdicts_and_error_classes() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert retry_verdict(unavailable, REFUSED) is RetryVerdict.NOT_APPLIED
    assert retry_verdict(unavailable, "etcdserver: no leader") is RetryVerdict.NOT_APPLIED
    assert retry_verdict(unavailable, BROKEN) is RetryVerdict.AMBIGUOUS
    assert retry_verdict(unavailable, "etcdserver: request timed out") is RetryVerdict.AMBIGUOUS
    assert retry_verdict(grpc.StatusCode.DEADLINE_EXCEEDED, "") is RetryVerdict.AMBIGUOUS
    assert retry_verdict(grpc.StatusCode.OUT_OF_RANGE, COMPACTED) is RetryVerdict.FINAL
    assert isinstance(error_from_status(unavailable, "etcdserver: no leader"), NoLeaderError)
    # The election service's messages contain "no leader" / "not leader" too.
    unknown = grpc.StatusCode.UNKNOWN
    assert isinstance(error_from_status(unknown, "election: no leader"), ElectionNoLeaderError)
    assert isinstance(error_from_status(unknown, "election: not leader"), ElectionNotLeaderError)
    assert isinstance(
        error_from_status(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader"),
        NotLeaderError,
    )
    assert type(error_from_status(unavailable, BROKEN)) is UnavailableError


async def test_ambiguous_failure_retries_reads_but_not_writes(etcd: EtcdProcess) -> None:
    async with Client([etcd.endpoint]) as client:
        attempts: list[int] = []
        invoke = failing([(grpc.StatusCode.UNAVAILABLE, BROKEN)], attempts)
        assert await client.call(invoke, repeatable=True, timeout_s=1.0) == "ok"
        assert len(attempts) == 2
        attempts.clear()
        with pytest.raises(UnavailableError):
            await client.call(invoke, repeatable=False, timeout_s=1.0)
        assert len(attempts) == 1


async def test_not_applied_failure_retries_writes_too(etcd: EtcdProcess) -> None:
    async with Client([etcd.endpoint]) as client:
        attempts: list[int] = []
        refused = failing([(grpc.StatusCode.UNAVAILABLE, REFUSED)] * 2, attempts)
        assert await client.call(refused, repeatable=False, timeout_s=1.0) == "ok"
        assert len(attempts) == 3


async def test_final_errors_are_never_retried(etcd: EtcdProcess) -> None:
    async with Client([etcd.endpoint]) as client:
        attempts: list[int] = []
        compacted = failing([(grpc.StatusCode.OUT_OF_RANGE, COMPACTED)], attempts)
        with pytest.raises(CompactedError):
            await client.call(compacted, repeatable=True, timeout_s=1.0)
        assert len(attempts) == 1


async def test_retries_rotate_endpoints_and_stop_at_the_bound(etcd: EtcdProcess) -> None:
    # Two entries for one member: each failure moves the client to the other entry.
    async with Client([etcd.endpoint, f"http://{etcd.endpoint}"]) as client:
        attempts: list[int] = []
        always = failing([(grpc.StatusCode.UNAVAILABLE, BROKEN)] * 100, attempts)
        with pytest.raises(UnavailableError):
            await client.call(always, repeatable=True, timeout_s=1.0)
        assert len(attempts) == CLIENT_MAX_ATTEMPTS
        assert attempts == [0, 1] * (CLIENT_MAX_ATTEMPTS // 2) + [0] * (CLIENT_MAX_ATTEMPTS % 2)
