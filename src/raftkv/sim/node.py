"""One simulated server: durable MemoryStorage, a RawNode, and a tiny KV state machine.

``process_ready`` follows the Ready contract. The simulator may crash a node
in the middle of it: then whatever was not yet persisted is lost, and a
torn persist keeps only a prefix of the entries (a WAL torn at its tail).
"""

from __future__ import annotations

import contextlib
import enum
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from raftkv.check.raft_invariants import RaftInvariantChecker
from raftkv.raft.config import RaftConfig
from raftkv.raft.errors import CompactedError, StepPeerNotFound, UnavailableError
from raftkv.raft.messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    Index,
    Message,
    NodeId,
    Snapshot,
    Term,
)
from raftkv.raft.raft import StateType
from raftkv.raft.rawnode import RawNode, Ready
from raftkv.raft.storage import MemoryStorage
from raftkv.sim.disk import SimDisk
from raftkv.sim.options import SimOptions
from raftkv.storage.raft_storage import RaftPersistence

NODE_DIRECTORY = "/node"


class CrashPoint(enum.Enum):
    BEFORE_PERSIST = "before-persist"  # nothing of the Ready was written
    BEFORE_SYNC = "before-sync"  # written, not synced: SimDisk loses or tears it
    AFTER_PERSIST = "after-persist"  # durable, but not applied or acknowledged
    AFTER_APPLY = "after-apply"


@dataclass(slots=True)
class KeyValue:
    value: str
    index: Index  # log index of the write that produced the value


