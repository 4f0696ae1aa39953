"""The recipes behind etcd's Lock and Election services, run on the member itself.

etcd serves ``v3lockpb.Lock`` and ``v3electionpb.Election`` with its client-side
concurrency package (``client/v3/concurrency``: mutex.go, election.go, key.go) over an
in-process client. raftkv runs the same recipes directly on ``NodeAPI``: writes go
through ``propose``, reads are linearizable (``read_barrier`` then the local store) and
waiting uses the member's ``WatchHub``. The keys and the order of operations are etcd's,
so a lock taken here excludes an ``etcdctl lock`` on the same name and vice versa.

A waiter's key is ``name + "/" + lease id in hex``; the waiter whose key has the
smallest create revision under ``name + "/"`` holds the lock (or leads the election).
A waiter waits for the deletion of every key created before its own, one predecessor
at a time (the nearest one first, as etcd's ``waitDeletes``), then confirms that its
own key still exists: if its lease expired while it waited, it does not hold the lock
(the bug Jepsen found in etcd 3.4; fixed in etcd by PR #11408). A waiter that fails or
is canceled while waiting removes its key, so it never becomes the holder unseen.

Errors: etcd returns the errors of these services as plain Go errors through its
in-process client, so they reach gRPC clients with code UNKNOWN and etcd's message
(e.g. "election: no leader", "etcdserver: requested lease not found"); ``abort_unknown``
reproduces that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc

from raftkv import limits
from raftkv.api import authz
from raftkv.api.errors import Context, ServesNode, abort_for, requires_leader
from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.mvccpb import kv_pb2
from raftkv.server.apply import LeaseGrantResponse
from raftkv.server.errors import NoLeaderError
from raftkv.server.interface import NodeAPI
from raftkv.server.requests import LeaseGrantRequest
from raftkv.storage.errors import RequestError
from raftkv.storage.mvcc.txn import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    KeyValue,
    PutRequest,
    RangeRequest,
    RangeResponse,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from raftkv.storage.mvcc.watchable import EventType, WatchBatch, Watcher, WatchSpec

# The TTL of the lease etcd's concurrency.NewSession grants when a request names no
# lease (lease 0): such a lock or candidacy lasts at most this long, as in etcd.
SESSION_TTL_SECONDS = 60


class ConcurrencyError(Exception):
    """A refusal of the Lock or Election service with etcd's message."""

    message = "concurrency error"

    def __init__(self) -> None:
        super().__init__(self.message)


class SessionExpiredError(ConcurrencyError):
    """The waiter's key vanished while it waited (its lease expired or was revoked)."""

    message = "mutex: session is expired"


class ElectionNotLeaderError(ConcurrencyError):
    message = "election: not leader"


class ElectionNoLeaderError(ConcurrencyError):
    message = "election: no leader"


class MissingLeaderKeyError(ConcurrencyError):
    message = '"leader" field must be provided'


async def abort_unknown(context: Context, error: Exception) -> NoReturn:
    """End the RPC as etcd's Lock/Election servers do: code UNKNOWN, etcd's message."""
    assert isinstance(error, RequestError | ConcurrencyError), f"not a refusal: {error!r}"
    await context.abort(grpc.StatusCode.UNKNOWN, str(error))
    raise AssertionError("context.abort returned")  # abort always raises


_S = TypeVar("_S", bound=ServesNode)
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def handler(
    method: Callable[[_S, _Request, Context], Awaitable[_Response]],
) -> Callable[[_S, _Request, Context], Awaitable[_Response]]:
    """The error path of a Lock or Election RPC: etcd's ``hasleader`` check (its
    server-wide interceptor, so UNAVAILABLE "etcdserver: no leader"), the caller's
    credentials (``authz``: a user; the recipe's reads are checked in ``read`` and
    ``WatchWait``, its writes when applied), then every refusal as ``abort_unknown``."""
    policy = authz.policy_of(method.__name__)

    @functools.wraps(method)
    async def serve(self: _S, request: _Request, context: Context) -> _Response:
        if requires_leader(context) and self.node.leader_id == 0:
            await abort_for(context, NoLeaderError())
        try:
            await authz.begin(self.node, context, policy, request, live=True)
            return await method(self, request, context)
        except (RequestError, ConcurrencyError) as error:
            await abort_unknown(context, error)

    return serve


