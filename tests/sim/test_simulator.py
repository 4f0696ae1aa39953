"""The deterministic simulator: seeds pass, runs replay exactly, and injected bugs are caught."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raftkv.raft.messages import Message
from raftkv.raft.raft import Raft
from raftkv.sim.vopr import (
    EXIT_CORRECTNESS,
    EXIT_LIVENESS,
    EXIT_OK,
    SimResult,
    run_cli,
    run_seed,
    run_seeds,
)

CI_SEEDS = 300
CHUNK = 50


@pytest.mark.parametrize("first_seed", range(1, CI_SEEDS + 1, CHUNK))
def test_seeds_pass(first_seed: int) -> None:
    """Mixed cluster sizes and faults, all derived from the seed; zero violations."""
    failures, stats = run_seeds(first_seed, CHUNK)
    messages = [f"seed {f.seed}: {f.message.splitlines()[0]}" for f in failures]
    assert not failures, "\n".join(messages)
    # The run must actually exercise the faults and checks it claims to.
    assert stats.writes_acked > 0 and stats.invariant_checks > 0
    assert stats.crashes > 0 and stats.partitions > 0 and stats.messages_dropped > 0


@pytest.mark.parametrize("nodes", [1, 2, 7])
def test_extreme_cluster_sizes(nodes: int) -> None:
    failures, stats = run_seeds(1000, 10, nodes=nodes)
    assert not failures, [f.message.splitlines()[0] for f in failures]
    assert stats.writes_acked > 0


def test_same_seed_gives_identical_trace() -> None:
    for seed in (3, 17, 42):
        first = run_seed(seed)
        second = run_seed(seed)
        assert first.ok and second.ok
        assert first.trace_digest == second.trace_digest
        assert first.stats == second.stats


def test_different_seeds_give_different_runs() -> None:
    digests = {run_seed(seed).trace_digest for seed in range(1, 6)}
    assert len(digests) == 5


def first_failure(max_seeds: int = 300) -> Iterator[SimResult]:
    for seed in range(1, max_seeds + 1):
        result = run_seed(seed)
        if not result.ok:
            yield result
            return


def test_vote_twice_in_a_term_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: a node forgets it already voted this term."""

    def vote_for_anyone_up_to_date(self: Raft, m: Message) -> bool:
        return self.log.is_up_to_date(m.index, m.log_term)

    monkeypatch.setattr(Raft, "can_grant_vote", vote_for_anyone_up_to_date)
    failures = list(first_failure())
    assert failures, "the simulator missed a node voting twice in one term"
    assert failures[0].exit_code == EXIT_CORRECTNESS
    assert "two leaders in term" in failures[0].message


def test_read_index_without_quorum_check_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: the leader answers ReadIndex without confirming it is still leader."""

    def answer_at_once(self: Raft, m: Message) -> None:
        self.respond_to_read_index(m, self.log.committed)

    monkeypatch.setattr(Raft, "start_read_index", answer_at_once)
    failures = list(first_failure())
    assert failures, "the simulator missed a stale ReadIndex read"
    assert failures[0].exit_code == EXIT_CORRECTNESS
    assert "stale" in failures[0].message


def test_leader_acking_before_persisting_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: the leader counts its own entries before they are durable."""
    original = Raft.append_entries

    def append_and_ack(self: Raft, entries: list) -> bool:  # type: ignore[type-arg]
        appended = original(self, entries)
        if appended and self.id in self.tracker.progress:
            self.tracker.progress[self.id].maybe_update(self.log.last_index())
        return appended

    monkeypatch.setattr(Raft, "append_entries", append_and_ack)
    failures = list(first_failure())
    assert failures, "the simulator missed a leader acknowledging before fsync"
    assert failures[0].exit_code in (EXIT_CORRECTNESS, EXIT_LIVENESS)


def test_failure_prints_replay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def vote_for_anyone_up_to_date(self: Raft, m: Message) -> bool:
        return self.log.is_up_to_date(m.index, m.log_term)

    monkeypatch.setattr(Raft, "can_grant_vote", vote_for_anyone_up_to_date)
    failing_seed = next(first_failure()).seed
    exit_code = run_cli(seeds=None, seed=failing_seed, nodes=None, ticks=None, verbose=False)
    assert exit_code == EXIT_CORRECTNESS
    assert f"replay: raftkv sim --seed {failing_seed}" in capsys.readouterr().out


def test_cli_replays_a_passing_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(seeds=None, seed=5, nodes=3, ticks=100, verbose=False) == EXIT_OK
    out = capsys.readouterr().out
    assert "seed 5 passed" in out and "trace digest" in out