class SimNode:
    def __init__(
        self,
        node_id: NodeId,
        options: SimOptions,
        rng: random.Random,
        checker: RaftInvariantChecker,
        disk: SimDisk,
        persistence: RaftPersistence,
        send: Callable[[Message], None],
        on_apply: Callable[[SimNode, Entry], None],
        trace: Callable[[str], None],
    ) -> None:
        self.id = node_id
        self.options = options
        self.rng = rng
        self.checker = checker
        self.disk = disk
        self.persistence: RaftPersistence | None = persistence
        self.send = send
        self.on_apply = on_apply
        self.trace = trace
        self.rawnode: RawNode | None = None
        self.kv: dict[str, KeyValue] = {}
        self.applied: Index = 0
        self.saved_commit: Index = 0
        self.conf_state = ConfState()
        self.armed_crash: CrashPoint | None = None
        self.crash_count = 0
        self.tick_period_steps = 10
        self.next_tick_step = 0
        self.restart_at_tick: int | None = None
        # Client requests this incarnation is waiting on (lost on a crash).
        self.pending_reads: dict[bytes, int] = {}
        self.waiting_reads: list[tuple[Index, bytes]] = []
        self.start()

    # -- Lifecycle --------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.rawnode is not None

    @property
    def storage(self) -> MemoryStorage:
        assert self.persistence is not None, f"node {self.id} is down"
        return self.persistence.storage

    def start(self) -> None:
        if self.persistence is None:
            # Recover from what survived on the simulated disk, through the real WAL.
            self.persistence = RaftPersistence.open(self.disk, NODE_DIRECTORY)
            self.check_recovered_log()
        snapshot = self.storage.snapshot()
        self.restore_state_machine(snapshot)
        config = RaftConfig(
            id=self.id,
            applied=snapshot.metadata.index,  # the state machine starts from the snapshot
            election_ticks=self.options.election_ticks,
            heartbeat_ticks=self.options.heartbeat_ticks,
            check_quorum=self.options.check_quorum,
            pre_vote=self.options.pre_vote,
            rng=random.Random(self.rng.getrandbits(64)),
            max_inflight_msgs=self.options.max_inflight_msgs,
            max_size_per_msg_bytes=self.options.max_size_per_msg_bytes,
            max_inflight_bytes=max(self.options.max_size_per_msg_bytes, 1 << 20),
            max_uncommitted_entries_bytes=self.options.max_uncommitted_entries_bytes,
        )
        self.rawnode = RawNode(config, self.storage)
        self.saved_commit = self.storage.hard_state.commit  # the last commit written to disk
        self.checker.on_restart(self.id, self.saved_commit)

    def check_recovered_log(self) -> None:
        """Everything the WAL recovered must agree with what the cluster ever persisted."""
        storage = self.storage
        low, high = storage.first_index(), storage.last_index()
        if high < low:
            return
        entries = storage.entries(low, high + 1, 1 << 62)
        self.checker.on_persist(self.id, entries, [self.stored_term(e.index - 1) for e in entries])

    def crash(self) -> None:
        """Power loss: the disk keeps what was synced (and maybe a torn tail)."""
        self.disk.crash(self.rng)
        self.persistence = None
        self.rawnode = None
        self.kv = {}
        self.applied = 0
        self.armed_crash = None
        self.pending_reads = {}
        self.waiting_reads = []
        self.crash_count += 1

    def restore_state_machine(self, snapshot: Snapshot) -> None:
        image: dict[str, list[object]] = json.loads(snapshot.data) if snapshot.data else {}
        self.kv = {key: KeyValue(str(pair[0]), int(str(pair[1]))) for key, pair in image.items()}
        self.applied = snapshot.metadata.index
        self.conf_state = snapshot.metadata.conf_state

    def state_machine_image(self) -> bytes:
        image = {key: [kv.value, kv.index] for key, kv in sorted(self.kv.items())}
        return json.dumps(image, separators=(",", ":")).encode()

    # -- Input ------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        if self.rawnode is None:
            return
        # StepPeerNotFound: a response from a node removed from the configuration.
        with contextlib.suppress(StepPeerNotFound):
            self.rawnode.step(message)

    def maybe_compact(self) -> None:
        if self.rawnode is None:
            return
        snapshot_index = self.storage.snapshot().metadata.index
        if self.applied - snapshot_index < self.options.compact_threshold_entries:
            return
        if self.applied > self.storage.last_index():
            return
        assert self.persistence is not None
        keep = self.rng.randint(0, self.options.compact_threshold_entries)
        image = self.state_machine_image()
        self.persistence.compact(self.applied, self.conf_state, image, keep_entries=keep)

    # -- Ready processing -------------------------------------------------------

    def process_ready(self) -> None:
        while self.rawnode is not None and self.rawnode.has_ready():
            self.handle_ready(self.rawnode, self.rawnode.ready())

    def handle_ready(self, rawnode: RawNode, ready: Ready) -> None:
        if ready.soft_state is not None and ready.soft_state.state is StateType.LEADER:
            self.trace(f"node {self.id} leader term={rawnode.raft.term}")
        for message in ready.messages:
            self.send(message)
        if self.armed_crash is CrashPoint.BEFORE_PERSIST:
            self.crash()
            return
        if not self.persist(ready):
            return
        for message in ready.persisted_messages:
            self.send(message)
        if self.armed_crash is CrashPoint.AFTER_PERSIST:
            self.crash()
            return
        self.apply(rawnode, ready)
        if self.armed_crash is CrashPoint.AFTER_APPLY:
            self.crash()
            return
        rawnode.advance(ready)
        self.check_after_ready(rawnode)

    def persist(self, ready: Ready) -> bool:
        """Write and sync the Ready; False if the node crashed before it was durable."""
        assert self.persistence is not None
        self.persistence.save(ready)
        if self.armed_crash is CrashPoint.BEFORE_SYNC:
            self.crash()  # the disk may keep a torn prefix of the unsynced write
            return False
        if ready.hard_state is not None:
            self.saved_commit = ready.hard_state.commit
        if ready.must_sync:
            self.persistence.sync()
            # A sync makes every hard state written so far durable, including those of
            # Readies that only moved the commit index and were not synced themselves.
            self.checker.on_persist_commit(self.id, self.saved_commit)
        if ready.entries:
            entries = ready.entries
            previous_terms = [self.term_before(ready, e.index) for e in entries]
            self.checker.on_persist(self.id, entries, previous_terms)
        self.persistence.apply_to_memory(ready)
        return True

    def term_before(self, ready: Ready, index: Index) -> Term | None:
        """Term at index - 1 in the log as it will be once this Ready is applied."""
        previous = index - 1
        first_new = ready.entries[0].index
        if previous >= first_new:
            return ready.entries[previous - first_new].term
        if ready.snapshot is not None and ready.snapshot.metadata.index == previous:
            return ready.snapshot.metadata.term
        return self.stored_term(previous)

    def stored_term(self, index: Index) -> Term | None:
        try:
            return self.storage.term(index)
        except (CompactedError, UnavailableError):
            return None

    def apply(self, rawnode: RawNode, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.restore_state_machine(ready.snapshot)
            self.trace(f"node {self.id} restored snapshot {ready.snapshot.metadata.index}")
        for entry in ready.committed_entries:
            self.apply_entry(rawnode, entry)
        for read_state in ready.read_states:
            if read_state.context in self.pending_reads:
                self.waiting_reads.append((read_state.index, read_state.context))

    def apply_entry(self, rawnode: RawNode, entry: Entry) -> None:
        assert entry.index == self.applied + 1, (self.id, entry.index, self.applied)
        self.checker.on_apply(self.id, entry)
        self.applied = entry.index
        if entry.type is EntryType.CONF_CHANGE:
            change = ConfChange.decode(entry.data)
            self.conf_state = rawnode.apply_conf_change(change)
            self.trace(f"node {self.id} applied {change.describe()} at {entry.index}")
        elif entry.data:
            _, _, key, value = entry.data.decode().split("|")
            self.kv[key] = KeyValue(value, entry.index)
        self.on_apply(self, entry)

    def check_after_ready(self, rawnode: RawNode) -> None:
        raft = rawnode.raft
        self.checker.on_commit(self.id, raft.log.committed, raft.log)
        if raft.state is StateType.LEADER:
            self.checker.on_leader(self.id, raft.term, raft.log)
