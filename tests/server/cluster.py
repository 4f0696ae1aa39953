"""A tiny in-memory cluster of full members: RawNode + Backend + KVStore + Lessor + Applier.

Each member handles Readies by the RawNode contract (persist to its MemoryStorage, send,
apply committed entries through its Applier, advance). Its "server loop" does what
docs/storage.md asks of the server for leases:

* promote the lessor when, as leader, it applies the empty entry of its own term;
* demote it as soon as it stops leading;
* every tick on the primary, propose a LeaseRevoke per ``lessor.expired(...)`` and one
  LeaseCheckpoint with ``lessor.checkpoints(...)``; on any other member both must be [].

Time is one global tick count; ``tick`` ticks every running member, runs the server
loops, and lets the network settle (messages are fast compared to ticks).
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from raftkv import limits
from raftkv.raft import (
    ConfChange,
    ConfState,
    EntryType,
    MemoryStorage,
    Message,
    ProposalDropped,
    RaftConfig,
    RawNode,
    StateType,
    bootstrap_storage,
)
from raftkv.server.apply import Applier, LeaseRevokeResponse, Result
from raftkv.server.requests import (
    LeaseCheckpointRequest,
    LeaseRevokeRequest,
    Request,
    decode,
    encode,
)
from raftkv.storage.alarm import AlarmStore
from raftkv.storage.backend import Backend
from raftkv.storage.lease import Lessor
from raftkv.storage.mvcc import KVStore, RangeRequest

MAP_SIZE_BYTES = 64 * limits.MIB


@dataclass(frozen=True)
class Applied:
    tick: int
    index: int
    request: Request
    result: Result


@dataclass
class Member:
    id: int
    storage: MemoryStorage
    rawnode: RawNode
    backend: Backend
    kv: KVStore
    lessor: Lessor
    alarms: AlarmStore
    applier: Applier
    results: dict[int, Result] = field(default_factory=dict)
    applied: list[Applied] = field(default_factory=list)  # every request, in log order
    pending_revokes: set[int] = field(default_factory=set)
    proposed_revokes: list[tuple[int, int]] = field(default_factory=list)  # (tick, lease id)
    promotions: list[int] = field(default_factory=list)  # ticks
    next_request: int = 0

    @property
    def is_leader(self) -> bool:
        return self.rawnode.raft.state is StateType.LEADER

    def new_request_id(self) -> int:
        self.next_request += 1
        return self.id << 32 | self.next_request

    def get(self, key: bytes) -> bytes | None:
        kvs = self.kv.range(RangeRequest(key)).kvs
        return kvs[0].value if kvs else None


def _lease_checker(lessor: Lessor) -> Callable[[int], bool]:
    def exists(lease_id: int) -> bool:
        return lessor.lookup(lease_id) is not None

    return exists


class Cluster:
    def __init__(
        self,
        root: Path,
        ids: tuple[int, ...] = (1, 2, 3),
        *,
        ticks_per_second: int = 10,
        election_ticks: int = 10,
    ) -> None:
        self.now = 0
        self.queue: deque[Message] = deque()
        self.filters: list[Callable[[Message], bool]] = []
        self.members: dict[int, Member] = {}
        conf_state = ConfState(voters=frozenset(ids))
        for node_id in ids:
            storage = MemoryStorage()
            bootstrap_storage(storage, conf_state)
            config = RaftConfig(
                id=node_id,
                election_ticks=election_ticks,
                heartbeat_ticks=1,
                rng=random.Random(node_id),
            )
            backend = Backend(str(root / f"m{node_id}"), map_size_bytes=MAP_SIZE_BYTES, sync=False)
            lessor = Lessor(ticks_per_second, election_ticks)
            kv = KVStore(
                backend,
                lease_checker=_lease_checker(lessor),
                leases=lessor,
            )
            alarms = AlarmStore(backend)
            self.members[node_id] = Member(
                id=node_id,
                storage=storage,
                rawnode=RawNode(config, storage),
                backend=backend,
                kv=kv,
                lessor=lessor,
                alarms=alarms,
                applier=Applier(backend, kv, lessor, alarms, member_id=node_id),
            )

    def close(self) -> None:
        for member in self.members.values():
            member.backend.close()

    # --- Queries ---------------------------------------------------------------------

    def leader(self) -> Member | None:
        leaders = [m for m in self.members.values() if m.is_leader]
        return max(leaders, key=lambda m: m.rawnode.raft.term) if leaders else None

    def primary(self) -> Member | None:
        primaries = [m for m in self.members.values() if m.lessor.is_primary]
        assert len(primaries) <= 1 or self.filters, "two primaries on a healthy network"
        return max(primaries, key=lambda m: m.rawnode.raft.term) if primaries else None

    # --- Driving ---------------------------------------------------------------------

    def propose(self, member: Member, request: Request) -> int:
        request_id = member.new_request_id()
        member.rawnode.propose(encode(request_id, request))
        return request_id

    def request(self, request: Request) -> Result:
        """Propose at the leader, let it commit, return the leader's result."""
        leader = self.leader()
        assert leader is not None, "no leader"
        request_id = self.propose(leader, request)
        self.stabilize()
        return leader.results[request_id]

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.now += 1
            for member in self.members.values():
                member.rawnode.tick()
            self.stabilize()
            for member in self.members.values():
                self._server_tick(member)
            self.stabilize()

    def tick_until(self, condition: Callable[[], bool], limit: int) -> int:
        for _ in range(limit):
            if condition():
                return self.now
            self.tick()
        raise AssertionError(f"condition not reached within {limit} ticks")

    def isolate(self, node_id: int) -> Callable[[Message], bool]:
        def lost(message: Message) -> bool:
            return node_id in (message.frm, message.to)

        self.filters.append(lost)
        return lost

    def heal(self) -> None:
        self.filters.clear()

    def stabilize(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            progressed = False
            for member in self.members.values():
                while member.rawnode.has_ready():
                    self._process_ready(member)
                    progressed = True
            if self.queue:
                message = self.queue.popleft()
                if not any(lost(message) for lost in self.filters):
                    self.members[message.to].rawnode.step(message)
            elif not progressed:
                return
        raise AssertionError("cluster did not settle")

    # --- One member's server loop ----------------------------------------------------

    def _server_tick(self, member: Member) -> None:
        lessor = member.lessor
        if not lessor.is_primary:
            assert lessor.expired(self.now, lessor.expired_limit(0)) == []
            assert lessor.checkpoints(self.now, limits.LEASE_CHECKPOINT_BATCH_MAX) == []
            return
        limit = lessor.expired_limit(len(member.pending_revokes))
        for lease_id in lessor.expired(self.now, limit):
            try:
                self.propose(member, LeaseRevokeRequest(lease_id))
            except ProposalDropped:
                continue  # handed out again after LEASE_EXPIRED_RETRY_SECONDS
            member.pending_revokes.add(lease_id)
            member.proposed_revokes.append((self.now, lease_id))
        points = lessor.checkpoints(self.now, limits.LEASE_CHECKPOINT_BATCH_MAX)
        if points:
            checkpoints = tuple((p.lease_id, p.remaining_ttl_seconds) for p in points)
            # A dropped proposal is retried one interval later.
            with contextlib.suppress(ProposalDropped):
                self.propose(member, LeaseCheckpointRequest(checkpoints))

    def _process_ready(self, member: Member) -> None:
        rawnode = member.rawnode
        ready = rawnode.ready()
        # Demote as soon as the node stops leading.
        if (
            ready.soft_state is not None
            and ready.soft_state.state is not StateType.LEADER
            and member.lessor.is_primary
        ):
            member.lessor.demote()
            member.pending_revokes.clear()
        # 1. Persist.
        if ready.snapshot is not None:
            member.storage.apply_snapshot(ready.snapshot)
        member.storage.append(ready.entries)
        if ready.hard_state is not None:
            member.storage.set_hard_state(ready.hard_state)
        # 2, 3. Send.
        self.queue.extend(ready.messages)
        self.queue.extend(ready.persisted_messages)
        # 4. Apply.
        assert ready.snapshot is None, "no snapshots in these tests"
        entries = ready.committed_entries
        if entries:
            results = iter(member.applier.apply(entries, self.now))
            for entry in entries:
                if entry.type is EntryType.CONF_CHANGE:
                    rawnode.apply_conf_change(ConfChange.decode(entry.data))
                elif entry.data:
                    request_id, request = decode(entry.data)
                    result_id, result = next(results)
                    assert result_id == request_id
                    member.results[request_id] = result
                    member.applied.append(Applied(self.now, entry.index, request, result))
                    if isinstance(request, LeaseRevokeRequest):
                        member.pending_revokes.discard(request.id)
            assert next(results, None) is None
            own_empty = any(
                not entry.data
                and entry.type is EntryType.NORMAL
                and entry.term == rawnode.raft.term
                for entry in entries
            )
            if own_empty and member.is_leader and not member.lessor.is_primary:
                member.lessor.promote(self.now)
                member.promotions.append(self.now)
        # 5. Advance.
        rawnode.advance(ready)


def revokes(member: Member, lease_id: int) -> list[Applied]:
    """The revokes of this lease the member applied that succeeded."""
    return [
        applied
        for applied in member.applied
        if isinstance(applied.request, LeaseRevokeRequest)
        and applied.request.id == lease_id
        and isinstance(applied.result, LeaseRevokeResponse)
    ]
