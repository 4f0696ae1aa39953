"""One running member: the Ready loop on asyncio, joining the pure core to disk and network.

Data flow (docs/architecture.md has the long form):

* ``propose`` encodes a request, parks a future under a fresh request id and queues the
  bytes; the loop hands every queued proposal to Raft in one ``propose_batch``.
* The Ready loop persists each Ready (WAL write + one fsync for the whole Ready), sends
  its messages, applies committed entries in one backend batch (``Applier``), resolves the
  futures of this member's requests by id, serves ReadIndex answers once applied, and
  calls ``advance``.
* ``read_barrier`` coalesces concurrent linearizable reads into one ReadIndex request.
* A tick task drives Raft time and the leader's lease duties (expiry, checkpoints).

Everything here runs on one event loop; the core is never touched from another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from raftkv import limits
from raftkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RaftConfig,
    RawNode,
    ReadIndexDropped,
    Ready,
    StateType,
)
from raftkv.raft.messages import Entry, Snapshot
from raftkv.raft.quorum import majority_size
from raftkv.raft.storage import BOOTSTRAP_INDEX, BOOTSTRAP_TERM
from raftkv.server import errors, logs, metrics, tls
from raftkv.server.apply import Applier, Response, Result, conf_change_context
from raftkv.server.auth.context import request_auth
from raftkv.server.auth.store import AuthStore
from raftkv.server.auth.tokens import SimpleTokens
from raftkv.server.commit_notices import CommitNoticeHold
from raftkv.server.config import ServerConfig, is_tls_url
from raftkv.server.identity import (
    MemberIdentity,
    discover_identity,
    founding_identity,
    read_identity,
    write_identity,
)
from raftkv.server.interface import ETCD_API_VERSION, Header, Member, NodeStatus
from raftkv.server.peer_rpc import PeerCall, PeerReply, decode_call, decode_reply, encode_call
from raftkv.server.requests import (
    AlarmAction,
    AlarmRequest,
    AuthorizedRequest,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    MemberAttributesRequest,
    MemberUpdateRequest,
    Request,
    decode,
    encode,
)
from raftkv.server.timeouts import FifoTimeouts
from raftkv.server.transport import Transport, parse_peer_url
from raftkv.server.wal_sync import WalSyncThread
from raftkv.storage.alarm import AlarmStore, AlarmType, QuotaGuard
from raftkv.storage.backend import Backend
from raftkv.storage.disk import OsDisk
from raftkv.storage.errors import NoSpaceError, RequestError
from raftkv.storage.etcdsnap import backend_snapshot_chunks
from raftkv.storage.lease import Lessor
from raftkv.storage.lease.lessor import NotPrimaryError, TimeToLive
from raftkv.storage.members import (
    MemberRecord,
    MemberStore,
    added_member_id_for,
    cluster_id_for,
    member_id_for,
)
from raftkv.storage.mvcc import CompactionRequest, KVStore, PutRequest, TxnRequest
from raftkv.storage.mvcc.watchable import WatchHub
from raftkv.storage.raft_storage import RaftPersistence

log = logging.getLogger("raftkv.node")

_READ_CONTEXT = struct.Struct(">Q")


@dataclass
class _ReadBatch:
    """Linearizable reads that share one ReadIndex request."""

    context: bytes
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    issued_tick: int = 0
    read_index: int = 0  # known once the leader answered
    # Asked and not answered yet; False again if the ask was dropped (no leader).
    in_flight: bool = False


class Node:
    """A raftkv member. ``await start()``, serve through the NodeAPI methods, ``await stop()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.member_dir = os.path.join(config.data_dir, "member")
        self.ticks_per_second = max(1, 1000 // config.heartbeat_interval_ms)
        self.election_ticks = max(2, config.election_timeout_ms // config.heartbeat_interval_ms)
        self.request_timeout_s = 5.0 + 2 * config.election_timeout_ms / 1000
        self.client_cert_auth = config.client_tls is not None and config.client_tls.client_cert_auth
        self.rng = random.Random(os.urandom(16))
        # A founding member's id; start() replaces it with the one kept in the data
        # directory, or learned from the peers when joining (raftkv.server.identity).
        self.member_id = member_id_for(
            config.initial_advertise_peer_urls, config.initial_cluster_token
        )
        self._identity: MemberIdentity | None = None
        self.cluster_id = 0
        self.now_tick = 0
        self._request_prefix = self.rng.getrandbits(31) << 32
        self._request_counter = 0
        self._pending: dict[int, asyncio.Future[Result]] = {}
        self._timeouts = FifoTimeouts()  # proposals' and reads' request_timeout_s
        self._proposal_queue: list[bytes] = []
        self._read_batches: list[_ReadBatch] = []
        self._next_read_batch: _ReadBatch | None = None
        self._pending_revokes: set[int] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._snapshot_index = 0
        self._snapshot_sends: set[int] = set()
        self._published = False
        self._heard_at_s: dict[int, float] = {}  # peer -> time.monotonic() of its last message
        # The core is driven by the Ready loop only while it holds this lock (from ready() to
        # advance(), including the WAL fsync, which runs in a thread so the event loop keeps
        # serving meanwhile). Other tasks take it; peer messages wait in the inbox.
        self._raft_lock = asyncio.Lock()
        self._inbox: list[Message] = []
        self._unreachable: set[int] = set()
        self._wal_sync: WalSyncThread | None = None  # started with the storage
        self._last_sync_s = 0.0
        self._commit_notices = CommitNoticeHold(
            self._send_held_notices, limits.SERVER_COMMIT_NOTICE_HOLD_MS / 1000
        )
        self._known_leader_id = 0  # for leader-change metrics and the "lost leader" warning
        # Tokens outlive a snapshot install (the auth store is rebuilt, the tokens stay).
        self.auth_tokens = SimpleTokens(config.auth_token_ttl_s)

    # -- Startup ------------------------------------------------------------------------

    async def start(self) -> None:
        os.makedirs(self.member_dir, exist_ok=True)
        disk = OsDisk()
        existed = RaftPersistence.exists(disk, self.member_dir)
        self._identity = await self._establish_identity(existed)
        self.backend = self._open_backend(os.path.join(self.member_dir, "db"))
        self.member_store = MemberStore(self.backend)
        if existed:
            self.persistence = RaftPersistence.open(disk, self.member_dir)
            self._recover_backend_from_snapshot()
        elif self.config.initial_cluster_state == "new":
            self.persistence = self._bootstrap_new_cluster(disk)
        else:
            self.persistence = RaftPersistence.create_empty(disk, self.member_dir)
        self._wal_sync = WalSyncThread(self._sync_wal)
        self._open_state_machine()
        # A joining member knows the cluster id from its peers before any snapshot.
        known_cluster_id = self._identity.cluster_id if self._identity is not None else 0
        self.cluster_id = self.member_store.cluster_id or known_cluster_id
        snapshot_index = self.persistence.storage.snapshot().metadata.index
        self._snapshot_index = snapshot_index
        raft_config = RaftConfig(
            id=self.member_id,
            election_ticks=self.election_ticks,
            heartbeat_ticks=1,
            applied=snapshot_index,
            rng=self.rng,
        )
        raft_config.validate()
        self.rawnode = RawNode(raft_config, self.persistence.storage)
        await self._start_transport()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ready_loop(), name="ready-loop"),
            loop.create_task(self._tick_loop(), name="tick-loop"),
            loop.create_task(self._housekeeping_loop(), name="housekeeping"),
            loop.create_task(self._advance_election_ticks(), name="tick-advance"),
        ]
        self._wake.set()
        metrics.bind_member(self.member_id, ETCD_API_VERSION, self._metrics_sample)
        log.info(
            "member %x started (cluster %x, applied %d, data %s)",
            self.member_id,
            self.cluster_id,
            snapshot_index,
            self.config.data_dir,
        )

    async def _establish_identity(self, existed: bool) -> MemberIdentity | None:
        """This member's id: kept in its data (a restart never asks the peers: a rejoin
        under a new id must not take over the old one's data), derived for a founding
        member, or learned from the peers' member list when joining. A new identity is
        kept before the WAL exists. None: a data directory older than identity files."""
        config = self.config
        if existed:
            identity = read_identity(self.member_dir)
        elif config.initial_cluster_state == "new":
            identity = founding_identity(
                config.initial_advertise_peer_urls,
                config.initial_cluster,
                config.initial_cluster_token,
            )
            write_identity(self.member_dir, identity)
        else:
            dial_tls = tls.client_context(config.peer_tls) if config.peer_tls else None
            identity = await discover_identity(
                config.name, config.initial_advertise_peer_urls, config.initial_cluster, dial_tls
            )
            write_identity(self.member_dir, identity)
        if identity is not None:
            self.member_id = identity.member_id
        return identity

    def _bootstrap_new_cluster(self, disk: OsDisk) -> RaftPersistence:
        token = self.config.initial_cluster_token
        records = [
            MemberRecord(member_id_for(urls, token), name, tuple(urls), ())
            for name, urls in sorted(self.config.initial_cluster.items())
        ]
        cluster_id = cluster_id_for([record.id for record in records], token)
        assert self.member_id in {record.id for record in records}, "config validation"
        with self.backend.write() as batch:
            for record in records:
                self.member_store.put(batch, record)
            self.member_store.set_cluster_id(batch, cluster_id)
            # The backend holds the bootstrap snapshot's state (the members), so it is at
            # the snapshot's index: a member stopped before it applies anything restarts.
            batch.set_consistent_index(BOOTSTRAP_INDEX, BOOTSTRAP_TERM)
        self.backend.flush()
        conf_state = ConfState(voters=frozenset(record.id for record in records))
        return RaftPersistence.bootstrap(disk, self.member_dir, conf_state)

    def _snap_db_path(self, index: int) -> str:
        return os.path.join(self.member_dir, "snap", f"{index:016x}.snap.db")

    def _recover_backend_from_snapshot(self) -> None:
        """A crash between saving a received snapshot and installing its backend copy:
        the WAL starts after the snapshot, so the backend must catch up from the file."""
        snapshot_index = self.persistence.storage.snapshot().metadata.index
        if self.backend.consistent_index().index >= snapshot_index:
            return
        path = self._snap_db_path(snapshot_index)
        if not os.path.exists(path):
            raise RuntimeError(
                f"backend {self.backend.directory} is at index "
                f"{self.backend.consistent_index().index}, behind the snapshot at "
                f"{snapshot_index}, and {path} is missing: cannot recover"
            )
        self._install_backend_file(path)

    def _open_state_machine(self) -> None:
        self.lessor = Lessor(self.ticks_per_second, self.election_ticks)
        lessor = self.lessor

        def lease_exists(lease_id: int) -> bool:
            return lessor.lookup(lease_id) is not None

        quota_bytes = min(self.config.quota_backend_bytes, self.backend.map_size_bytes)
        self.kv = KVStore(
            self.backend, lease_checker=lease_exists, quota_bytes=quota_bytes, leases=lessor
        )
        orphans = self.lessor.restore(self.backend, self.kv.keys_with_leases())
        if orphans:
            raise RuntimeError(
                f"backend {self.backend.directory}: {len(orphans)} keys carry leases that do "
                f"not exist (first: {orphans[0]!r}); the backend is corrupt"
            )
        self.alarms = AlarmStore(self.backend)
        self.quota = QuotaGuard(self.backend, quota_bytes, self.alarms)
        self.auth = AuthStore(self.backend, self.auth_tokens, self.config.bcrypt_cost)
        self.member_store.load()
        self.applier = Applier(
            self.backend,
            self.kv,
            self.lessor,
            self.alarms,
            self.member_id,
            quota=self.quota,
            members=self.member_store,
            auth=self.auth,
        )
        if not hasattr(self, "watch_hub"):
            self.watch_hub = WatchHub(self.kv)
        else:
            self.watch_hub.rebind(self.kv)

    async def _start_transport(self) -> None:
        host, port = parse_peer_url(self.config.listen_peer_urls[0])
        peer_tls = self.config.peer_tls
        listen_tls = is_tls_url(self.config.listen_peer_urls[0])
        self.transport = Transport(
            member_id=self.member_id,
            cluster_id=self.cluster_id,
            listen_host=host,
            listen_port=port,
            on_message=self._on_peer_message,
            on_snapshot=self._on_peer_snapshot,
            on_request=self._on_peer_request,
            snapshot_dir=os.path.join(self.member_dir, "snap"),
            on_unreachable=self._on_unreachable,
            listen_tls=tls.server_context(peer_tls) if peer_tls and listen_tls else None,
            dial_tls=tls.client_context(peer_tls) if peer_tls else None,
        )
        await self.transport.start()
        self._sync_transport_peers()
        if not self.member_store.all():
            # Joining an existing cluster: reach the members its peers listed until the
            # leader's snapshot brings the real member table.
            for peer_id, urls in self._joining_peers():
                if peer_id != self.member_id:
                    self.transport.add_peer(peer_id, list(urls))

    def _joining_peers(self) -> list[tuple[int, tuple[str, ...]]]:
        if self._identity is not None and self._identity.peers:
            return list(self._identity.peers)
        # A data directory older than identity files: every id was derived from URLs.
        token = self.config.initial_cluster_token
        return [(member_id_for(urls, token), urls) for urls in self.config.initial_cluster.values()]

    def _sync_transport_peers(self) -> None:
        wanted = {m.id: m for m in self.member_store.all() if m.id != self.member_id}
        for member_id in set(self.transport.peer_ids()) - set(wanted):
            self.transport.remove_peer(member_id)
        for member_id, member in wanted.items():
            try:
                self.transport.update_peer(member_id, list(member.peer_urls))
            except ValueError as error:
                # A committed record is replicated state: refusing it here would stop every
                # member on every restart. The member is unreachable until MemberUpdate.
                log.error("member %x has peer URLs we cannot dial: %s", member_id, error)

    # -- Shutdown -----------------------------------------------------------------------

    async def stop(self) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._commit_notices.close()
        metrics.unbind_member(self._metrics_sample)
        try:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._wal_sync is not None:  # the WAL is closed only after its last fsync
                await asyncio.get_running_loop().run_in_executor(None, self._wal_sync.wait_idle)
                self._wal_sync.close()
            await self.transport.stop()
            self._fail_everything(errors.StoppedError())
            self._close_storage()
        finally:
            # Whatever failed above (a dying disk), the member is stopped: serve() must
            # see it and exit rather than wait forever.
            self._stopped.set()
        log.info("member %x stopped", self.member_id)

    def _close_storage(self) -> None:
        for close in (self.persistence.close, self.backend.flush, self.backend.close):
            try:
                close()
            except Exception as error:  # keep closing the rest; the error is reported
                log.error(
                    "member %x: %s failed while stopping: %r", self.member_id, close.__name__, error
                )
                if self._fatal is None:
                    self._fatal = error

    async def wait_stopped(self) -> BaseException | None:
        """Wait until the member stops (e.g. removed, or a fatal error); the error, if any."""
        await self._stopped.wait()
        return self._fatal

    def _fail_everything(self, error: RequestError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        batches = list(self._read_batches)
        if self._next_read_batch is not None:
            batches.append(self._next_read_batch)
        for batch in batches:
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        self._read_batches.clear()
        self._next_read_batch = None

    def _die(self, error: BaseException) -> None:
        """A fatal error (disk failure, corruption, a broken invariant): stop serving."""
        if self._fatal is None:
            self._fatal = error
            log.critical("member %x stopping on a fatal error: %r", self.member_id, error)
        asyncio.get_running_loop().create_task(self.stop())

    # -- NodeAPI: identity --------------------------------------------------------------

    @property
    def raft_term(self) -> int:
        return self.rawnode.raft.term

    @property
    def leader_id(self) -> int:
        return self.rawnode.raft.lead

    @property
    def is_learner(self) -> bool:
        return self.member_id in self.rawnode.raft.tracker.learners

    @property
    def is_leader(self) -> bool:
        return self.rawnode.raft.state is StateType.LEADER

    def header(self, revision: int | None = None) -> Header:
        current = self.kv.current_revision if revision is None else revision
        return Header(self.cluster_id, self.member_id, current, self.raft_term)

    # -- NodeAPI: writes ----------------------------------------------------------------

    async def propose(self, request: Request) -> Response:
        self._check_serving()
        request = self._prepare(request)
        # A client's request carries its credentials (none: user "", revision 0).
        credentials = request_auth.get()
        assert not isinstance(request, AuthorizedRequest), "the API proposes bare requests"
        revision = credentials.revision_now(self.auth.revision)
        request = AuthorizedRequest(credentials.username, revision, request)
        request_id = self._new_request_id()
        data = encode(request_id, request, self.config.max_request_bytes)
        result = await self._replicate(request_id, data)
        if isinstance(result, RequestError):
            raise result
        return result

    def _prepare(self, request: Request) -> Request:
        """Checks made before proposing: the quota (etcd checks it here, not at apply,
        because the backend size differs between members) and the apply backlog."""
        status = self.rawnode.raft
        if status.log.committed - status.log.applied > limits.SERVER_MAX_APPLY_BACKLOG_ENTRIES:
            raise errors.TooManyRequestsError()
        if len(self._pending) >= limits.SERVER_MAX_PENDING_PROPOSALS:
            raise errors.TooManyRequestsError()
        if isinstance(request, PutRequest | TxnRequest):
            try:
                self.kv.check_quota(request)
            except NoSpaceError:
                self._raise_nospace_alarm()
                raise
        if isinstance(request, LeaseGrantRequest) and request.id == 0:
            return LeaseGrantRequest(self.lessor.next_lease_id(self.rng), request.ttl_seconds)
        return request

    def _raise_nospace_alarm(self) -> None:
        if self.alarms.is_active(AlarmType.NOSPACE):
            return
        alarm = AlarmRequest(AlarmAction.ACTIVATE, self.member_id, AlarmType.NOSPACE)
        self._propose_internal(alarm)

    def _new_request_id(self) -> int:
        self._request_counter += 1
        return self._request_prefix | (self._request_counter & 0xFFFFFFFF)

    async def _replicate(self, request_id: int, data: bytes) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._proposal_queue.append(data)
        self._timeouts.add(future, self.request_timeout_s)
        self._wake.set()
        try:
            return await future
        except TimeoutError:
            # Once proposed, a write may still be applied: never claim it was not (a
            # client retries "no leader" answers, which would apply it twice).
            metrics.PROPOSALS_FAILED.inc()
            raise errors.RequestTimeoutError() from None
        finally:
            self._pending.pop(request_id, None)

    def _timeout_error(self) -> RequestError:
        if self.leader_id == 0:
            return errors.NoLeaderError()
        return errors.RequestTimeoutError()

    def _propose_internal(self, request: Request) -> None:
        """A proposal nobody waits for (lease revokes, checkpoints, alarms)."""
        self._proposal_queue.append(encode(self._new_request_id(), request))
        self._wake.set()

    def _check_serving(self) -> None:
        if self._stopping:
            raise errors.StoppedError()

    # -- NodeAPI: linearizable reads ----------------------------------------------------

    async def read_barrier(self) -> None:
        self._check_serving()
        waiting = sum(len(batch.waiters) for batch in self._read_batches)
        if self._next_read_batch is not None:
            waiting += len(self._next_read_batch.waiters)
        if waiting >= limits.SERVER_MAX_PENDING_READS:
            raise errors.TooManyRequestsError()
        if self._next_read_batch is None:
            self._request_counter += 1
            context = _READ_CONTEXT.pack(self._request_prefix | self._request_counter)
            self._next_read_batch = _ReadBatch(context)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._next_read_batch.waiters.append(waiter)
        self._timeouts.add(waiter, self.request_timeout_s)
        self._wake.set()
        try:
            await waiter
        except TimeoutError:
            raise self._timeout_error() from None

    def _issue_reads(self) -> None:
        """Ask for the read index of the reads gathered so far, unless an earlier ask is
        still unanswered: as in etcd's read loop, one ReadIndex (a heartbeat round) is in
        flight at a time, and the reads arriving meanwhile share the next one. Under load
        that makes a round per round trip, not one per Ready. A lost ask is asked again
        after an election timeout (``_retry_stale_reads``), which also frees the next."""
        batch = self._next_read_batch
        if batch is None or any(issued.in_flight for issued in self._read_batches):
            return
        self._next_read_batch = None
        batch.issued_tick = self.now_tick
        self._read_batches.append(batch)
        self._send_read_index(batch)

    def _send_read_index(self, batch: _ReadBatch) -> None:
        try:
            self.rawnode.read_index(batch.context)
        except ReadIndexDropped as error:
            batch.in_flight = False  # so the reads after it are not held back
            log.debug("read index dropped (%s); asked again after an election timeout", error)
        else:
            batch.in_flight = True

    def _retry_stale_reads(self) -> None:
        """ReadIndex requests may be lost (leader change, dropped forward): ask again."""
        for batch in self._read_batches:
            if batch.read_index == 0 and self.now_tick - batch.issued_tick >= self.election_ticks:
                batch.issued_tick = self.now_tick
                metrics.SLOW_READ_INDEXES.inc()
                self._send_read_index(batch)

    def _on_read_states(self, ready: Ready) -> None:
        for state in ready.read_states:
            for batch in self._read_batches:
                if batch.context == state.context and batch.read_index == 0:
                    batch.read_index = state.index
                    batch.in_flight = False
        if ready.read_states and self._next_read_batch is not None:
            self._wake.set()  # the reads that waited for this answer go next
        self._serve_reads()

    def _serve_reads(self) -> None:
        applied = self.rawnode.raft.log.applied
        remaining: list[_ReadBatch] = []
        for batch in self._read_batches:
            waiters_alive = [w for w in batch.waiters if not w.done()]
            if not waiters_alive:
                continue
            if batch.read_index and batch.read_index <= applied:
                for waiter in waiters_alive:
                    waiter.set_result(None)
                continue
            remaining.append(batch)
        self._read_batches = remaining

    # -- NodeAPI: leases ----------------------------------------------------------------

    async def lease_keepalive(self, lease_id: int) -> int:
        self._check_serving()
        if self.is_leader:
            return self._renew_locally(lease_id)
        reply = await self._call_leader(PeerCall("keepalive", lease_id))
        return reply.ttl_seconds

    def _renew_locally(self, lease_id: int) -> int:
        try:
            renewal = self.lessor.renew(lease_id, self.now_tick)
        except NotPrimaryError:
            raise errors.NotLeaderError() from None
        if renewal.clear_checkpoint:
            self._propose_internal(LeaseCheckpointRequest(((lease_id, 0),)))
        return renewal.ttl_seconds

    async def lease_time_to_live(self, lease_id: int, keys: bool) -> TimeToLive:
        self._check_serving()
        if self.is_leader:
            return self._time_to_live_locally(lease_id, keys)
        reply = await self._call_leader(PeerCall("ttl", lease_id, keys=keys))
        return TimeToLive(reply.ttl_seconds, reply.granted_ttl_seconds, list(reply.keys))

    def _time_to_live_locally(self, lease_id: int, keys: bool) -> TimeToLive:
        try:
            return self.lessor.time_to_live(lease_id, self.now_tick, keys)
        except NotPrimaryError:
            raise errors.NotLeaderError() from None

    async def _call_leader(self, call: PeerCall) -> PeerReply:
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            leader = self.leader_id
            if leader == 0 or leader == self.member_id:
                if time.monotonic() > deadline:
                    raise errors.NoLeaderError()
                await asyncio.sleep(self.config.heartbeat_interval_ms / 1000)
                if self.is_leader:
                    return await self._serve_peer_call(call)
                continue
            payload = await self.transport.request(
                leader, encode_call(call), timeout_s=max(0.1, deadline - time.monotonic())
            )
            reply = decode_reply(payload)
            if reply.error is not None:
                raise reply.error
            return reply

    async def _on_peer_request(self, from_id: int, payload: bytes) -> bytes:
        try:
            call = decode_call(payload)
            reply = await self._serve_peer_call(call)
        except RequestError as error:
            return PeerReply(error=error).encode()
        return reply.encode()

    async def _serve_peer_call(self, call: PeerCall) -> PeerReply:
        if call.kind == "member_list":  # any member answers, from its own table
            return PeerReply(cluster_id=self.cluster_id, members=tuple(self.member_store.all()))
        if not self.is_leader:
            raise errors.NotLeaderError()
        if call.kind == "member_add":
            member = await self.member_add(list(call.peer_urls), call.is_learner)
            return PeerReply(member_id=member.id)
        if call.kind == "member_remove":
            await self.member_remove(call.member_id)
            return PeerReply(member_id=call.member_id)
        if call.kind == "member_promote":
            await self.member_promote(call.member_id)
            return PeerReply(member_id=call.member_id)
        if call.kind == "keepalive":
            return PeerReply(ttl_seconds=self._renew_locally(call.lease_id))
        if call.kind == "ttl":
            ttl = self._time_to_live_locally(call.lease_id, call.keys)
            return PeerReply(
                ttl_seconds=ttl.ttl_seconds,
                granted_ttl_seconds=ttl.granted_ttl_seconds,
                keys=tuple(ttl.keys),
            )
        raise errors.NotLeaderError(f"etcdserver: unknown peer call {call.kind!r}")

    # -- NodeAPI: membership ------------------------------------------------------------

    def members(self) -> list[Member]:
        return [
            Member(m.id, m.name, m.peer_urls, m.client_urls, m.is_learner)
            for m in self.member_store.all()
        ]

    async def member_add(self, peer_urls: list[str], is_learner: bool) -> Member:
        if not peer_urls:
            raise errors.InvalidPeerURLError()
        for url in peer_urls:
            _check_peer_url(url)
            if self.member_store.by_peer_url(url) is not None:
                raise errors.PeerURLExistsError()
        if not self.is_leader:
            call = PeerCall("member_add", peer_urls=tuple(peer_urls), is_learner=is_learner)
            added_id = (await self._call_leader(call)).member_id
            await self._wait_member_applied(lambda: self.member_store.get(added_id) is not None)
            return Member(added_id, "", tuple(peer_urls), (), is_learner)
        member_id = added_member_id_for(
            peer_urls, self.config.initial_cluster_token, time.time_ns(), self.rng.getrandbits(64)
        )
        if self.member_store.get(member_id) is not None:
            raise errors.MemberIDExistsError()
        learners = [m for m in self.member_store.all() if m.is_learner]
        if is_learner and len(learners) >= limits.SERVER_MAX_LEARNERS:
            raise errors.TooManyLearnersError()
        record = MemberRecord(member_id, "", tuple(peer_urls), (), is_learner)
        kind = ConfChangeType.ADD_LEARNER if is_learner else ConfChangeType.ADD_NODE
        await self._change_membership(kind, member_id, record)
        return Member(member_id, "", tuple(peer_urls), (), is_learner)

    async def member_remove(self, member_id: int) -> None:
        if self.member_store.get(member_id) is None:
            raise errors.MemberNotFoundError()
        if not self.is_leader:
            await self._call_leader(PeerCall("member_remove", member_id=member_id))
            if member_id != self.member_id:
                await self._wait_member_applied(lambda: self.member_store.get(member_id) is None)
            return
        await self._change_membership(ConfChangeType.REMOVE_NODE, member_id, None)

    async def member_promote(self, member_id: int) -> None:
        member = self.member_store.get(member_id)
        if member is None:
            raise errors.MemberNotFoundError()
        if not member.is_learner:
            raise errors.MemberNotLearnerError()
        if not self.is_leader:
            await self._call_leader(PeerCall("member_promote", member_id=member_id))
            await self._wait_member_applied(lambda: not _is_learner(self.member_store, member_id))
            return
        self._check_learner_ready(member_id)
        await self._change_membership(ConfChangeType.ADD_NODE, member_id, member)

    async def _check_enough_started(self, kind: ConfChangeType, member_id: int) -> None:
        """etcd's strict reconfiguration check: refuse a change after which the started
        voters would not be a quorum (adding voters that never start would otherwise cost
        the cluster its quorum). As in etcd, a member is started once it has published its
        name, and growing a one-member cluster to two is always allowed."""
        voters = {m.id for m in self.member_store.all() if not m.is_learner}
        started = {m.id for m in self.member_store.all() if m.name}
        if kind is ConfChangeType.ADD_NODE:
            if len(voters) == 1 and member_id not in voters:
                return
            voters.add(member_id)
        else:
            voters.discard(member_id)
            started.discard(member_id)
        if len(started & voters) < majority_size(len(voters)):
            raise errors.NotEnoughStartedMembersError()

    def _check_connected(self, kind: ConfChangeType, member_id: int) -> None:
        """etcd's guard for members that are down: a new voter is added only while every
        voter is connected; a connected voter is removed only if the connected others stay
        a quorum (a voter that is down may always go: it is not part of the active quorum).
        Learners and promotions are not guarded, as in etcd."""
        voters = {m.id for m in self.member_store.all() if not m.is_learner}
        connected = self._connected(voters)
        adding_voter = kind is ConfChangeType.ADD_NODE and self.member_store.get(member_id) is None
        if adding_voter and connected != voters:
            raise errors.UnhealthyClusterError()
        removing_connected_voter = kind is ConfChangeType.REMOVE_NODE and member_id in connected
        if removing_connected_voter and len(connected) - 1 < 1 + (len(voters) - 1) // 2:
            raise errors.UnhealthyClusterError()

    def _connected(self, members: set[int]) -> set[int]:
        """Those of ``members`` heard from within the health interval (and this member)."""
        now_s = time.monotonic()
        heard = {
            member
            for member in members
            if now_s - self._heard_at_s.get(member, -math.inf)
            <= limits.SERVER_MEMBER_HEALTH_INTERVAL_S
        }
        return heard | ({self.member_id} & members)

    async def _wait_leader_settled(self) -> None:
        """A leader refuses a conf change until it has committed an entry of its term and
        applied the last conf change in its log; a new leader gets there within a round
        trip or two. Wait for it (briefly) rather than refuse a client that found the
        leader a moment after its election; a leader stuck there still refuses."""
        raft = self.rawnode.raft
        deadline = time.monotonic() + self.config.election_timeout_ms / 1000
        while self.is_leader and time.monotonic() < deadline:
            if (
                raft.committed_entry_in_current_term()
                and raft.pending_conf_index <= raft.log.applied
            ):
                return
            await asyncio.sleep(self.config.heartbeat_interval_ms / 1000)

    async def _wait_member_applied(self, applied: Callable[[], bool]) -> None:
        """After the leader applied a change for us, wait (briefly) until this member has
        too, so the caller's next MemberList here shows it. The change has succeeded
        either way: a member removing itself may never apply its own removal (the leader
        stops replicating to it), so this never fails."""
        deadline = time.monotonic() + self.config.election_timeout_ms / 1000
        while not applied() and time.monotonic() < deadline:
            await asyncio.sleep(self.config.heartbeat_interval_ms / 1000)

    def _check_learner_ready(self, member_id: int) -> None:
        """etcd promotes a learner only once its log is within 90% of the leader's; and
        only one that is connected now (a learner that stopped after catching up would
        otherwise become a dead voter, one failure closer to losing the quorum)."""
        if not self.is_leader:
            raise errors.NotLeaderError()
        progress = self.rawnode.raft.tracker.progress.get(member_id)
        leader_match = self.rawnode.raft.log.last_index()
        if progress is None or progress.match < 0.9 * leader_match:
            raise errors.LearnerNotReadyError()
        if member_id not in self._connected({member_id}):
            raise errors.LearnerNotReadyError()

    async def member_update(self, member_id: int, peer_urls: list[str]) -> None:
        if self.member_store.get(member_id) is None:
            raise errors.MemberNotFoundError()
        if not peer_urls:
            raise errors.InvalidPeerURLError()
        for url in peer_urls:
            _check_peer_url(url)
            owner = self.member_store.by_peer_url(url)
            if owner is not None and owner.id != member_id:
                raise errors.PeerURLExistsError()
        await self.propose(MemberUpdateRequest(member_id, tuple(peer_urls)))

    async def _change_membership(
        self, kind: ConfChangeType, member_id: int, record: MemberRecord | None
    ) -> None:
        self._check_serving()
        if not self.is_leader:
            raise errors.NotLeaderError(
                "etcdserver: not leader (send membership changes to the leader)"
            )
        await self._check_enough_started(kind, member_id)
        self._check_connected(kind, member_id)
        await self._wait_leader_settled()
        request_id = self._new_request_id()
        change = ConfChange(kind, member_id, conf_change_context(request_id, record))
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            try:
                async with self._raft_lock:
                    self.rawnode.propose_conf_change(change)
            except ProposalDropped as error:
                raise errors.UnhealthyClusterError(
                    f"etcdserver: re-configuration failed: {error}"
                ) from None
            self._wake.set()
            result = await asyncio.wait_for(future, self.request_timeout_s)
        except TimeoutError:
            raise self._timeout_error() from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(result, RequestError):
            raise result

    # -- NodeAPI: maintenance -----------------------------------------------------------

    def status(self) -> NodeStatus:
        raft = self.rawnode.raft
        alarms = tuple(
            f"memberID:{alarm.member_id} alarm:{AlarmType(alarm.alarm).name}"
            for alarm in self.alarms.get()
        )
        return NodeStatus(
            version=ETCD_API_VERSION,
            db_size_bytes=self.backend.size_bytes(),
            db_size_in_use_bytes=self.backend.size_in_use_bytes(),
            db_size_quota_bytes=self.quota.quota_bytes,
            leader_id=raft.lead,
            raft_index=raft.log.last_index(),
            raft_term=raft.term,
            raft_applied_index=raft.log.applied,
            is_learner=self.member_id in raft.tracker.learners,
            errors=alarms,
        )

    async def move_leader(self, target_id: int) -> None:
        if not self.is_leader:
            raise errors.NotLeaderError()
        if target_id not in self.rawnode.raft.tracker.voters:
            raise errors.BadLeaderTransfereeError()
        if target_id == self.member_id:
            return
        async with self._raft_lock:
            self.rawnode.transfer_leader(target_id)
        self._wake.set()
        deadline = time.monotonic() + self.request_timeout_s
        while self.leader_id != target_id:
            if time.monotonic() > deadline:
                raise errors.RequestTimeoutError()
            await asyncio.sleep(self.config.heartbeat_interval_ms / 1000)

    async def defragment(self) -> None:
        # Stop-the-world for this member, as in etcd: the loop is not serving meanwhile.
        self.backend.defragment()

    async def snapshot_chunks(self) -> AsyncIterator[tuple[bytes, int]]:
        # etcd's format (a bbolt file), so etcd's tools read it; see storage/etcdsnap.
        directory = os.path.join(self.member_dir, f"snapshot-save-{self.rng.getrandbits(32):08x}")
        async for chunk, remaining_bytes in backend_snapshot_chunks(self.backend, directory):
            yield chunk, remaining_bytes

    # -- Peer input ---------------------------------------------------------------------

    def _on_peer_message(self, message: Message) -> None:
        if self._stopping:
            return
        self._heard_at_s[message.frm] = time.monotonic()
        if len(self._inbox) >= limits.SERVER_MAX_INBOX_MESSAGES:
            # Raft tolerates a lost message (it is resent); unbounded memory is not tolerated.
            log.warning("inbox full: dropped %s from %x", message.type.name, message.frm)
            return
        self._inbox.append(message)
        self._wake.set()

    def _step_inbox(self) -> None:
        inbox, self._inbox = self._inbox, []
        for message in inbox:
            try:
                self.rawnode.step(message)
            except Exception as error:  # a peer's bad message must not stop the member
                log.warning("dropped %s from %x: %r", message.type.name, message.frm, error)
        unreachable, self._unreachable = self._unreachable, set()
        for member_id in unreachable:
            self.rawnode.report_unreachable(member_id)

    async def _on_peer_snapshot(self, message: Message, path: str) -> None:
        assert message.snapshot is not None
        target = self._snap_db_path(message.snapshot.metadata.index)
        os.replace(path, target)
        _fsync_directory(os.path.dirname(target))
        self._on_peer_message(message)

    def _on_unreachable(self, member_id: int) -> None:
        if not self._stopping:
            self._unreachable.add(member_id)
            self._wake.set()

    # -- The Ready loop -----------------------------------------------------------------

    async def _ready_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                async with self._raft_lock:
                    self._feed_raft()
                    while self.rawnode.has_ready():
                        await self._handle_ready(self.rawnode.ready())
                # Let the API tasks run before the next round: they queue the next batch.
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._die(error)

    def _feed_raft(self) -> None:
        self._step_inbox()
        queue, self._proposal_queue = self._proposal_queue, []
        for chunk in _proposal_batches(queue):
            try:
                self.rawnode.propose_batch(chunk)
            except ProposalDropped as error:
                self._fail_dropped(chunk, error)
        self._issue_reads()

    def _fail_dropped(self, chunk: list[bytes], reason: ProposalDropped) -> None:
        error: RequestError
        error = errors.NoLeaderError() if self.leader_id == 0 else errors.LeaderChangedError()
        log.debug("proposals dropped: %s", reason)
        metrics.PROPOSALS_FAILED.inc(len(chunk))
        for data in chunk:
            request_id, _ = decode(data)
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_exception(error)

    async def _handle_ready(self, ready: Ready) -> None:
        if ready.soft_state is not None:
            self._on_soft_state(ready)
        self._send(ready.messages)
        self.persistence.save(ready)
        to_apply = ready.committed_entries
        must_sync = ready.must_sync and not self.config.unsafe_no_fsync
        if must_sync and self._sync_on_loop(ready):
            self._sync_wal()
        elif must_sync:
            assert self._wal_sync is not None, "storage is open"
            synced = self._wal_sync.sync()
            to_apply = self._apply_durable(ready)  # while the thread syncs
            await synced
        self.persistence.apply_to_memory(ready)
        self._send(ready.persisted_messages)
        if ready.snapshot is not None:
            self._install_snapshot(ready.snapshot)
        if to_apply:
            self._apply(to_apply)
        self.rawnode.advance(ready)
        self._on_read_states(ready)
        self._maybe_snapshot()

    def _apply_durable(self, ready: Ready) -> list[Entry]:
        """Apply the committed entries that earlier Readies made durable here, while this
        Ready's fdatasync runs in its thread (it releases the GIL); the rest of them, which
        are in this Ready's own entries, are returned to apply once it is done. So the
        backend never holds an entry that this member's WAL could lose, and a leader's
        answers to the last batch go out during the next batch's sync, as etcd's do.

        Meanwhile the loop also reads requests and peer messages, which makes the next
        Ready's batch. Nothing else touches the WAL until the sync is done: the core waits
        behind the raft lock, and stop() waits for the sync thread."""
        committed = ready.committed_entries
        if not committed or ready.snapshot is not None:
            return committed  # a snapshot is installed first, after the sync
        # Committed entries are consecutive: those before this Ready's first are durable.
        first_new = ready.entries[0].index if ready.entries else committed[-1].index + 1
        durable = max(0, min(len(committed), first_new - committed[0].index))
        if durable:
            self._apply(committed[:durable])
        return committed[durable:]

    def _sync_on_loop(self, ready: Ready) -> bool:
        """Whether this Ready's WAL sync runs on the loop thread, which waits for it.

        Handing a sync to the thread and back costs two wake-ups, 50-130 µs each on a busy
        2-core machine, which pays only when the loop has work to do meanwhile. A Ready of
        one entry and at most one to apply is what a single client's write makes, on the
        leader and on the followers (docs/performance.md, change 12); under load Readies
        carry batches. A slow disk must not stall the whole member, though (its health,
        metrics and serializable reads): after a slow sync the next go to the thread."""
        limit = limits.SERVER_INLINE_SYNC_MAX_ENTRIES
        return (
            len(ready.entries) <= limit
            and len(ready.committed_entries) <= limit
            and self._last_sync_s <= limits.SERVER_INLINE_SYNC_MAX_MS / 1000
        )

    def _sync_wal(self) -> None:
        """The WAL fdatasync, measured; etcd warns when one takes over 1 s. Runs on the
        loop thread or the WAL thread (``_sync_on_loop``), never on both at once."""
        took_s = metrics.timed(metrics.WAL_FSYNC_SECONDS.observe, self.persistence.sync)
        self._last_sync_s = took_s
        if took_s > limits.WAL_SLOW_FSYNC_WARN_S:
            expected = logs.duration_text(limits.WAL_SLOW_FSYNC_WARN_S)
            took = logs.duration_text(took_s)
            log.warning("slow fdatasync", extra=logs.fields(took=took, expected_duration=expected))

    def _on_soft_state(self, ready: Ready) -> None:
        assert ready.soft_state is not None
        self._note_leader(ready.soft_state.lead)
        for batch in self._read_batches:  # an ask sent to the old leader may be lost:
            batch.issued_tick = self.now_tick - self.election_ticks  # ask again next tick
        if ready.soft_state.state is not StateType.LEADER and self.lessor.is_primary:
            self.lessor.demote()
            self._pending_revokes.clear()
        log.info(
            "member %x: %s, leader %x, term %d",
            self.member_id,
            ready.soft_state.state.name.lower(),
            ready.soft_state.lead,
            self.rawnode.raft.term,
        )

    def _note_leader(self, leader_id: int) -> None:
        """Count a new leader as etcd does (a change to a known leader); warn when lost."""
        previous, self._known_leader_id = self._known_leader_id, leader_id
        if leader_id == previous:
            return
        if leader_id == 0:
            log.warning(
                "lost leader",
                extra=logs.fields(
                    member_id=f"{self.member_id:x}",
                    lost_leader_id=f"{previous:x}",
                    term=self.rawnode.raft.term,
                ),
            )
            return
        metrics.LEADER_CHANGES.inc()

    def _send(self, messages: list[Message]) -> None:
        regular: list[Message] = []
        for message in self._commit_notices.filter(messages):
            if message.type is MessageType.SNAP:
                self._send_snapshot(message)
            else:
                regular.append(message)
        if regular:
            self.transport.send(regular)

    def _send_held_notices(self, messages: list[Message]) -> None:
        if not self._stopping:
            self.transport.send(messages)

    def _send_snapshot(self, message: Message) -> None:
        """The core's snapshot carries only metadata; the state is this member's backend,
        copied now (it is at least as new as the snapshot: the receiver skips the rest)."""
        if message.to in self._snapshot_sends:
            return
        self._snapshot_sends.add(message.to)
        directory = os.path.join(self.member_dir, f"snapshot-send-{message.to:016x}")
        shutil.rmtree(directory, ignore_errors=True)
        self.backend.copy_to(directory)
        path = os.path.join(directory, "data.mdb")

        async def stream() -> None:
            failed = True
            try:
                failed = not await self.transport.send_snapshot(message, path)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
                self._snapshot_sends.discard(message.to)
                if not self._stopping:
                    async with self._raft_lock:
                        self.rawnode.report_snapshot(message.to, failed)
                    self._wake.set()

        asyncio.get_running_loop().create_task(stream())

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        index = snapshot.metadata.index
        if self.backend.consistent_index().index >= index:
            return  # our backend already holds it (e.g. a restart replayed the marker)
        path = self._snap_db_path(index)
        if not os.path.exists(path):
            raise RuntimeError(f"snapshot {index} received without its backend file {path}")
        self._install_backend_file(path)
        self._open_state_machine()
        self._sync_transport_peers()
        self.cluster_id = self.member_store.cluster_id
        self.transport.set_cluster_id(self.cluster_id)
        self._snapshot_index = index
        self._remove_snapshot_db_files()
        log.info("member %x installed the snapshot at index %d", self.member_id, index)

    def _remove_snapshot_db_files(self) -> None:
        """Received backend copies are needed only until one is installed (the backend,
        synced, now holds at least as much): keep none, so they cannot pile up."""
        snap_dir = os.path.join(self.member_dir, "snap")
        for name in os.listdir(snap_dir):
            if name.endswith(".snap.db"):
                os.remove(os.path.join(snap_dir, name))

    def _install_backend_file(self, path: str) -> None:
        directory = self.backend.directory
        self.backend.close()
        target = os.path.join(directory, "data.mdb")
        shutil.copyfile(path, target + ".tmp")
        with open(target + ".tmp", "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(target + ".tmp", target)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, "lock.mdb"))
        _fsync_directory(directory)
        self.backend = self._open_backend(directory)
        self.member_store = MemberStore(self.backend)

    def _open_backend(self, directory: str) -> Backend:
        """Every backend commit is synced: LMDB without sync can be corrupted by a power
        loss, and the WAL replay can only repair a backend that is behind, not broken. The
        meta page is not (a crash may undo the last commit, which the WAL replays); flush()
        syncs it before the WAL is compacted. Commits are batched as etcd's are
        (--backend-batch-interval, --backend-batch-limit): the applied batches wait in an
        open transaction that reads see, and a crash loses only what the WAL replays."""
        return Backend(
            directory,
            metasync=False,
            observe_commit_s=metrics.BACKEND_COMMIT_SECONDS.observe,
            batch_commits=True,
            batch_interval_ms=self.config.backend_batch_interval_ms,
            batch_limit=self.config.backend_batch_limit,
        )

    def _apply(self, entries: list[Entry]) -> None:
        started_s = time.perf_counter()
        results = dict(self.applier.apply(entries, self.now_tick))
        self._check_apply_duration(time.perf_counter() - started_s, entries)
        raft_applied = self.rawnode.raft.log.applied
        promote = False
        for entry in entries:
            if entry.type is EntryType.CONF_CHANGE:
                if entry.index > raft_applied:
                    self._apply_conf_change(entry)
            elif not entry.data and entry.term == self.raft_term and self.is_leader:
                promote = True
        for request_id, result in results.items():
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result(result)
        if promote and not self.lessor.is_primary:
            self.lessor.promote(self.now_tick)
        self._note_applied_revokes(entries)
        self.backend.commit_if_due()

    def _check_apply_duration(self, took_s: float, entries: list[Entry]) -> None:
        """etcd's "apply request took too long": every request of a batch waits for the
        whole batch, so the batch is what is measured."""
        expected_ms = self.config.warning_apply_duration_ms
        if took_s * 1000 <= expected_ms:
            return
        metrics.SLOW_APPLY.inc()
        log.warning(
            "apply request took too long",
            extra=logs.fields(
                took=logs.duration_text(took_s),
                expected_duration=logs.duration_text(expected_ms / 1000),
                entries=len(entries),
                first_index=entries[0].index,
                last_index=entries[-1].index,
            ),
        )

    def _metrics_sample(self) -> metrics.MemberSample:
        raft = self.rawnode.raft
        return metrics.MemberSample(
            leader_id=raft.lead,
            is_leader=self.is_leader,
            is_learner=self.is_learner,
            committed_index=raft.log.committed,
            applied_index=raft.log.applied,
            pending_proposals=len(self._pending),
            db_size_bytes=self.backend.size_bytes(),
            db_size_in_use_bytes=self.backend.size_in_use_bytes(),
            quota_bytes=self.quota.quota_bytes,
            keys=len(self.kv._index),  # index entries; KVStore keeps no live-key count
        )

    def _note_applied_revokes(self, entries: list[Entry]) -> None:
        if not self._pending_revokes:
            return
        for entry in entries:
            if entry.type is EntryType.NORMAL and entry.data:
                _, request = decode(entry.data)
                if isinstance(request, LeaseRevokeRequest):
                    self._pending_revokes.discard(request.id)

    def _apply_conf_change(self, entry: Entry) -> None:
        change = ConfChange.decode(entry.data)
        self.rawnode.apply_conf_change(change)
        if change.node_id == self.member_id and change.type is ConfChangeType.REMOVE_NODE:
            log.warning("member %x was removed from the cluster; stopping", self.member_id)
            asyncio.get_running_loop().call_later(1.0, self._stop_soon)
        if self.transport is not None:
            self._sync_transport_peers()

    def _stop_soon(self) -> None:
        asyncio.get_running_loop().create_task(self.stop())

    def _maybe_snapshot(self) -> None:
        applied = self.rawnode.raft.log.applied
        if applied - self._snapshot_index < self.config.snapshot_count:
            return
        # The backend becomes durable first: the WAL up to the snapshot is released next.
        self.backend.flush()
        conf_state = self.rawnode.raft.tracker.conf_state()
        keep = min(limits.SNAPSHOT_CATCHUP_ENTRIES, self.config.snapshot_count)
        self.persistence.compact(applied, conf_state, b"", keep)
        self._snapshot_index = applied
        log.info("member %x snapshot at index %d", self.member_id, applied)

    # -- Time ---------------------------------------------------------------------------

    async def _advance_election_ticks(self) -> None:
        """etcd's --initial-election-tick-advance. A member that starts with no leader
        would wait a whole randomized election timeout before its first campaign. Once
        enough peers are connected to win an election (at once for a lone voter), its
        election clock is advanced to two ticks short of the timeout. Only the timing
        changes: pre-vote and the followers' leader lease still keep a live leader from
        being disturbed."""
        voters = {m.id for m in self.member_store.all() if not m.is_learner}
        if self.member_id not in voters:
            return
        needed_peers = majority_size(len(voters)) - 1
        if needed_peers > 0 and not self.config.initial_election_tick_advance:
            return
        deadline = time.monotonic() + limits.SERVER_TICK_ADVANCE_WAIT_S
        while self.transport.connected_peer_count() < needed_peers:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(limits.SERVER_TICK_ADVANCE_POLL_S)
        async with self._raft_lock:
            raft = self.rawnode.raft
            if raft.state is not StateType.FOLLOWER or raft.lead != 0:
                return  # an election or a leader came first: nothing to hurry
            for _ in range(max(0, self.election_ticks - 2)):
                self.rawnode.tick()
        self._wake.set()

    async def _tick_loop(self) -> None:
        interval_s = self.config.heartbeat_interval_ms / 1000
        next_at = time.monotonic()
        try:
            while True:
                next_at += interval_s
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                async with self._raft_lock:
                    self.now_tick += 1
                    self.rawnode.tick()
                    self._lease_duties()
                    self._retry_stale_reads()
                    self._timeouts.expire()
                    self.backend.commit_if_due()  # an idle member's last batches
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._die(error)

    def _lease_duties(self) -> None:
        lessor = self.lessor
        if not lessor.is_primary:
            return
        limit = lessor.expired_limit(len(self._pending_revokes))
        for lease_id in lessor.expired(self.now_tick, limit):
            self._propose_internal(LeaseRevokeRequest(lease_id))
            self._pending_revokes.add(lease_id)
        points = lessor.checkpoints(self.now_tick, limits.LEASE_CHECKPOINT_BATCH_MAX)
        if points:
            pairs = tuple((p.lease_id, p.remaining_ttl_seconds) for p in points)
            self._propose_internal(LeaseCheckpointRequest(pairs))

    async def _housekeeping_loop(self) -> None:
        """Slow duties: publish our attributes, catch up unsynced watchers, compaction."""
        compactor = AutoCompactor(self.config)
        try:
            while True:
                await asyncio.sleep(limits.SERVER_HOUSEKEEPING_INTERVAL_MS / 1000)
                self.watch_hub.sync_unsynced()
                if not self._published and self.leader_id != 0:
                    self._publish_attributes()
                if self.is_leader:
                    revision = compactor.due(time.monotonic(), self.kv.current_revision)
                    if revision is not None and revision > self.kv.compacted_revision:
                        self._propose_internal(CompactionRequest(revision))
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            self._die(error)

    def _publish_attributes(self) -> None:
        record = self.member_store.get(self.member_id)
        urls = tuple(self.config.advertise_client_urls)
        if record is not None and record.name == self.config.name and record.client_urls == urls:
            self._published = True
            return
        if record is None:
            return  # joining: the snapshot with our record has not arrived yet
        self._propose_internal(MemberAttributesRequest(self.member_id, self.config.name, urls))


class AutoCompactor:
    """etcd's --auto-compaction-mode/--auto-compaction-retention, on the leader.

    periodic: keep about ``retention`` seconds of history (revisions sampled every
    tenth of the window, compacting to the sample one window old); revision: keep the
    last ``retention`` revisions, checked every 5 minutes like etcd."""

    def __init__(self, config: ServerConfig) -> None:
        self.mode = config.auto_compaction_mode
        self.retention_seconds = config.auto_compaction_retention_seconds
        self.retention_revisions = config.auto_compaction_retention_revisions
        self._samples: list[tuple[float, int]] = []
        self._last_check_s = 0.0

    def due(self, now_s: float, current_revision: int) -> int | None:
        if self.mode == "revision":
            if self.retention_revisions <= 0 or now_s - self._last_check_s < 300:
                return None
            self._last_check_s = now_s
            keep_from = current_revision - self.retention_revisions
            return keep_from if keep_from > 0 else None
        if self.retention_seconds <= 0:
            return None
        window = self.retention_seconds
        if not self._samples or now_s - self._samples[-1][0] >= window / 10:
            self._samples.append((now_s, current_revision))
        target: int | None = None
        while self._samples and now_s - self._samples[0][0] >= window:
            target = self._samples.pop(0)[1]
        return target


def _is_learner(store: MemberStore, member_id: int) -> bool:
    member = store.get(member_id)
    return member is not None and member.is_learner


def _proposal_batches(queue: list[bytes]) -> list[list[bytes]]:
    """Split queued proposals into batches a follower can forward in one message: at most
    SERVER_MAX_PROPOSALS_PER_BATCH entries and RAFT_MAX_SIZE_PER_MSG_BYTES (a larger single
    proposal goes alone)."""
    batches: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for data in queue:
        too_many = len(current) >= limits.SERVER_MAX_PROPOSALS_PER_BATCH
        if current and (too_many or size + len(data) > limits.RAFT_MAX_SIZE_PER_MSG_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(data)
        size += len(data)
    if current:
        batches.append(current)
    return batches


def _check_peer_url(url: str) -> None:
    try:
        parse_peer_url(url)
    except ValueError:
        raise errors.InvalidPeerURLError() from None


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["AutoCompactor", "Node"]
