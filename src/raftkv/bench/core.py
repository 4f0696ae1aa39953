"""Throughput of the pure consensus core: ``python -m raftkv.bench.core``.

Three ``RawNode``s over ``MemoryStorage`` in one process, with no I/O, no
ticks and a lossless in-order network. Node 1 is elected, then the leader is
fed batches of fixed-size proposals (``propose_batch``) while every node's
Readies are handled exactly as the contract in ``raftkv.raft.rawnode`` says:
persist (snapshot, entries, hard state) into the node's MemoryStorage, send
``messages`` and ``persisted_messages``, apply ``committed_entries``, then
``advance``. At most ``--pipeline`` batches are proposed and not yet applied
on the leader, so the leader's uncommitted-bytes bound is never hit, and each
storage is compacted periodically (snapshot at applied, minus a catch-up
margin) so memory stays bounded, as a server would.

The figure reported is entries committed *and applied on all three nodes*
per wall-clock second (``time.perf_counter``), election excluded.

This is a benchmark, not a test: it asserts only what it needs to be
meaningful (no leader change, every node applied every entry).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from raftkv import limits
from raftkv.argtypes import bounded_int
from raftkv.raft import (
    ConfState,
    MemoryStorage,
    Message,
    RaftConfig,
    RawNode,
    StateType,
    bootstrap_storage,
)

NODE_IDS: tuple[int, ...] = (1, 2, 3)
LEADER_ID = 1

DEFAULT_ENTRIES = 200_000
DEFAULT_BATCH = 256
DEFAULT_PAYLOAD_BYTES = 128
DEFAULT_PIPELINE = 8
DEFAULT_COMPACT_EVERY = 50_000
# Entries kept below the applied index at compaction, so a follower that lags
# a little is caught up from the log rather than with a snapshot (etcd keeps
# 5,000 for the same reason).
DEFAULT_CATCH_UP_ENTRIES = 5_000
DEFAULT_RUNS = 1

MAX_ENTRIES = 100_000_000
MAX_PAYLOAD_BYTES = limits.RAFT_MAX_SIZE_PER_MSG_BYTES
MAX_PIPELINE = limits.RAFT_MAX_INFLIGHT_MSGS
MAX_RUNS = 100
# Ready rounds allowed for the election before the benchmark gives up.
MAX_ELECTION_ROUNDS = 100
# Ready rounds allowed without any node applying anything.
MAX_IDLE_ROUNDS = 1_000


@dataclass(frozen=True, slots=True)
class BenchConfig:
    entries: int
    batch: int
    payload_bytes: int
    pipeline: int
    compact_every: int
    catch_up_entries: int


@dataclass(frozen=True, slots=True)
class BenchResult:
    entries: int
    seconds: float
    readies: int
    messages: int
    compactions: int

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


class Cluster:
    """Three RawNodes, their storages, and a synchronous in-order network."""

    def __init__(self) -> None:
        conf_state = ConfState(voters=frozenset(NODE_IDS))
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        for node_id in NODE_IDS:
            storage = MemoryStorage()
            bootstrap_storage(storage, conf_state)
            config = RaftConfig(id=node_id, rng=random.Random(node_id))
            self.storages[node_id] = storage
            self.nodes[node_id] = RawNode(config, storage)
        self.conf_state = conf_state
        # Payload entries (non-empty data) applied by each node.
        self.applied_payloads: dict[int, int] = dict.fromkeys(NODE_IDS, 0)
        self.readies = 0
        self.messages = 0

    def pump(self) -> bool:
        """Handle one Ready per node, then deliver what they sent. False if all were idle."""
        outbox: list[Message] = []
        busy = False
        for node_id, node in self.nodes.items():
            if not node.has_ready():
                continue
            busy = True
            ready = node.ready()
            storage = self.storages[node_id]
            # 1. Persist: snapshot, then entries, then hard state.
            if ready.snapshot is not None:
                storage.apply_snapshot(ready.snapshot)
            if ready.entries:
                storage.append(ready.entries)
            if ready.hard_state is not None:
                storage.set_hard_state(ready.hard_state)
            # 2 and 3. Send; persisted_messages only now that step 1 is "durable".
            outbox.extend(ready.messages)
            outbox.extend(ready.persisted_messages)
            # 4. Apply.
            applied = 0
            for entry in ready.committed_entries:
                if entry.data:
                    applied += 1
            self.applied_payloads[node_id] += applied
            # 5. Advance.
            node.advance(ready)
            self.readies += 1
        nodes = self.nodes
        for message in outbox:
            nodes[message.to].step(message)
        self.messages += len(outbox)
        return busy

    def settle(self, max_rounds: int) -> None:
        for _ in range(max_rounds):
            if not self.pump():
                return
        raise RuntimeError(f"cluster did not settle within {max_rounds} rounds")

    def elect(self, leader_id: int) -> None:
        self.nodes[leader_id].campaign()
        self.settle(MAX_ELECTION_ROUNDS)
        leader = self.nodes[leader_id].raft
        if leader.state is not StateType.LEADER:
            raise RuntimeError(f"node {leader_id} did not become leader ({leader.state})")
        for node in self.nodes.values():
            # The leader's empty entry of its term is committed and applied everywhere.
            assert node.raft.log.applied == leader.log.last_index(), node.status()

    def compact(self, catch_up_entries: int) -> int:
        """Snapshot and compact each storage below its applied index; returns how many did."""
        compacted = 0
        for node_id, node in self.nodes.items():
            storage = self.storages[node_id]
            index = node.raft.log.applied - catch_up_entries
            if index <= storage.snapshot().metadata.index:
                continue
            storage.create_snapshot(index, self.conf_state, b"")
            storage.compact(index)
            compacted += 1
        return compacted


def run(config: BenchConfig) -> BenchResult:
    cluster = Cluster()
    cluster.elect(LEADER_ID)
    leader = cluster.nodes[LEADER_ID]
    term = leader.raft.term
    applied = cluster.applied_payloads
    payload = b"x" * config.payload_bytes
    window = config.pipeline * config.batch
    total = config.entries
    proposed = 0
    next_compaction = config.compact_every
    compactions = 0
    idle_rounds = 0
    readies_before = cluster.readies
    messages_before = cluster.messages

    start = time.perf_counter()
    while min(applied.values()) < total:
        while proposed < total and proposed - applied[LEADER_ID] < window:
            count = min(config.batch, total - proposed)
            leader.propose_batch([payload] * count)
            proposed += count
        before = sum(applied.values())
        cluster.pump()
        if sum(applied.values()) == before:
            idle_rounds += 1
            if idle_rounds > MAX_IDLE_ROUNDS:
                raise RuntimeError(f"no progress in {MAX_IDLE_ROUNDS} rounds: {applied}")
        else:
            idle_rounds = 0
        if applied[LEADER_ID] >= next_compaction:
            compactions += cluster.compact(config.catch_up_entries)
            next_compaction += config.compact_every
    seconds = time.perf_counter() - start

    leader_raft = leader.raft
    if leader_raft.state is not StateType.LEADER or leader_raft.term != term:
        raise RuntimeError("leadership changed during the benchmark")
    last = leader_raft.log.applied
    for node_id, node in cluster.nodes.items():
        assert applied[node_id] == total, (node_id, applied[node_id], total)
        assert node.raft.log.applied == last, (node_id, node.raft.log.applied, last)
    return BenchResult(
        entries=total,
        seconds=seconds,
        readies=cluster.readies - readies_before,
        messages=cluster.messages - messages_before,
        compactions=compactions,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.bench.core",
        description=(
            "Throughput of the pure Raft core: a 3-node in-memory cluster with no I/O "
            "commits batched proposals; reports entries committed and applied on all "
            "three nodes per second."
        ),
    )
    parser.add_argument(
        "--entries",
        type=bounded_int("entries", 1, MAX_ENTRIES),
        default=DEFAULT_ENTRIES,
        help=f"entries to commit (default {DEFAULT_ENTRIES})",
    )
    parser.add_argument(
        "--batch",
        type=bounded_int("batch", 1, limits.RAFT_MAX_ENTRIES_PER_PROPOSAL),
        default=DEFAULT_BATCH,
        help=f"entries per propose_batch call (default {DEFAULT_BATCH})",
    )
    parser.add_argument(
        "--payload-bytes",
        type=bounded_int("payload-bytes", 1, MAX_PAYLOAD_BYTES),
        default=DEFAULT_PAYLOAD_BYTES,
        help=f"bytes of data per entry (default {DEFAULT_PAYLOAD_BYTES})",
    )
    parser.add_argument(
        "--pipeline",
        type=bounded_int("pipeline", 1, MAX_PIPELINE),
        default=DEFAULT_PIPELINE,
        help=f"batches proposed and not yet applied on the leader (default {DEFAULT_PIPELINE})",
    )
    parser.add_argument(
        "--compact-every",
        type=bounded_int("compact-every", 1, MAX_ENTRIES),
        default=DEFAULT_COMPACT_EVERY,
        help=f"snapshot and compact storages every N applied entries "
        f"(default {DEFAULT_COMPACT_EVERY})",
    )
    parser.add_argument(
        "--catch-up-entries",
        type=bounded_int("catch-up-entries", 0, MAX_ENTRIES),
        default=DEFAULT_CATCH_UP_ENTRIES,
        help=f"entries kept below applied at compaction (default {DEFAULT_CATCH_UP_ENTRIES})",
    )
    parser.add_argument(
        "--runs",
        type=bounded_int("runs", 1, MAX_RUNS),
        default=DEFAULT_RUNS,
        help=f"repeat on a fresh cluster and report the median (default {DEFAULT_RUNS})",
    )
    return parser


def _python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = BenchConfig(
        entries=int(args.entries),
        batch=int(args.batch),
        payload_bytes=int(args.payload_bytes),
        pipeline=int(args.pipeline),
        compact_every=int(args.compact_every),
        catch_up_entries=int(args.catch_up_entries),
    )
    runs = int(args.runs)
    print("raftkv consensus core: 3 nodes, MemoryStorage, no I/O, one process")
    print(
        f"batch={config.batch} payload_bytes={config.payload_bytes} "
        f"pipeline={config.pipeline} compact_every={config.compact_every}"
    )
    rates: list[float] = []
    for number in range(1, runs + 1):
        result = run(config)
        rates.append(result.entries_per_second)
        print(
            f"run {number}: entries={result.entries} seconds={result.seconds:.3f} "
            f"entries/s={result.entries_per_second:,.0f} "
            f"(readies={result.readies} messages={result.messages} "
            f"compactions={result.compactions})"
        )
    print(f"entries:   {config.entries}")
    if runs == 1:
        print(f"seconds:   {config.entries / rates[0]:.3f}")
        print(f"entries/s: {rates[0]:,.0f} (committed and applied on all 3 nodes)")
    else:
        median = statistics.median(rates)
        print(f"seconds:   {config.entries / median:.3f} (median run)")
        print(
            f"entries/s: {median:,.0f} median of {runs} runs "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f}; committed and applied on all 3 nodes)"
        )
    print(f"python:    {_python_version()} ({sys.platform})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
