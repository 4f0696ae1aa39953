"""``LocalNode``: a TEST DOUBLE of the layer below the API (``NodeAPI``), without Raft.

It exists to test ``raftkv.api`` alone: one member that is always its own leader, with
the real state machine (Backend, KVStore, Lessor, AlarmStore, Applier, WatchHub).
``propose`` encodes the request with the replicated-request codec, decodes it again and
applies it at once through the Applier as the next log entry, raising the request's
``RequestError`` like the real node. ``read_barrier`` has nothing to wait for. The
lessor is primary from the start; a background task ticks it (expired leases are
revoked through ``propose``) and lets the WatchHub's unsynced watchers catch up.

It is not the real node (``raftkv.server.node.Node``): no WAL, no peers, no membership
changes (they raise UNIMPLEMENTED), no request timeouts. Multi-member behaviour is
tested elsewhere, on real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

from raftkv import limits
from raftkv.api.errors import NotSupportedError
from raftkv.raft import Entry, EntryType
from raftkv.raft.messages import Index, Term
from raftkv.server.apply import Applier, Response
from raftkv.server.auth.context import request_auth
from raftkv.server.errors import BadLeaderTransfereeError, NotLeaderError
from raftkv.server.interface import ETCD_API_VERSION, Header, Member, NodeStatus
from raftkv.server.requests import (
    AlarmAction,
    AlarmRequest,
    AuthorizedRequest,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    Request,
    decode,
    encode,
)
from raftkv.storage.alarm import AlarmStore, AlarmType
from raftkv.storage.backend import Backend
from raftkv.storage.errors import LeaseNotFoundError, NoSpaceError, RequestError
from raftkv.storage.etcdsnap import backend_snapshot_chunks
from raftkv.storage.lease import Lessor
from raftkv.storage.lease.lessor import TimeToLive
from raftkv.storage.mvcc import KVStore, PutRequest, TxnRequest
from raftkv.storage.mvcc.watchable import WatchHub

MAP_SIZE_BYTES = 256 * limits.MIB
TICKS_PER_SECOND = 10
ELECTION_TICKS = 10
MEMBERSHIP_NOT_SUPPORTED = "raftkv: LocalNode (a test double) has no membership changes"


class LocalNode:
    """A single-member ``NodeAPI`` on an asyncio loop; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        cluster_id: int = 0x1C1D,
        member_id: int = 0x3E3F,
        quota_bytes: int = limits.BACKEND_QUOTA_BYTES_DEFAULT,
        seed: int = 1,
    ) -> None:
        self.directory = directory
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.name = "local"
        self.peer_urls: tuple[str, ...] = ("http://127.0.0.1:1",)
        self.client_urls: tuple[str, ...] = ()
        self.leader_id = member_id  # tests set 0 to play a leaderless member
        self.is_learner = False  # tests set True to play a learner
        self.backend = Backend(str(directory / "backend"), MAP_SIZE_BYTES, sync=False)
        self.lessor = Lessor(TICKS_PER_SECOND, ELECTION_TICKS)
        lessor = self.lessor
        self.kv = KVStore(
            self.backend,
            lease_checker=lambda lease_id: lessor.lookup(lease_id) is not None,
            quota_bytes=quota_bytes,
            leases=lessor,
        )
        self.alarms = AlarmStore(self.backend)
        self.applier = Applier(self.backend, self.kv, self.lessor, self.alarms, member_id)
        self.auth = self.applier.auth
        self.client_cert_auth = False  # tests set True to play --client-cert-auth
        self.watch_hub = WatchHub(self.kv)
        self._rng = random.Random(seed)
        self._term = 1
        self._index = self.backend.consistent_index().index
        self._request_id = 0
        self._loop_start_s = 0.0
        self._ticker: asyncio.Task[None] | None = None

    # --- Lifecycle (on the event loop) ---------------------------------------------

    async def start(self) -> None:
        self._loop_start_s = asyncio.get_running_loop().time()
        self.lessor.promote(self._now_tick())
        self._ticker = asyncio.create_task(self._tick_loop())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self.lessor.demote()
        self.backend.close()

    # --- NodeAPI --------------------------------------------------------------------

    @property
    def raft_term(self) -> int:
        return self._term

    def header(self, revision: int | None = None) -> Header:
        current = self.kv.current_revision if revision is None else revision
        return Header(self.cluster_id, self.member_id, current, self._term)

    async def propose(self, request: Request) -> Response:
        if isinstance(request, PutRequest | TxnRequest):
            try:
                self.kv.check_quota(request)
            except NoSpaceError:
                if not self.alarms.is_active(AlarmType.NOSPACE):
                    self._apply(
                        AlarmRequest(AlarmAction.ACTIVATE, self.member_id, AlarmType.NOSPACE)
                    )
                raise
        if isinstance(request, LeaseGrantRequest) and request.id == 0:
            request = LeaseGrantRequest(self.lessor.next_lease_id(self._rng), request.ttl_seconds)
        # As the real node: a client's request carries its credentials to the apply step.
        credentials = request_auth.get()
        assert not isinstance(request, AuthorizedRequest)
        revision = credentials.revision_now(self.auth.revision)
        result = self._apply(AuthorizedRequest(credentials.username, revision, request))
        if isinstance(result, RequestError):
            raise result
        return result

    async def read_barrier(self) -> None:
        return None  # one member applies everything it commits at once

    async def lease_keepalive(self, lease_id: int) -> int:
        renewal = self.lessor.renew(lease_id, self._now_tick())
        if renewal.clear_checkpoint:
            self._apply(LeaseCheckpointRequest(((lease_id, 0),)))
        return renewal.ttl_seconds

    async def lease_time_to_live(self, lease_id: int, keys: bool) -> TimeToLive:
        return self.lessor.time_to_live(lease_id, self._now_tick(), keys)

    def members(self) -> list[Member]:
        return [Member(self.member_id, self.name, self.peer_urls, self.client_urls)]

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member:
        raise NotSupportedError(MEMBERSHIP_NOT_SUPPORTED)

    async def member_remove(self, member_id: int) -> None:
        raise NotSupportedError(MEMBERSHIP_NOT_SUPPORTED)

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None:
        raise NotSupportedError(MEMBERSHIP_NOT_SUPPORTED)

    async def member_promote(self, member_id: int) -> None:
        raise NotSupportedError(MEMBERSHIP_NOT_SUPPORTED)

    def status(self) -> NodeStatus:
        return NodeStatus(
            version=ETCD_API_VERSION,
            db_size_bytes=self.backend.size_bytes(),
            db_size_in_use_bytes=self.backend.size_in_use_bytes(),
            db_size_quota_bytes=self.kv.quota_bytes,
            leader_id=self.leader_id,
            raft_index=self._index,
            raft_term=self._term,
            raft_applied_index=self._index,
            is_learner=False,
            errors=tuple(
                f"memberID:{alarm.member_id} alarm:{alarm.alarm.name}"
                for alarm in self.alarms.get()
            ),
        )

    async def move_leader(self, target_id: int) -> None:
        if self.leader_id != self.member_id:
            raise NotLeaderError()
        if target_id != self.member_id:
            raise BadLeaderTransfereeError()

    async def defragment(self) -> None:
        self.backend.defragment()

    async def snapshot_chunks(self) -> AsyncIterator[tuple[bytes, int]]:
        work_dir = self.directory / f"snapshot-{self._rng.getrandbits(32):08x}"
        async for chunk, remaining_bytes in backend_snapshot_chunks(self.backend, str(work_dir)):
            yield chunk, remaining_bytes

    # --- Internals ------------------------------------------------------------------

    def _apply(self, request: Request) -> Response | RequestError:
        """Apply ``request`` as the next log entry, through the codec like a real one."""
        self._request_id += 1
        data = encode(self._request_id, request)
        assert decode(data) == (self._request_id, request), "the codec must round-trip"
        self._index += 1
        entry = Entry(Term(self._term), Index(self._index), EntryType.NORMAL, data)
        results = self.applier.apply([entry], self._now_tick())
        assert len(results) == 1 and results[0][0] == self._request_id
        return results[0][1]

    def _now_tick(self) -> int:
        elapsed_s = asyncio.get_running_loop().time() - self._loop_start_s
        return int(elapsed_s * TICKS_PER_SECOND)

    async def _tick_loop(self) -> None:
        """The leader's duties, once a tick: revoke expired leases, checkpoint long ones,
        let lagging watchers catch up."""
        while True:
            await asyncio.sleep(1 / TICKS_PER_SECOND)
            now = self._now_tick()
            for lease_id in self.lessor.expired(now, self.lessor.expired_limit(0)):
                with contextlib.suppress(LeaseNotFoundError):  # revoked meanwhile
                    await self.propose(LeaseRevokeRequest(lease_id))
            checkpoints = self.lessor.checkpoints(now, limits.LEASE_CHECKPOINT_BATCH_MAX)
            if checkpoints:
                self._apply(LeaseCheckpointRequest(tuple(checkpoints)))
            self.watch_hub.sync_unsynced()