# --- Conversions ------------------------------------------------------------------------


def response_header(node: NodeAPI, revision: int) -> rpc_pb2.ResponseHeader:
    header = node.header(revision)
    return rpc_pb2.ResponseHeader(
        cluster_id=header.cluster_id,
        member_id=header.member_id,
        revision=header.revision,
        raft_term=header.raft_term,
    )


def key_value_message(kv: KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=kv.value,
        lease=kv.lease,
    )


# --- Keys -------------------------------------------------------------------------------


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's GetPrefixRangeEnd: the smallest key above every key starting with
    ``prefix``; b"\\0" (no upper bound) when the prefix is all 0xff bytes."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def waiter_key(prefix: bytes, lease_id: int) -> bytes:
    """``prefix`` + the lease id in lower-case hex, as Go's ``%x`` prints an int64."""
    return prefix + format(lease_id, "x").encode()


def first_created(prefix: bytes) -> RangeRequest:
    """The key under ``prefix`` with the smallest create revision (etcd's WithFirstCreate)."""
    return RangeRequest(
        prefix,
        prefix_range_end(prefix),
        limit=1,
        sort_order=SortOrder.ASCEND,
        sort_target=SortTarget.CREATE,
    )


def last_created_before(prefix: bytes, max_create_revision: int) -> RangeRequest:
    """The key under ``prefix`` created last at or before ``max_create_revision``
    (etcd's WithLastCreate + WithMaxCreateRev)."""
    return RangeRequest(
        prefix,
        prefix_range_end(prefix),
        limit=1,
        sort_order=SortOrder.DESCEND,
        sort_target=SortTarget.CREATE,
        max_create_revision=max_create_revision,
    )


def created_at(key: bytes, create_revision: int) -> Compare:
    return Compare(CompareResult.EQUAL, CompareTarget.CREATE, key, create_revision=create_revision)


# --- Member calls -----------------------------------------------------------------------


async def read(node: NodeAPI, request: RangeRequest) -> RangeResponse:
    """A linearizable range (etcd's default Get), if the caller may read it."""
    await node.read_barrier()
    authz.check_read(node, request.key, request.range_end)
    return node.kv.range(request)


async def txn(node: NodeAPI, request: TxnRequest) -> TxnResponse:
    response = await node.propose(request)
    assert isinstance(response, TxnResponse), f"txn answered with {response!r}"
    return response


async def session_lease(node: NodeAPI, lease_id: int) -> int:
    """The request's lease, or a fresh one of SESSION_TTL_SECONDS when it names none
    (etcd's NewSession, whose keepalive the server orphans at once)."""
    if lease_id != 0:
        return lease_id
    response = await node.propose(LeaseGrantRequest(0, SESSION_TTL_SECONDS))
    assert isinstance(response, LeaseGrantResponse), f"lease grant answered with {response!r}"
    assert response.id != 0
    return response.id


# --- Queueing and waiting ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueSlot:
    """A waiter's place: its key, the key's create revision (its place in line), the
    revision the enqueueing txn read or wrote at, and whether it is first in line."""

    key: bytes
    create_revision: int
    revision: int
    is_first: bool
    created: bool  # False: the key existed (same lease again); ``value`` is its value
    value: bytes


async def enqueue(node: NodeAPI, prefix: bytes, lease_id: int, value: bytes) -> QueueSlot:
    """Create the waiter key of ``lease_id`` under ``prefix`` unless it exists (the
    same lease again is the same waiter), and read who is first in line, in one txn."""
    key = waiter_key(prefix, lease_id)
    owner = first_created(prefix)
    response = await txn(
        node,
        TxnRequest(
            compare=(created_at(key, 0),),
            success=(PutRequest(key, value, lease_id), owner),
            failure=(RangeRequest(key), owner),
        ),
    )
    if response.succeeded:
        create_revision, current_value = response.revision, value
    else:
        mine = _range_result(response.responses[0]).kvs
        assert mine, f"{key!r} failed create_revision == 0 yet is absent"
        create_revision, current_value = mine[0].create_revision, mine[0].value
    first = _range_result(response.responses[1]).kvs
    is_first = not first or first[0].create_revision == create_revision
    return QueueSlot(
        key, create_revision, response.revision, is_first, response.succeeded, current_value
    )


