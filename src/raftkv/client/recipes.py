"""Distributed lock and leader election on the KV API (etcd's concurrency package semantics).

Both queue candidates by key creation order under a prefix. Each candidate holds a session
lease (kept alive in the background) and creates `<name>/<lease id in hex>` with it; the
candidate whose key has the smallest create revision holds the lock / leads. A waiting
candidate watches the deletion of its immediate predecessor only (no thundering herd), then
looks again, since the predecessor may have left without the queue's head moving.

After the wait, the candidate checks that its own key still exists with its revision before
it returns: its session may have expired while it waited (the bug Jepsen found in etcd
3.4.3's lock). Even so, a lock cannot guarantee mutual exclusion for work done outside the
store (a holder can pause past its lease); pass the returned revision, a fencing token that
strictly increases across holders, to whatever the lock protects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from raftkv.client.client import Client, KeptLease
from raftkv.client.errors import (
    ClientError,
    ElectionNoLeaderError,
    ElectionNotLeaderError,
    LockNotHeldError,
    SessionExpiredError,
    WatchCompactedError,
)
from raftkv.client.models import (
    Compare,
    EventType,
    KeyLike,
    KeyValue,
    Op,
    RangeResult,
    SortOrder,
    SortTarget,
    to_bytes,
)

DEFAULT_SESSION_TTL_S = 60


@dataclass(frozen=True, slots=True)
class Ownership:
    """What a lock holder or an election leader owns: its key, and the key's create
    revision (the fencing token: it strictly increases from one owner to the next)."""

    key: bytes
    revision: int


async def _join_queue(
    client: Client, prefix: bytes, session: KeptLease, value: bytes
) -> tuple[Ownership, bytes]:
    """Create this session's key under `prefix` (or find it); returns it and its value."""
    key = prefix + f"{session.id:x}".encode()
    result = await client.txn(
        compare=[Compare.create_revision(key) == 0],
        success=[Op.put(key, value, lease=session.id)],
        failure=[Op.get(key)],
    )
    if result.succeeded:
        return Ownership(key, result.header.revision), value
    (existing,) = result.responses
    assert isinstance(existing, RangeResult) and existing.kvs, "the txn saw the key exist"
    return Ownership(key, existing.kvs[0].create_revision), existing.kvs[0].value


async def _wait_for_predecessors(
    client: Client, prefix: bytes, revision: int, session: KeptLease
) -> None:
    """Return once no key under `prefix` was created before `revision`."""
    while True:
        older = await client.get(
            prefix,
            prefix=True,
            max_create_revision=revision - 1,
            sort_target=SortTarget.CREATE,
            sort_order=SortOrder.DESCEND,
            limit=1,
        )
        if not older.kvs:
            return
        await _wait_deleted(client, older.kvs[0].key, older.header.revision + 1, session)


