"""WAL recovery over SimDisk crashes, for many seeds.

A Raft-follower-like workload (appends, overwritten suffixes, local and
leader snapshots, hard states, group commits, release_to, injected write
errors) runs against a WAL on a SimDisk and crashes at random points. After
each crash the reopened WAL must replay exactly the state after some prefix
of the records written, and that prefix must include every synced record.
The expected states come from a naive reference that folds the full record
history (it never sees release_to), so it also checks that releasing
segments loses nothing that matters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from raftkv.raft.messages import Entry, HardState, Snapshot, SnapshotMetadata
from raftkv.sim.disk import SimDisk
from raftkv.storage.errors import DiskError
from raftkv.storage.wal import WAL, Replay, SnapshotMarker, build_memory_storage

DIRECTORY = "/node/wal"
SEEDS = 120
STEPS = 150


# -- The reference: fold records over the whole history ------------------------


@dataclass(frozen=True, slots=True)
class EntryRecord:
    entry: Entry


@dataclass(frozen=True, slots=True)
class HardStateRecord:
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class MarkerRecord:
    index: int
    term: int


WrittenRecord = EntryRecord | HardStateRecord | MarkerRecord


@dataclass
class State:
    marker: SnapshotMarker = field(default_factory=SnapshotMarker)
    hard_state: HardState = field(default_factory=HardState)
    log: dict[int, Entry] = field(default_factory=dict)  # entries after the marker

    def apply(self, record: WrittenRecord) -> None:
        if isinstance(record, EntryRecord):
            entry = record.entry
            if entry.index > self.marker.index:
                self.log = {i: e for i, e in self.log.items() if i < entry.index}
                self.log[entry.index] = entry
        elif isinstance(record, HardStateRecord):
            self.hard_state = record.hard_state
        else:
            local = record.index in self.log and self.log[record.index].term == record.term
            self.log = {i: e for i, e in self.log.items() if i > record.index} if local else {}
            self.marker = SnapshotMarker(record.index, record.term)

    def entries(self) -> list[Entry]:
        return [self.log[index] for index in sorted(self.log)]

    def last_index(self) -> int:
        return max(self.log, default=self.marker.index)

    def matches(self, replay: Replay) -> bool:
        return (self.marker, self.hard_state, self.entries()) == (
            replay.marker,
            replay.hard_state,
            replay.entries,
        )


def fold(records: list[WrittenRecord]) -> State:
    state = State()
    for record in records:
        state.apply(record)
    return state


# -- The workload -------------------------------------------------------------


class Workload:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.disk = SimDisk()
        self.segment_bytes = self.rng.choice([256, 512, 2048])
        self.wal = WAL.create(self.disk, DIRECTORY, segment_bytes=self.segment_bytes)
        self.records: list[WrittenRecord] = []
        self.synced = 0  # records known durable: a lower bound
        self.durable_marker_index = 0
        self.state = State()
        self.term = 1
        self.crashes = 0

    def step(self) -> None:
        action = self.rng.choices(
            ["append", "overwrite", "local_snap", "leader_snap", "sync", "release", "crash"],
            weights=[40, 8, 6, 3, 20, 5, 6],
        )[0]
        try:
            getattr(self, action)()
        except DiskError:
            self.crash()  # what the node does after a failed write: stop, restart

    def _maybe_inject(self) -> None:
        if self.rng.random() < 0.03:
            self.disk.inject_write_error = True

    def _save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        self._maybe_inject()
        self.wal.save(hard_state, entries)
        for entry in entries:
            self._record(EntryRecord(entry))
        if hard_state is not None:
            self._record(HardStateRecord(hard_state))

    def _record(self, record: WrittenRecord) -> None:
        self.records.append(record)
        self.state.apply(record)

    def _entries(self, first: int, count: int) -> list[Entry]:
        sizes = [self.rng.choice([0, 3, 40, 200, 700]) for _ in range(count)]
        return [
            Entry(term=self.term, index=first + i, data=self.rng.randbytes(size))
            for i, size in enumerate(sizes)
        ]

    def _hard_state(self, last: int) -> HardState | None:
        if self.rng.random() < 0.3:
            return None
        commit = self.rng.randint(self.state.hard_state.commit, last)
        vote = self.rng.choice([0, 1, 2, 3])
        return HardState(term=self.term, vote=vote, commit=commit)

    def append(self) -> None:
        entries = self._entries(self.state.last_index() + 1, self.rng.randint(1, 4))
        self._save(self._hard_state(entries[-1].index), entries)

    def overwrite(self) -> None:
        lowest = max(self.state.hard_state.commit, self.state.marker.index) + 1
        if lowest > self.state.last_index():
            return
        self.term += 1
        first = self.rng.randint(lowest, self.state.last_index())
        entries = self._entries(first, self.rng.randint(1, 3))
        self._save(self._hard_state(entries[-1].index), entries)

    def local_snap(self) -> None:
        commit = self.state.hard_state.commit
        if commit <= self.state.marker.index:
            return
        index = self.rng.randint(self.state.marker.index + 1, commit)
        term = self.state.log[index].term
        self._maybe_inject()
        self.wal.save_snapshot_marker(index, term)
        self._record(MarkerRecord(index, term))

    def leader_snap(self) -> None:
        self.term += 1
        index = self.state.hard_state.commit + self.rng.randint(1, 6)
        index = max(index, self.state.marker.index + 1)
        self._maybe_inject()
        self.wal.save_snapshot_marker(index, self.term)
        self._record(MarkerRecord(index, self.term))
        self._save(HardState(term=self.term, vote=0, commit=index), [])

    def sync(self) -> None:
        self.wal.sync()
        self.synced = len(self.records)
        self.durable_marker_index = self.state.marker.index

    def release(self) -> None:
        if self.durable_marker_index:
            self.wal.release_to(self.rng.randint(1, self.durable_marker_index))

    def crash(self) -> None:
        self.crashes += 1
        self.disk.crash(self.rng)
        self.wal, replay = WAL.open(self.disk, DIRECTORY, segment_bytes=self.segment_bytes)
        survived = self._surviving_prefix(replay)
        self.records = self.records[:survived]
        self.synced = survived
        self.state = fold(self.records)
        self.durable_marker_index = self.state.marker.index
        self.term = max([self.term, self.state.hard_state.term, self.state.marker.term])
        check_memory_storage(replay)
        # Opening again without a crash changes nothing (the repair is durable).
        self.wal.close()
        self.wal, again = WAL.open(self.disk, DIRECTORY, segment_bytes=self.segment_bytes)
        assert again == replay

    def _surviving_prefix(self, replay: Replay) -> int:
        """The longest prefix whose state the WAL replays; it must cover the synced records."""
        state = fold(self.records[: self.synced])
        survived = self.synced if state.matches(replay) else -1
        for count in range(self.synced + 1, len(self.records) + 1):
            state.apply(self.records[count - 1])
            if state.matches(replay):
                survived = count
        assert survived >= 0, (
            f"replay {replay.marker} {replay.hard_state} {len(replay.entries)} entries is not "
            f"the state after any prefix of {len(self.records)} records ({self.synced} synced)"
        )
        return survived


def check_memory_storage(replay: Replay) -> None:
    snapshot = None
    if replay.marker.index:
        metadata = SnapshotMetadata(index=replay.marker.index, term=replay.marker.term)
        snapshot = Snapshot(metadata=metadata, data=b"image")
    storage = build_memory_storage(replay, snapshot)
    assert storage.last_index() == replay.last_index
    assert storage.first_index() == replay.marker.index + 1
    assert storage.hard_state == replay.hard_state


@pytest.mark.parametrize("seed", range(SEEDS))
def test_wal_recovers_a_synced_prefix_after_crashes(seed: int) -> None:
    workload = Workload(seed)
    for _ in range(STEPS):
        workload.step()
    workload.crash()
    workload.sync()
    workload.wal.close()
    _, replay = WAL.open(workload.disk, DIRECTORY, segment_bytes=workload.segment_bytes)
    assert fold(workload.records).matches(replay)


def test_the_workload_exercises_what_it_should() -> None:
    totals = {"crashes": 0, "segments": 0, "released": 0, "lost": 0}
    for seed in range(20):
        workload = Workload(seed)
        for _ in range(STEPS):
            before = len(workload.records)
            crashes = workload.crashes
            workload.step()
            if workload.crashes > crashes:
                totals["lost"] += before > len(workload.records)
        totals["crashes"] += workload.crashes
        names = workload.disk.list_dir(DIRECTORY)
        totals["segments"] += len(names)
        totals["released"] += int(names[0][:16], 16) > 0
    assert totals["crashes"] > 50
    assert totals["segments"] > 40
    assert totals["released"] > 5
    assert totals["lost"] > 10  # unsynced records really are lost sometimes