def _range_result(op: object) -> RangeResponse:
    assert isinstance(op, RangeResponse), f"expected a range response, got {op!r}"
    return op


async def wait_for_turn(node: NodeAPI, prefix: bytes, slot: QueueSlot) -> RangeResponse:
    """Wait until no key under ``prefix`` was created before ``slot``'s, then confirm
    the slot's key still exists with its create revision; the confirming read.
    SessionExpiredError if the key is gone (its lease ended while waiting)."""
    while True:
        predecessors = await read(node, last_created_before(prefix, slot.create_revision - 1))
        if not predecessors.kvs:
            break
        await wait_delete(node, predecessors.kvs[0].key, predecessors.revision)
    mine = await read(node, RangeRequest(slot.key))
    if not mine.kvs or mine.kvs[0].create_revision != slot.create_revision:
        raise SessionExpiredError()
    return mine


async def wait_delete(node: NodeAPI, key: bytes, read_revision: int) -> None:
    """Return once ``key``, which existed at ``read_revision``, is deleted after it.
    Also returns if the watch's history is compacted: the caller reads again."""
    with WatchWait(node, WatchSpec(key, start_revision=read_revision + 1, filter_put=True)) as wait:
        while True:
            batch = await wait.next_batch()
            if batch.compact_revision or any(e.type is EventType.DELETE for e in batch.events):
                return


class WatchWait:
    """One watcher of the member's WatchHub, awaited from a coroutine; canceled on exit,
    so a canceled RPC leaves no watcher behind."""

    def __init__(self, node: NodeAPI, spec: WatchSpec) -> None:
        authz.check_read(node, spec.key, spec.range_end)
        self._hub = node.watch_hub
        self._ready = asyncio.Event()
        self._watcher: Watcher = self._hub.watch(spec, self._ready.set)

    def __enter__(self) -> WatchWait:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hub.cancel(self._watcher)

    async def next_batch(self) -> WatchBatch:
        """The next events (whole revisions), or the final compacted batch."""
        while True:
            batch = self._watcher.take(limits.CONCURRENCY_WATCH_BATCH_EVENTS)
            if batch is not None:
                return batch
            # The hub wakes only on the change from nothing to take to something, and
            # nothing runs between the empty take and this clear: no wake is lost.
            self._ready.clear()
            await self._ready.wait()


# --- Cleanup ----------------------------------------------------------------------------

# Cleanups run as their own tasks so that a second cancellation of the RPC's task
# cannot interrupt them; referenced here until done (the loop keeps weak references).
_cleanups: set[asyncio.Task[Any]] = set()


def delete_if_created_at(node: NodeAPI, key: bytes, create_revision: int) -> asyncio.Task[Any]:
    """Remove a waiter's key if it is still the same key (not a later one of the same
    lease), in the background; the task, for callers that want to await it."""
    request = TxnRequest(
        compare=(created_at(key, create_revision),), success=(DeleteRangeRequest(key),)
    )
    return _spawn(_ignore_refusal(node.propose(request)))


async def _ignore_refusal(call: Coroutine[Any, Any, object]) -> None:
    # The waiter is already failing with its own error; a refused cleanup (no leader)
    # leaves the key to its lease, as etcd's best-effort cleanup does.
    with contextlib.suppress(RequestError):
        await call


def _spawn(call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(call)
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    return task


async def drain_cleanups() -> None:
    """Wait for the background cleanups started so far (tests and shutdown)."""
    while _cleanups:
        await asyncio.gather(*list(_cleanups), return_exceptions=True)
