"""asyncio client for etcd's v3 gRPC API, which raftkv serves too.

One `Client` keeps one gRPC channel, to the current endpoint. When a call fails in a way
that says the endpoint (or its member) cannot serve it, the client moves to the next
endpoint and, if the call is safe to repeat, tries again there (see `errors.RetryVerdict`):

- reads (Range, a txn whose ops all read), lease keepalive / time-to-live / list, member
  list, status, alarm list and disarm, the lock service's Lock/Unlock and the election
  service's Campaign/Resign (both keyed by the caller's lease, so a repeat is a no-op) are
  retried after any availability error;
- writes (put, delete, a txn that writes, compact, lease grant / revoke, member changes,
  proclaim, move-leader) are retried only when the error proves the request was never
  applied: the connection was refused before sending, or the member answered "no leader" /
  "too many requests" before proposing it. After any other failure the write's fate is
  unknown and the error is raised (a `ClientError`; usually `UnavailableError` or
  `RequestTimeoutError`).

A call makes at most `CLIENT_MAX_ATTEMPTS` attempts, each bounded by `timeout_s`, with
exponential backoff between them. Every request carries the `hasleader` metadata, so a
member cut off from its leader answers "no leader" at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import suppress
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import grpc

from raftkv.api.etcdpb.etcdserverpb import rpc_pb2
from raftkv.api.etcdpb.v3electionpb import v3election_pb2
from raftkv.api.etcdpb.v3lockpb import v3lock_pb2
from raftkv.client import _convert
from raftkv.client._transport import (
    REQUIRE_LEADER_METADATA,
    ClientTLS,
    Connection,
    backoff_s,
    normalize_endpoint,
    open_connection,
    task_is_cancelling,
    uses_tls,
    wait_until_ready,
)
from raftkv.client.errors import (
    ClientError,
    ConnectError,
    LeaseNotFoundError,
    NoLeaderError,
    RetryVerdict,
    UnavailableError,
    error_from_rpc,
    error_from_status,
    retry_verdict,
)
from raftkv.client.models import (
    Alarm,
    Compare,
    DeleteResult,
    GetOp,
    KeyLike,
    KeyValue,
    LeaderKey,
    Lease,
    LeaseTimeToLive,
    Member,
    MemberAddResult,
    Op,
    PutResult,
    RangeResult,
    RequestOp,
    ResponseHeader,
    SortOrder,
    SortTarget,
    Status,
    TxnResult,
    is_read_only,
    resolve_range,
    to_bytes,
)
from raftkv.client.watch import Watch
from raftkv.limits import (
    CLIENT_LEASE_RENEW_MIN_INTERVAL_S,
    CLIENT_LEASE_RENEWALS_PER_TTL,
    CLIENT_MAX_ATTEMPTS,
)

R = TypeVar("R")


class Client:
    """An etcd v3 client with endpoint fail-over. Use as `async with Client([...]) as c:`.

    `timeout_s` bounds each attempt of a call (a call may make several attempts);
    `connect_timeout_s` bounds connecting to one endpoint. With `tls` (or `https://`
    endpoints, which then trust the system's CAs) every channel is TLS.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        tls: ClientTLS | None = None,
    ) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise ValueError("endpoints must be a non-empty sequence of host:port strings")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if tls is None and any(uses_tls(endpoint) for endpoint in endpoints):
            tls = ClientTLS()
        self.tls = tls
        self._credentials = None if tls is None else tls.channel_credentials()
        self.endpoints = tuple(normalize_endpoint(endpoint) for endpoint in endpoints)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._next_index = 0
        self._connection: Connection | None = None
        self._connect_lock = asyncio.Lock()
        # Channels left after a fail-over, closing once their in-flight calls had time to end.
        self._retiring: dict[Connection, asyncio.Task[None]] = {}
        self._closed = False

    # --- Lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the first endpoint that accepts; UnavailableError if none does."""
        last_error: ClientError | None = None
        for _ in self.endpoints:
            try:
                await self.ready_connection()
                return
            except ConnectError as error:
                last_error = error
        assert last_error is not None
        raise UnavailableError(f"no endpoint of {list(self.endpoints)} accepts: {last_error}")

    async def close(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.channel.close(None)
        for retired, task in list(self._retiring.items()):
            task.cancel()
            await retired.channel.close(None)
        self._retiring.clear()

    @property
    def endpoint(self) -> str | None:
        """The endpoint the client currently talks to (None before connecting)."""
        return None if self._connection is None else self._connection.endpoint

    async def ready_connection(self) -> Connection:
        """The current connection, connecting to the next endpoint if there is none."""
        if self._closed:
            raise ClientError("the client is closed")
        if self._connection is not None:
            return self._connection
        async with self._connect_lock:
            if self._connection is not None:
                return self._connection
            index = self._next_index
            connection = open_connection(index, self.endpoints[index], self._credentials)
            try:
                ready = await asyncio.wait_for(
                    wait_until_ready(connection.channel), self.connect_timeout_s
                )
            except TimeoutError:
                ready = False
            if not ready:
                self._next_index = (index + 1) % len(self.endpoints)
                await connection.channel.close(None)
                raise ConnectError(f"cannot connect to {connection.endpoint}")
            self._connection = connection
            return connection

    def fail_over(self, failed: Connection) -> None:
        """Leave `failed` for the next endpoint (unless another call already did)."""
        if self._connection is not failed:
            return
        self._connection = None
        self._next_index = (failed.index + 1) % len(self.endpoints)
        self._retiring[failed] = asyncio.create_task(self._retire(failed))

    async def _retire(self, connection: Connection) -> None:
        try:
            await connection.channel.close(grace=self.timeout_s)
        finally:
            self._retiring.pop(connection, None)

    async def call(
        self,
        invoke: Callable[[Connection, float | None], Awaitable[R]],
        *,
        repeatable: bool,
        timeout_s: float | None,
    ) -> R:
        """Run `invoke(connection, timeout_s)` with fail-over and the retry rule."""
        last_error: ClientError | None = None
        for attempt in range(CLIENT_MAX_ATTEMPTS):
            if attempt:
                await asyncio.sleep(backoff_s(attempt))
            try:
                connection = await self.ready_connection()
            except ConnectError as error:
                last_error = error
                continue
            try:
                return await invoke(connection, timeout_s)
            except asyncio.CancelledError:
                if task_is_cancelling() or self._closed:
                    raise
                code, details = grpc.StatusCode.CANCELLED, "channel closed under the call"
            except grpc.aio.AioRpcError as rpc_error:
                code, details = rpc_error.code(), rpc_error.details() or ""
            failure = error_from_status(code, details)
            verdict = retry_verdict(code, details)
            if verdict is RetryVerdict.FINAL or (
                verdict is RetryVerdict.AMBIGUOUS and not repeatable
            ):
                raise failure
            self.fail_over(connection)
            last_error = failure
        assert last_error is not None
        raise last_error

    async def _call_endpoint(
        self,
        endpoint: str,
        invoke: Callable[[Connection, float | None], Awaitable[R]],
        timeout_s: float | None,
    ) -> R:
        """One call to one named endpoint, on a channel of its own, without fail-over."""
        connection = open_connection(-1, normalize_endpoint(endpoint), self._credentials)
        try:
            return await invoke(connection, timeout_s)
        except grpc.aio.AioRpcError as rpc_error:
            raise error_from_rpc(rpc_error) from rpc_error
        finally:
            await connection.channel.close(None)

    # --- KV ----------------------------------------------------------------------

    async def get(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike | None = None,
        prefix: bool = False,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> RangeResult:
        """Read one key, a range [key, range_end), or every key with a prefix.

        `revision` > 0 reads the store as of that revision (CompactedError if compacted);
        `serializable` reads the member's local copy, which may be stale.
        """
        return await self.range(
            Op.get(
                key,
                range_end=range_end,
                prefix=prefix,
                revision=revision,
                limit=limit,
                serializable=serializable,
                keys_only=keys_only,
                count_only=count_only,
                sort_order=sort_order,
                sort_target=sort_target,
                min_mod_revision=min_mod_revision,
                max_mod_revision=max_mod_revision,
                min_create_revision=min_create_revision,
                max_create_revision=max_create_revision,
            )
        )

    async def get_prefix(
        self,
        prefix: KeyLike,
        *,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        serializable: bool = False,
        sort_order: SortOrder = SortOrder.NONE,
        sort_target: SortTarget = SortTarget.KEY,
    ) -> RangeResult:
        return await self.range(
            Op.get(
                prefix,
                prefix=True,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                serializable=serializable,
                sort_order=sort_order,
                sort_target=sort_target,
            )
        )

    async def range(self, op: GetOp) -> RangeResult:
        request = _convert.range_request(op)
        response = await self.call(
            lambda connection, timeout_s: connection.kv.Range(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,
            timeout_s=self.timeout_s,
        )
        return _convert.range_result(response)

    async def put(
        self,
        key: KeyLike,
        value: KeyLike,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        ignore_value: bool = False,
        ignore_lease: bool = False,
    ) -> PutResult:
        request = _convert.put_request(
            Op.put(
                key,
                value,
                lease=lease,
                prev_kv=prev_kv,
                ignore_value=ignore_value,
                ignore_lease=ignore_lease,
            )
        )
        response = await self.call(
            lambda connection, timeout_s: connection.kv.Put(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return _convert.put_result(response)

    async def delete(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike | None = None,
        prefix: bool = False,
        prev_kv: bool = False,
    ) -> DeleteResult:
        request = _convert.delete_request(
            Op.delete(key, range_end=range_end, prefix=prefix, prev_kv=prev_kv)
        )
        response = await self.call(
            lambda connection, timeout_s: connection.kv.DeleteRange(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return _convert.delete_result(response)

    async def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[RequestOp] = (),
        failure: Sequence[RequestOp] = (),
    ) -> TxnResult:
        """If every comparison holds, run `success`, else `failure`; atomically, at one
        revision. Build conditions with `Compare` and ops with `Op`."""
        op = Op.txn(compare, success, failure)
        request = _convert.txn_request(op)
        response = await self.call(
            lambda connection, timeout_s: connection.kv.Txn(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=is_read_only(op),
            timeout_s=self.timeout_s,
        )
        return _convert.txn_result(response)

    async def compact(self, revision: int, *, physical: bool = False) -> ResponseHeader:
        """Drop history before `revision`; `physical` waits until it is gone from disk."""
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        response = await self.call(
            lambda connection, timeout_s: connection.kv.Compact(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return _convert.header(response.header)

    # --- Watch -------------------------------------------------------------------

    def watch(
        self,
        key: KeyLike,
        *,
        range_end: KeyLike | None = None,
        prefix: bool = False,
        start_revision: int = 0,
        prev_kv: bool = False,
        no_put: bool = False,
        no_delete: bool = False,
        progress_notify: bool = False,
    ) -> Watch:
        """Watch a key, a range or a prefix, from `start_revision` (0: from now).

        `w = await client.watch(...)` or `async with client.watch(...) as w:` starts it;
        `async for response in w` delivers `WatchResponse`s; `await w.cancel()` ends it.
        The watch survives endpoint failures without losing or repeating events.
        """
        key_bytes, end = resolve_range(key, range_end, prefix)
        filters: list[rpc_pb2.WatchCreateRequest.FilterType] = []
        if no_put:
            filters.append(rpc_pb2.WatchCreateRequest.NOPUT)
        if no_delete:
            filters.append(rpc_pb2.WatchCreateRequest.NODELETE)
        create = rpc_pb2.WatchCreateRequest(
            key=key_bytes,
            range_end=end,
            start_revision=start_revision,
            progress_notify=progress_notify,
            filters=filters,
            prev_kv=prev_kv,
        )
        return Watch(self, create)

    # --- Leases ------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int, *, lease_id: int = 0) -> Lease:
        """Grant a lease of `ttl_s` seconds (the server may raise it to its minimum);
        `lease_id` 0 lets the server choose the id."""
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl_s, ID=lease_id)
        response = await self.call(
            lambda connection, timeout_s: connection.lease.LeaseGrant(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        if response.error:
            raise ClientError(response.error)
        return Lease(id=response.ID, ttl=response.TTL)

    async def lease_revoke(self, lease_id: int) -> ResponseHeader:
        """Revoke a lease and delete every key attached to it."""
        request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        response = await self.call(
            lambda connection, timeout_s: connection.lease.LeaseRevoke(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return _convert.header(response.header)

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False) -> LeaseTimeToLive:
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        response = await self.call(
            lambda connection, timeout_s: connection.lease.LeaseTimeToLive(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,
            timeout_s=self.timeout_s,
        )
        return LeaseTimeToLive(
            id=response.ID,
            ttl=response.TTL,
            granted_ttl=response.grantedTTL,
            keys=tuple(response.keys),
        )

    async def leases(self) -> tuple[int, ...]:
        """Ids of every live lease."""
        response = await self.call(
            lambda connection, timeout_s: connection.lease.LeaseLeases(
                rpc_pb2.LeaseLeasesRequest(), timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,
            timeout_s=self.timeout_s,
        )
        return tuple(status.ID for status in response.leases)

    async def keepalive_once(self, lease_id: int) -> int:
        """Renew a lease once; returns its new TTL in seconds (LeaseNotFoundError if gone)."""

        async def renew(connection: Connection, timeout_s: float | None) -> int:
            stream = connection.lease.LeaseKeepAlive(
                None, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            )
            try:
                await stream.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                response = await stream.read()
            finally:
                stream.cancel()
            if not isinstance(response, rpc_pb2.LeaseKeepAliveResponse):  # end of stream
                raise UnavailableError(f"{connection.endpoint} closed the keepalive stream")
            return response.TTL

        ttl = await self.call(renew, repeatable=True, timeout_s=self.timeout_s)
        if ttl <= 0:
            raise LeaseNotFoundError(f"lease {lease_id:x} not found", grpc.StatusCode.NOT_FOUND)
        return ttl

    def lease(self, ttl_s: int) -> KeptLease:
        """`async with client.lease(ttl_s) as lease:` grants a lease, renews it in the
        background every ttl/3, and revokes it on exit."""
        return KeptLease(self, ttl_s)

    # --- Cluster -----------------------------------------------------------------

    async def member_list(self, *, linearizable: bool = False) -> tuple[Member, ...]:
        request = rpc_pb2.MemberListRequest(linearizable=linearizable)
        response = await self.call(
            lambda connection, timeout_s: connection.cluster.MemberList(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,
            timeout_s=self.timeout_s,
        )
        return tuple(_convert.member(member) for member in response.members)

    async def member_add(
        self, peer_urls: Sequence[str], *, is_learner: bool = False
    ) -> MemberAddResult:
        request = rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=is_learner)
        response = await self.call(
            lambda connection, timeout_s: connection.cluster.MemberAdd(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return MemberAddResult(
            header=_convert.header(response.header),
            member=_convert.member(response.member),
            members=tuple(_convert.member(member) for member in response.members),
        )

    async def member_remove(self, member_id: int) -> tuple[Member, ...]:
        request = rpc_pb2.MemberRemoveRequest(ID=member_id)
        response = await self.call(
            lambda connection, timeout_s: connection.cluster.MemberRemove(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return tuple(_convert.member(member) for member in response.members)

    async def member_promote(self, member_id: int) -> tuple[Member, ...]:
        request = rpc_pb2.MemberPromoteRequest(ID=member_id)
        response = await self.call(
            lambda connection, timeout_s: connection.cluster.MemberPromote(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return tuple(_convert.member(member) for member in response.members)

    # --- Maintenance -------------------------------------------------------------

    async def status(self, endpoint: str | None = None) -> Status:
        """Status of the member at `endpoint`, or of the current endpoint's member."""

        async def invoke(connection: Connection, timeout_s: float | None) -> Status:
            response = await connection.maintenance.Status(
                rpc_pb2.StatusRequest(), timeout=timeout_s
            )
            return _convert.status(response)

        if endpoint is None:
            return await self.call(invoke, repeatable=True, timeout_s=self.timeout_s)
        return await self._call_endpoint(endpoint, invoke, self.timeout_s)

    async def leader_endpoint(self) -> str:
        """The endpoint whose member is the Raft leader (NoLeaderError if none says so)."""
        for endpoint in self.endpoints:
            try:
                if (await self.status(endpoint)).is_leader:
                    return endpoint
            except ClientError:
                continue  # that member is down or unreachable; ask the others
        raise NoLeaderError(f"no endpoint of {list(self.endpoints)} is the leader")

    async def move_leader(self, target_id: int) -> ResponseHeader:
        """Hand leadership to member `target_id` (the request must reach the leader)."""
        leader = await self.leader_endpoint()
        request = rpc_pb2.MoveLeaderRequest(targetID=target_id)
        response = await self._call_endpoint(
            leader,
            lambda connection, timeout_s: connection.maintenance.MoveLeader(
                request, timeout=timeout_s
            ),
            self.timeout_s,
        )
        return _convert.header(response.header)

    async def defragment(self, endpoint: str, *, timeout_s: float | None = None) -> ResponseHeader:
        """Defragment the backend of the member at `endpoint` (it stalls while it runs);
        `timeout_s` None waits as long as it takes."""
        response = await self._call_endpoint(
            endpoint,
            lambda connection, deadline_s: connection.maintenance.Defragment(
                rpc_pb2.DefragmentRequest(), timeout=deadline_s
            ),
            timeout_s,
        )
        return _convert.header(response.header)

    async def alarm_list(self) -> tuple[Alarm, ...]:
        request = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET)
        response = await self.call(
            lambda connection, timeout_s: connection.maintenance.Alarm(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,
            timeout_s=self.timeout_s,
        )
        return tuple(_convert.alarm(alarm) for alarm in response.alarms)

    async def alarm_disarm(self, alarm: Alarm | None = None) -> tuple[Alarm, ...]:
        """Deactivate `alarm`, or every active alarm; returns the alarms deactivated."""
        targets = (alarm,) if alarm is not None else await self.alarm_list()
        disarmed: list[Alarm] = []
        for target in targets:
            request = rpc_pb2.AlarmRequest(
                action=rpc_pb2.AlarmRequest.DEACTIVATE,
                memberID=target.member_id,
                alarm=target.alarm.name,
            )
            response = await self.call(
                partial(_deactivate_alarm, request),
                repeatable=True,  # deactivating twice is the same as once
                timeout_s=self.timeout_s,
            )
            disarmed.extend(_convert.alarm(item) for item in response.alarms)
        return tuple(disarmed)

    async def snapshot(self, path: str | Path, *, timeout_s: float | None = None) -> int:
        """Stream the current endpoint's backend snapshot to `path` (written atomically);
        returns its size in bytes. `timeout_s` None waits as long as it takes."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")

        async def download(connection: Connection, deadline_s: float | None) -> int:
            stream = connection.maintenance.Snapshot(rpc_pb2.SnapshotRequest(), timeout=deadline_s)
            size = 0
            with partial.open("wb") as file:
                async for chunk in stream:
                    file.write(chunk.blob)
                    size += len(chunk.blob)
                file.flush()
                os.fsync(file.fileno())
            return size

        try:
            size = await self.call(download, repeatable=True, timeout_s=timeout_s)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return size

    # --- Server-side Lock and Election services -----------------------------------

    async def lock(self, name: KeyLike, lease_id: int, *, timeout_s: float | None = None) -> bytes:
        """The Lock service: wait until `name` is held under `lease_id`; returns the lock
        key (pass it to `unlock`). `timeout_s` None waits as long as it takes."""
        request = v3lock_pb2.LockRequest(name=to_bytes(name), lease=lease_id)
        response = await self.call(
            lambda connection, deadline_s: connection.lock.Lock(
                request, timeout=deadline_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,  # the key is named after the lease, so a repeat is a no-op
            timeout_s=timeout_s,
        )
        return response.key

    async def unlock(self, key: KeyLike) -> ResponseHeader:
        request = v3lock_pb2.UnlockRequest(key=to_bytes(key))
        response = await self.call(
            lambda connection, timeout_s: connection.lock.Unlock(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,  # deleting the key twice is the same as once
            timeout_s=self.timeout_s,
        )
        return _convert.header(response.header)

    async def election_campaign(
        self, name: KeyLike, value: KeyLike, lease_id: int, *, timeout_s: float | None = None
    ) -> LeaderKey:
        """The Election service: wait until this lease's candidate leads `name`."""
        request = v3election_pb2.CampaignRequest(
            name=to_bytes(name), lease=lease_id, value=to_bytes(value)
        )
        response = await self.call(
            lambda connection, deadline_s: connection.election.Campaign(
                request, timeout=deadline_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,  # the key is named after the lease, so a repeat is a no-op
            timeout_s=timeout_s,
        )
        return _convert.leader_key(response.leader)

    async def election_proclaim(self, leader: LeaderKey, value: KeyLike) -> ResponseHeader:
        request = v3election_pb2.ProclaimRequest(
            leader=_convert.leader_key_message(leader), value=to_bytes(value)
        )
        response = await self.call(
            lambda connection, timeout_s: connection.election.Proclaim(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=False,
            timeout_s=self.timeout_s,
        )
        return _convert.header(response.header)

    async def election_leader(self, name: KeyLike) -> KeyValue:
        """The current leader's key and value (ElectionNoLeaderError if none)."""
        request = v3election_pb2.LeaderRequest(name=to_bytes(name))
        response = await self.call(
            lambda connection, timeout_s: connection.election.Leader(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,
            timeout_s=self.timeout_s,
        )
        return _convert.key_value(response.kv)

    async def election_observe(self, name: KeyLike) -> AsyncGenerator[KeyValue, None]:
        """Each leader value of `name` as it changes (from the current endpoint; a stream
        failure ends the iteration with the error)."""
        connection = await self.ready_connection()
        stream = connection.election.Observe(
            v3election_pb2.LeaderRequest(name=to_bytes(name)), metadata=REQUIRE_LEADER_METADATA
        )
        try:
            async for response in stream:
                yield _convert.key_value(response.kv)
        except grpc.aio.AioRpcError as rpc_error:
            raise error_from_rpc(rpc_error) from rpc_error
        finally:
            stream.cancel()

    async def election_resign(self, leader: LeaderKey) -> ResponseHeader:
        request = v3election_pb2.ResignRequest(leader=_convert.leader_key_message(leader))
        response = await self.call(
            lambda connection, timeout_s: connection.election.Resign(
                request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
            ),
            repeatable=True,  # resigning twice is the same as once
            timeout_s=self.timeout_s,
        )
        return _convert.header(response.header)


def _deactivate_alarm(
    request: rpc_pb2.AlarmRequest, connection: Connection, timeout_s: float | None
) -> Awaitable[rpc_pb2.AlarmResponse]:
    return connection.maintenance.Alarm(
        request, timeout=timeout_s, metadata=REQUIRE_LEADER_METADATA
    )


class KeptLease:
    """A lease renewed by a background task while its `async with` block runs.

    `alive` is False once the lease is known lost: the server said it is gone, or no
    renewal succeeded before the TTL of the last one ran out. It is revoked on exit.
    """

    def __init__(self, client: Client, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self.id = 0
        self.ttl = 0  # seconds, as granted
        self._expires_at = 0.0  # loop time by which the lease has surely expired if not renewed
        self._lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        lease = await self._client.lease_grant(self._ttl_s)
        self.id, self.ttl = lease.id, lease.ttl
        self._expires_at = asyncio.get_running_loop().time() + lease.ttl
        self._renewer = asyncio.create_task(self._renew_until_lost())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._renewer is not None
        self._renewer.cancel()
        await asyncio.gather(self._renewer, return_exceptions=True)
        if self._lost.is_set():
            return
        with suppress(LeaseNotFoundError):  # it expired between the last renewal and now
            await self._client.lease_revoke(self.id)

    @property
    def alive(self) -> bool:
        return not self._lost.is_set() and asyncio.get_running_loop().time() < self._expires_at

    async def wait_lost(self) -> None:
        """Return once the lease is known lost."""
        await self._lost.wait()

    async def _renew_until_lost(self) -> None:
        loop = asyncio.get_running_loop()
        ttl = self.ttl
        while True:
            interval_s = max(ttl / CLIENT_LEASE_RENEWALS_PER_TTL, CLIENT_LEASE_RENEW_MIN_INTERVAL_S)
            await asyncio.sleep(interval_s)
            sent_at = loop.time()
            left_s = self._expires_at - sent_at
            try:
                # A renewal still retrying when the lease runs out is too late anyway.
                ttl = await asyncio.wait_for(self._client.keepalive_once(self.id), max(left_s, 0))
            except (LeaseNotFoundError, TimeoutError):
                self._lost.set()
                return
            except ClientError:
                ttl = 0  # retry soon: the cluster may come back before the lease runs out
                continue
            self._expires_at = sent_at + ttl