async def _wait_deleted(
    client: Client, key: bytes, start_revision: int, session: KeptLease
) -> None:
    """Wait for `key` to be deleted at or after `start_revision`; SessionExpiredError if
    our own session is lost first."""

    async def deleted() -> None:
        try:
            async with client.watch(key, start_revision=start_revision, no_put=True) as watch:
                async for response in watch:
                    if any(event.type is EventType.DELETE for event in response.events):
                        return
        except WatchCompactedError:
            return  # history moved on: the caller looks at the queue again

    deletion = asyncio.create_task(deleted())
    lost = asyncio.create_task(session.wait_lost())
    try:
        await asyncio.wait((deletion, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (deletion, lost):
            task.cancel()
        await asyncio.gather(deletion, lost, return_exceptions=True)
    failure = None if deletion.cancelled() else deletion.exception()
    if failure is not None:
        raise failure
    if lost.done() and not lost.cancelled():
        raise SessionExpiredError(f"session lease {session.id:x} lost while waiting")


async def _confirm_still_queued(client: Client, ownership: Ownership, session: KeptLease) -> None:
    """The Jepsen fix: after waiting, our key must still be the one we created."""
    current = await client.get(ownership.key)
    if not session.alive or not current.kvs or current.kvs[0].create_revision != ownership.revision:
        raise SessionExpiredError(f"session lease {session.id:x} expired while waiting")


class Lock:
    """A distributed mutex named `name`: `async with Lock(client, "jobs") as held:`.

    The lock holds a session lease of `ttl_s` seconds, renewed in the background; if the
    process dies the lease runs out and the lock is released.
    """

    def __init__(self, client: Client, name: KeyLike, *, ttl_s: int = DEFAULT_SESSION_TTL_S):
        self._client = client
        self._prefix = to_bytes(name) + b"/"
        self._ttl_s = ttl_s
        self._session: KeptLease | None = None
        self._ownership: Ownership | None = None

    async def __aenter__(self) -> Ownership:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.release()

    @property
    def is_held(self) -> bool:
        """True while acquired and the session lease is not known lost."""
        return self._ownership is not None and self._session is not None and self._session.alive

    async def acquire(self) -> Ownership:
        """Wait until this holder owns the lock; returns its key and fencing revision."""
        assert self._session is None, "acquire() twice without release()"
        session = await self._client.lease(self._ttl_s).__aenter__()
        try:
            ownership, _ = await _join_queue(self._client, self._prefix, session, b"")
            await _wait_for_predecessors(self._client, self._prefix, ownership.revision, session)
            await _confirm_still_queued(self._client, ownership, session)
        except BaseException:
            # Leave the queue: revoking the session deletes our key. If even that fails,
            # the lease runs out on its own; the original error is the one to report.
            with suppress(ClientError):
                await asyncio.shield(session.__aexit__(None, None, None))
            raise
        self._session, self._ownership = session, ownership
        return ownership

    async def release(self) -> None:
        """Release the lock (revoking the session deletes the key)."""
        if self._session is None or self._ownership is None:
            raise LockNotHeldError(f"lock {self._prefix!r} is not held")
        session, self._session, self._ownership = self._session, None, None
        await session.__aexit__(None, None, None)


class Election:
    """Leader election named `name`. A candidate `campaign`s with a value and returns once
    it leads; `proclaim` changes the leader's value; `resign` steps down. Anyone can read
    the `leader()` or `observe()` each leader value as it changes."""

    def __init__(self, client: Client, name: KeyLike, *, ttl_s: int = DEFAULT_SESSION_TTL_S):
        self._client = client
        self._prefix = to_bytes(name) + b"/"
        self._ttl_s = ttl_s
        self._session: KeptLease | None = None
        self._ownership: Ownership | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.resign()

    @property
    def is_leader(self) -> bool:
        return self._ownership is not None and self._session is not None and self._session.alive

    async def campaign(self, value: KeyLike) -> Ownership:
        """Wait until this candidate leads; returns its key and revision."""
        if self._session is None:
            self._session = await self._client.lease(self._ttl_s).__aenter__()
        session = self._session
        try:
            ownership, stored = await _join_queue(
                self._client, self._prefix, session, to_bytes(value)
            )
            self._ownership = ownership
            if stored != to_bytes(value):
                await self.proclaim(value)
            await _wait_for_predecessors(self._client, self._prefix, ownership.revision, session)
            await _confirm_still_queued(self._client, ownership, session)
        except BaseException:
            with suppress(ClientError):  # as in Lock.acquire
                await asyncio.shield(self.resign())
            raise
        return ownership

    async def proclaim(self, value: KeyLike) -> None:
        """Set the leader's value, if this candidate still holds its key."""
        ownership, session = self._ownership, self._session
        if ownership is None or session is None:
            raise ElectionNotLeaderError("proclaim() without a campaign")
        result = await self._client.txn(
            compare=[Compare.create_revision(ownership.key) == ownership.revision],
            success=[Op.put(ownership.key, value, lease=session.id)],
        )
        if not result.succeeded:
            self._ownership = None
            raise ElectionNotLeaderError(f"{ownership.key!r} is gone: no longer the leader")

    async def resign(self) -> None:
        """Step down (or leave the queue); revoking the session deletes the key."""
        session, self._session, self._ownership = self._session, None, None
        if session is not None:
            await session.__aexit__(None, None, None)

    async def leader(self) -> KeyValue:
        """The leader's key and value (ElectionNoLeaderError if there is none)."""
        first = await self._first_candidate()
        if not first.kvs:
            raise ElectionNoLeaderError(f"election {self._prefix!r} has no leader")
        return first.kvs[0]

    async def observe(self) -> AsyncGenerator[KeyValue, None]:
        """Yield the leader's key-value now (once there is one) and at every change: a
        new value proclaimed, or a new leader."""
        while True:
            first = await self._first_candidate()
            if first.kvs:
                leader = first.kvs[0]
            else:
                leader = await self._wait_first_put(first.header.revision + 1)
            yield leader
            async for changed in self._follow(leader, first.header.revision + 1):
                yield changed

    async def _first_candidate(self) -> RangeResult:
        return await self._client.get(
            self._prefix,
            prefix=True,
            sort_target=SortTarget.CREATE,
            sort_order=SortOrder.ASCEND,
            limit=1,
        )

    async def _wait_first_put(self, start_revision: int) -> KeyValue:
        """The first key created under the (empty) prefix from `start_revision` on."""
        async with self._client.watch(
            self._prefix, prefix=True, start_revision=start_revision, no_delete=True
        ) as watch:
            async for response in watch:
                if response.events:
                    return response.events[0].kv
        raise ElectionNoLeaderError("the watch ended before a candidate appeared")

    async def _follow(self, leader: KeyValue, start_revision: int) -> AsyncIterator[KeyValue]:
        """Each new value of the leader's key, until the key is deleted."""
        start = max(start_revision, leader.mod_revision + 1)
        async with self._client.watch(leader.key, start_revision=start) as watch:
            async for response in watch:
                for event in response.events:
                    if event.type is EventType.DELETE:
                        return
                    if event.kv.create_revision == leader.create_revision:
                        yield event.kv
