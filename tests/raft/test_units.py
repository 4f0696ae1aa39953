"""Focused tests of the Raft core's building blocks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftkv import limits
from raftkv.raft import (
    CompactedError,
    ConfChange,
    ConfChangeInvalid,
    ConfChangeType,
    ConfigInvalid,
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RaftConfig,
    RawNode,
    ReadIndexDropped,
    Ready,
    Snapshot,
    SnapshotMetadata,
    StepLocalMessage,
    StepPeerNotFound,
    UnavailableError,
    bootstrap_storage,
)
from raftkv.raft.confchange import apply_change, check_invariants
from raftkv.raft.errors import SnapshotOutOfDate
from raftkv.raft.log import RaftLog
from raftkv.raft.log_unstable import Unstable
from raftkv.raft.messages import HardState, entry_size_bytes
from raftkv.raft.storage import limit_size
from raftkv.raft.tracker import Inflights, Progress, ProgressState

BIG = 1 << 62


def entries(first: int, terms: list[int]) -> list[Entry]:
    return [Entry(term=t, index=i) for i, t in enumerate(terms, start=first)]


def snapshot_at(index: int, term: int, voters: frozenset[int] = frozenset({1})) -> Snapshot:
    return Snapshot(SnapshotMetadata(index=index, term=term, conf_state=ConfState(voters=voters)))


# -- Inflights ---------------------------------------------------------------


def test_inflights_count_bound() -> None:
    inflights = Inflights(max_count=3, max_bytes=1000)
    for last_index in (5, 7, 9):
        assert not inflights.full()
        inflights.add(last_index, 10)
    assert inflights.full()
    assert len(inflights) == 3
    with pytest.raises(AssertionError):
        inflights.add(11, 10)


def test_inflights_byte_bound() -> None:
    inflights = Inflights(max_count=10, max_bytes=100)
    inflights.add(1, 60)
    assert not inflights.full()
    inflights.add(2, 40)
    assert inflights.full()  # 100 bytes reach the bound
    assert inflights.bytes == 100


def test_inflights_free_le() -> None:
    inflights = Inflights(max_count=10, max_bytes=1000)
    for last_index in (3, 5, 8, 13):
        inflights.add(last_index, last_index)
    inflights.free_le(2)
    assert len(inflights) == 4
    inflights.free_le(6)  # frees 3 and 5, not 8
    assert len(inflights) == 2
    assert inflights.bytes == 8 + 13
    inflights.free_le(100)
    assert len(inflights) == 0
    assert inflights.bytes == 0


def test_inflights_free_first_one_and_reset() -> None:
    inflights = Inflights(max_count=2, max_bytes=1000)
    inflights.add(1, 5)
    inflights.add(2, 7)
    assert inflights.full()
    inflights.free_first_one()
    assert not inflights.full()
    assert inflights.bytes == 7
    inflights.reset()
    assert len(inflights) == 0 and inflights.bytes == 0
    inflights.free_first_one()  # empty: no-op


def test_inflights_indexes_must_increase() -> None:
    inflights = Inflights(max_count=5, max_bytes=1000)
    inflights.add(5, 1)
    with pytest.raises(AssertionError):
        inflights.add(5, 1)


# -- Progress ------------------------------------------------------------------


def state(progress: Progress) -> ProgressState:
    """The progress state, read through a call so mypy does not over-narrow it."""
    return progress.state


def new_progress(next_index: int = 6, max_count: int = 2) -> Progress:
    return Progress(next_index, Inflights(max_count, 1000), is_learner=False)


def test_progress_probe_sends_one_append_at_a_time() -> None:
    progress = new_progress()
    assert progress.state is ProgressState.PROBE and not progress.is_paused()
    progress.sent_entries(8, 30)
    assert progress.is_paused()
    assert progress.next == 6  # probing does not advance next optimistically
    assert progress.maybe_update(5)
    assert not progress.is_paused()


def test_progress_probe_to_replicate_to_snapshot_and_back() -> None:
    progress = new_progress()
    assert progress.maybe_update(5)
    progress.become_replicate()
    assert progress.state is ProgressState.REPLICATE
    assert progress.next == 6
    progress.sent_entries(8, 30)
    assert progress.next == 9
    progress.sent_entries(10, 30)
    assert progress.next == 11
    assert progress.is_paused()  # two inflight messages: full
    assert progress.maybe_update(8)
    progress.inflights.free_le(8)
    assert not progress.is_paused()

    progress.become_snapshot(20)
    assert state(progress) is ProgressState.SNAPSHOT
    assert progress.pending_snapshot == 20
    assert progress.is_paused()
    assert len(progress.inflights) == 0
    with pytest.raises(AssertionError):
        progress.sent_entries(30, 1)
    progress.become_probe()  # e.g. the snapshot was reported as applied
    assert state(progress) is ProgressState.PROBE
    assert progress.next == 21  # past the snapshot, even though match is 8
    assert progress.pending_snapshot == 0


def test_progress_become_probe_from_replicate_restarts_at_match() -> None:
    progress = new_progress()
    progress.maybe_update(5)
    progress.become_replicate()
    progress.sent_entries(9, 10)
    progress.become_probe()
    assert progress.next == 6
    assert len(progress.inflights) == 0


def test_progress_maybe_update_ignores_stale_acks() -> None:
    progress = new_progress(next_index=10)
    assert progress.maybe_update(7)
    assert not progress.maybe_update(7)
    assert not progress.maybe_update(3)
    assert progress.match == 7
    assert progress.next == 10  # next never moves back


def test_progress_maybe_decrease_to_in_replicate() -> None:
    progress = new_progress()
    progress.maybe_update(5)
    progress.become_replicate()
    progress.sent_entries(9, 10)
    assert not progress.maybe_decrease_to(5, 3)  # stale: at or below match
    assert not progress.maybe_decrease_to(4, 3)
    assert progress.next == 10
    assert progress.maybe_decrease_to(9, 7)
    assert progress.next == 6  # back to match + 1


def test_progress_maybe_decrease_to_in_probe() -> None:
    progress = new_progress(next_index=10)
    progress.sent_entries(12, 10)  # a probe at prev index 9
    assert not progress.maybe_decrease_to(8, 2)  # not the probe we wait for
    assert progress.next == 10
    assert progress.maybe_decrease_to(9, 4)
    assert progress.next == 5  # jump to hint + 1
    assert not progress.probe_sent
    progress.maybe_update(3)
    assert progress.maybe_decrease_to(4, 0)
    assert progress.next == 4  # never below match + 1


# -- RaftLog.find_conflict_by_term --------------------------------------------


def raft_log(storage: MemoryStorage) -> RaftLog:
    return RaftLog(storage, max_committed_size_per_ready_bytes=BIG)


@pytest.mark.parametrize(
    ("index", "term", "expected"),
    [
        (7, 7, (7, 7)),  # matches at once
        (7, 6, (6, 5)),  # skip the term-7 entry
        (6, 5, (6, 5)),
        (5, 4, (2, 2)),  # skip the whole of term 5
        (5, 2, (2, 2)),
        (5, 1, (0, 0)),  # nothing in our log has a term <= 1
        (10, 7, (7, 7)),  # beyond our last index: start at the last entry
        (0, 3, (0, 0)),
    ],
)
def test_find_conflict_by_term(index: int, term: int, expected: tuple[int, int]) -> None:
    storage = MemoryStorage()
    storage.append(entries(1, [2, 2, 5, 5, 5, 5, 7]))
    assert raft_log(storage).find_conflict_by_term(index, term) == expected


def test_find_conflict_by_term_stops_at_the_compaction_point() -> None:
    storage = MemoryStorage()
    storage.apply_snapshot(snapshot_at(3, 5))
    storage.append(entries(4, [5, 5, 5, 7]))
    log = raft_log(storage)
    assert log.find_conflict_by_term(7, 6) == (6, 5)
    assert log.find_conflict_by_term(3, 5) == (3, 5)  # the snapshot's term is known
    assert log.find_conflict_by_term(7, 4) == (2, 0)  # unknown below the snapshot


def test_find_conflict_by_term_sees_unstable_entries() -> None:
    storage = MemoryStorage()
    storage.append(entries(1, [1, 1]))
    log = raft_log(storage)
    log.append(entries(3, [3, 4]))
    assert log.find_conflict_by_term(4, 3) == (3, 3)
    assert log.last_index() == 4


# -- MemoryStorage ---------------------------------------------------------------


def storage_with(first: int, terms: list[int]) -> MemoryStorage:
    storage = MemoryStorage()
    if first > 1:
        storage.apply_snapshot(snapshot_at(first - 1, terms[0]))
    storage.append(entries(first, terms))
    return storage


def test_memory_storage_bounds() -> None:
    storage = storage_with(4, [3, 4, 5])  # snapshot at 3, entries 4..6
    assert (storage.first_index(), storage.last_index()) == (4, 6)
    assert storage.term(3) == 3  # the snapshot's own entry
    with pytest.raises(CompactedError):
        storage.term(2)
    with pytest.raises(UnavailableError):
        storage.term(7)
    with pytest.raises(CompactedError):
        storage.entries(3, 5, BIG)
    with pytest.raises(UnavailableError):
        storage.entries(4, 8, BIG)
    assert storage.entries(4, 7, BIG) == entries(4, [3, 4, 5])
    assert storage.entries(5, 5, BIG) == []


def test_memory_storage_entries_size_limit() -> None:
    storage = storage_with(1, [1, 1, 1])
    one = entry_size_bytes(Entry(term=1, index=1))
    assert len(storage.entries(1, 4, 0)) == 1  # never empty
    assert len(storage.entries(1, 4, 2 * one)) == 2
    assert len(storage.entries(1, 4, 2 * one + 1)) == 2
    assert len(storage.entries(1, 4, 3 * one)) == 3
    assert limit_size([], 0) == []


def test_memory_storage_create_snapshot_and_compact() -> None:
    storage = storage_with(1, [1, 1, 2, 2, 3])
    conf = ConfState(voters=frozenset({1, 2}))
    snapshot = storage.create_snapshot(3, conf, b"state")
    assert snapshot.metadata == SnapshotMetadata(index=3, term=2, conf_state=conf)
    assert storage.snapshot() is snapshot
    with pytest.raises(SnapshotOutOfDate):
        storage.create_snapshot(3, conf, b"again")
    with pytest.raises(SnapshotOutOfDate):
        storage.create_snapshot(2, conf, b"older")
    storage.compact(3)
    assert storage.first_index() == 4
    assert storage.term(3) == 2
    with pytest.raises(CompactedError):
        storage.term(2)
    with pytest.raises(CompactedError):
        storage.compact(3)
    with pytest.raises(CompactedError):
        storage.compact(2)
    with pytest.raises(AssertionError):
        storage.compact(4)  # beyond the snapshot
    assert storage.initial_state()[1] == conf


def test_memory_storage_apply_snapshot_must_be_newer() -> None:
    storage = MemoryStorage()
    storage.apply_snapshot(snapshot_at(5, 2))
    assert (storage.first_index(), storage.last_index()) == (6, 5)
    with pytest.raises(SnapshotOutOfDate):
        storage.apply_snapshot(snapshot_at(5, 2))
    with pytest.raises(SnapshotOutOfDate):
        storage.apply_snapshot(snapshot_at(4, 2))
    storage.append(entries(6, [2, 3]))
    storage.apply_snapshot(snapshot_at(9, 4))
    assert (storage.first_index(), storage.last_index()) == (10, 9)


def test_memory_storage_append_overwrites_a_conflicting_suffix() -> None:
    storage = storage_with(1, [1, 1, 1, 1])
    storage.append(entries(3, [2, 2, 2]))
    assert [storage.term(i) for i in range(1, 6)] == [1, 1, 2, 2, 2]
    storage.append(entries(2, [3]))
    assert storage.last_index() == 2
    with pytest.raises(AssertionError):
        storage.append(entries(5, [3]))  # a gap


def test_memory_storage_append_skips_compacted_entries() -> None:
    storage = storage_with(4, [3, 4, 5])
    storage.append(entries(1, [1, 2]))  # wholly below the snapshot
    assert storage.last_index() == 6
    storage.append(entries(2, [2, 3, 4, 6]))  # overlaps the snapshot
    assert [storage.term(i) for i in range(3, 6)] == [3, 4, 6]
    assert storage.last_index() == 5


def test_bootstrap_storage() -> None:
    storage = MemoryStorage()
    conf = ConfState(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    bootstrap_storage(storage, conf)
    hard_state, conf_state = storage.initial_state()
    assert hard_state == HardState(term=1, vote=0, commit=1)
    assert conf_state == conf
    assert (storage.first_index(), storage.last_index()) == (2, 1)
    assert storage.term(1) == 1
    with pytest.raises(AssertionError):
        bootstrap_storage(storage, conf)


# -- Unstable ------------------------------------------------------------------


def test_unstable_empty() -> None:
    unstable = Unstable(offset=5)
    assert unstable.maybe_first_index() is None
    assert unstable.maybe_last_index() is None
    assert unstable.maybe_term(4) is None
    assert unstable.maybe_term(5) is None


def test_unstable_entries_and_stable_to() -> None:
    unstable = Unstable(offset=5)
    unstable.truncate_and_append(entries(5, [1, 1, 2]))
    assert unstable.maybe_first_index() is None  # only a snapshot defines it
    assert unstable.maybe_last_index() == 7
    assert [unstable.maybe_term(i) for i in (4, 5, 7, 8)] == [None, 1, 2, None]
    unstable.stable_to(6, 2)  # wrong term: overwritten meanwhile
    assert unstable.offset == 5
    unstable.stable_to(6, 1)
    assert unstable.offset == 7
    assert unstable.entries == entries(7, [2])
    unstable.stable_to(5, 1)  # already stable
    assert unstable.offset == 7
    unstable.stable_to(7, 2)
    assert unstable.entries == [] and unstable.offset == 8


def test_unstable_truncate_and_append() -> None:
    unstable = Unstable(offset=5)
    unstable.truncate_and_append(entries(5, [1, 1, 1]))
    unstable.truncate_and_append(entries(8, [1]))  # directly after: extend
    assert unstable.entries == entries(5, [1, 1, 1, 1])
    unstable.truncate_and_append(entries(7, [2, 2]))  # in the middle: truncate
    assert unstable.entries == entries(5, [1, 1, 2, 2])
    unstable.truncate_and_append(entries(3, [3]))  # before the offset: replace all
    assert unstable.offset == 3
    assert unstable.entries == entries(3, [3])


def test_unstable_snapshot() -> None:
    unstable = Unstable(offset=5)
    unstable.truncate_and_append(entries(5, [1]))
    unstable.restore(snapshot_at(10, 3))
    assert unstable.offset == 11
    assert unstable.entries == []
    assert unstable.maybe_first_index() == 11
    assert unstable.maybe_last_index() == 10
    assert unstable.maybe_term(10) == 3
    assert unstable.maybe_term(9) is None
    unstable.truncate_and_append(entries(11, [3]))
    assert unstable.maybe_last_index() == 11
    unstable.stable_snapshot_to(9)  # not this snapshot
    assert unstable.snapshot is not None
    unstable.stable_snapshot_to(10)
    assert unstable.snapshot is None


def test_unstable_slice_bounds() -> None:
    unstable = Unstable(offset=5)
    unstable.truncate_and_append(entries(5, [1, 1, 1]))
    assert unstable.slice(6, 8) == entries(6, [1, 1])
    with pytest.raises(AssertionError):
        unstable.slice(4, 6)
    with pytest.raises(AssertionError):
        unstable.slice(6, 9)


# -- confchange --------------------------------------------------------------


def conf(voters: set[int], learners: set[int] | None = None) -> ConfState:
    return ConfState(voters=frozenset(voters), learners=frozenset(learners or set()))


@pytest.mark.parametrize(
    ("before", "change", "after"),
    [
        (conf({1}), ConfChange(ConfChangeType.ADD_NODE, 2), conf({1, 2})),
        (conf({1}, {2}), ConfChange(ConfChangeType.ADD_NODE, 2), conf({1, 2})),
        (conf({1}), ConfChange(ConfChangeType.ADD_LEARNER, 2), conf({1}, {2})),
        (conf({1, 2}), ConfChange(ConfChangeType.ADD_LEARNER, 2), conf({1}, {2})),
        (conf({1, 2}, {3}), ConfChange(ConfChangeType.REMOVE_NODE, 2), conf({1}, {3})),
        (conf({1, 2}, {3}), ConfChange(ConfChangeType.REMOVE_NODE, 3), conf({1, 2})),
        (conf({1}), ConfChange(ConfChangeType.REMOVE_NODE, 9), conf({1})),
        (conf({1}), ConfChange(ConfChangeType.ADD_NODE, 1), conf({1})),
    ],
)
def test_apply_change(before: ConfState, change: ConfChange, after: ConfState) -> None:
    assert apply_change(before, change) == after


@pytest.mark.parametrize(
    ("before", "change", "message"),
    [
        (conf({1}), ConfChange(ConfChangeType.ADD_NODE, 0), "reserved"),
        (conf({1}), ConfChange(ConfChangeType.REMOVE_NODE, 1), "last voter"),
        (conf({1}, {2}), ConfChange(ConfChangeType.ADD_LEARNER, 1), "last voter"),
    ],
)
def test_apply_change_refusals(before: ConfState, change: ConfChange, message: str) -> None:
    with pytest.raises(ConfChangeInvalid, match=message):
        apply_change(before, change)


def test_check_invariants_refuses_two_voter_changes() -> None:
    with pytest.raises(ConfChangeInvalid, match="more than one voter"):
        check_invariants(conf({1, 2, 3}), conf({1, 2, 3, 4, 5}))
    with pytest.raises(ConfChangeInvalid, match="more than one voter"):
        check_invariants(conf({1, 2, 3}), conf({1, 4, 3}))  # a swap changes two
    check_invariants(conf({1, 2, 3}), conf({1, 2, 3, 4}))


conf_states = st.builds(
    lambda voters, learners: conf(set(voters), set(learners) - set(voters)),
    st.sets(st.integers(1, 6), min_size=1, max_size=5),
    st.sets(st.integers(1, 6), max_size=3),
)
changes = st.builds(ConfChange, st.sampled_from(list(ConfChangeType)), st.integers(0, 7))


@given(conf_states, changes)
def test_apply_change_invariants(before: ConfState, change: ConfChange) -> None:
    """Any accepted change touches only its node, changes at most one voter, leaves a
    voter, and puts the node exactly where its type says."""
    try:
        after = apply_change(before, change)
    except ConfChangeInvalid:
        only_voter = before.voters == {change.node_id}
        removes_last = change.type is not ConfChangeType.ADD_NODE and only_voter
        assert change.node_id == 0 or removes_last
        return
    node = change.node_id
    assert after.voters and not (after.voters & after.learners)
    assert len(before.voters ^ after.voters) <= 1
    others = (before.voters | before.learners | after.voters | after.learners) - {node}
    for other in others:
        assert (other in before.voters) == (other in after.voters)
        assert (other in before.learners) == (other in after.learners)
    if change.type is ConfChangeType.ADD_NODE:
        assert node in after.voters
    elif change.type is ConfChangeType.ADD_LEARNER:
        assert node in after.learners
    else:
        assert node not in after.voters | after.learners


# -- ConfChange encoding ---------------------------------------------------------


@given(
    st.sampled_from(list(ConfChangeType)),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=64),
)
def test_conf_change_round_trip(type_: ConfChangeType, node: int, context: bytes) -> None:
    change = ConfChange(type_, node, context)
    assert ConfChange.decode(change.encode()) == change


def test_conf_change_decode_errors() -> None:
    with pytest.raises(ValueError, match="too short"):
        ConfChange.decode(b"\x00" * 8)
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x07" + b"\x00" * 8)  # no such type


# -- RaftConfig.validate -------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": 0}, "id: 0 is reserved"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks must be greater than 0"),
        ({"election_ticks": 1, "heartbeat_ticks": 1}, "election_ticks must be greater than"),
        ({"applied": -1}, "applied must not be negative"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs must be greater than 0"),
        (
            {"max_inflight_bytes": 10, "max_size_per_msg_bytes": 11},
            "max_inflight_bytes must be >= max_size_per_msg_bytes",
        ),
        ({"max_uncommitted_entries_bytes": 0}, "max_uncommitted_entries_bytes must be"),
        ({"max_committed_size_per_ready_bytes": 0}, "max_committed_size_per_ready_bytes must"),
        ({"max_pending_read_index": 0}, "max_pending_read_index must be greater than 0"),
    ],
)
def test_config_validate(overrides: dict[str, int], message: str) -> None:
    settings: dict[str, int] = {"id": 1, **overrides}
    config = RaftConfig(**settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigInvalid, match=message):
        config.validate()
    with pytest.raises(ConfigInvalid, match=message):
        RawNode(config, MemoryStorage())


def test_config_defaults_are_valid() -> None:
    RaftConfig(id=1).validate()


# -- RawNode -------------------------------------------------------------------


def single_node(node_id: int = 1, voters: frozenset[int] = frozenset({1})) -> RawNode:
    storage = MemoryStorage()
    bootstrap_storage(storage, ConfState(voters=voters))
    return RawNode(RaftConfig(id=node_id, rng=random.Random(node_id)), storage)


@pytest.mark.parametrize("type_", [MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM])
def test_step_refuses_local_messages(type_: MessageType) -> None:
    rawnode = single_node()
    with pytest.raises(StepLocalMessage):
        rawnode.step(Message(type_, to=1, frm=1))


def test_step_refuses_responses_from_unknown_nodes_at_a_leader() -> None:
    rawnode = single_node()
    rawnode.campaign()
    assert rawnode.status().lead == 1
    with pytest.raises(StepPeerNotFound):
        rawnode.step(Message(MessageType.APP_RESP, to=1, frm=9, term=2, index=2))


def test_ready_must_be_advanced_before_the_next() -> None:
    rawnode = single_node()
    rawnode.campaign()
    ready = rawnode.ready()
    with pytest.raises(AssertionError):
        rawnode.ready()
    with pytest.raises(AssertionError):
        rawnode.has_ready()
    with pytest.raises(AssertionError):
        rawnode.advance(ready.__class__())
    rawnode.advance(ready)


def test_read_index_context_is_bounded() -> None:
    rawnode = single_node()
    with pytest.raises(ReadIndexDropped):
        rawnode.read_index(b"")
    with pytest.raises(ReadIndexDropped):
        rawnode.read_index(b"x" * (limits.RAFT_MAX_READ_CONTEXT_BYTES + 1))


def test_propose_batch_bounds() -> None:
    rawnode = single_node()
    rawnode.propose_batch([])  # nothing to do, even without a leader
    with pytest.raises(ProposalDropped, match="per-proposal limit"):
        rawnode.propose_batch([b"x"] * (limits.RAFT_MAX_ENTRIES_PER_PROPOSAL + 1))


def test_must_sync() -> None:
    rawnode = single_node(voters=frozenset({1, 2}))
    rawnode.tick()
    assert not rawnode.has_ready()
    rawnode.campaign()  # pre-vote: no term or vote change yet, only messages
    ready = rawnode.ready()
    assert ready.messages and not ready.must_sync
    rawnode.advance(ready)


def _persist_and_advance(rawnode: RawNode, storage: MemoryStorage) -> Ready:
    ready = rawnode.ready()
    storage.append(ready.entries)
    if ready.hard_state is not None:
        storage.set_hard_state(ready.hard_state)
    rawnode.advance(ready)
    return ready


def test_must_sync_follows_entries_term_and_vote_not_the_commit_index() -> None:
    storage = MemoryStorage()
    bootstrap_storage(storage, ConfState(voters=frozenset({1})))
    rawnode = RawNode(RaftConfig(id=1, rng=random.Random(1)), storage)
    rawnode.campaign()
    elected = _persist_and_advance(rawnode, storage)  # new term and vote, the empty entry
    assert elected.hard_state is not None and elected.must_sync
    while rawnode.has_ready():
        _persist_and_advance(rawnode, storage)
    rawnode.propose(b"x")
    appended = _persist_and_advance(rawnode, storage)
    assert appended.entries and appended.must_sync
    committed = _persist_and_advance(rawnode, storage)  # the leader's own ack commits it
    assert committed.hard_state is not None
    assert committed.hard_state.commit == appended.entries[-1].index
    assert [e.data for e in committed.committed_entries] == [b"x"]
    assert not committed.entries and not committed.must_sync
