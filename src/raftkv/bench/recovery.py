"""Benchmark: cold-start recovery of one node's storage (not a test).

It builds a data directory holding ``--keys`` keys in the MVCC store (LMDB)
and a WAL whose last ``--tail`` entries are committed but not yet applied, as
a node killed mid-stream would leave it. It then times a cold start in a fresh
process: open and replay the WAL, open LMDB and rebuild the MVCC index, and
apply the WAL tail. Run: ``python -m raftkv.bench.recovery --keys 1000000 --tail 100000``.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from raftkv.raft.config import RaftConfig
from raftkv.raft.messages import ConfState
from raftkv.raft.rawnode import RawNode
from raftkv.storage.backend import Backend
from raftkv.storage.disk import OsDisk
from raftkv.storage.mvcc import KVStore, PutRequest
from raftkv.storage.raft_storage import RaftPersistence

MAP_SIZE_BYTES = 16 << 30
BATCH = 1000
VALUE = b"v" * 256


def key_of(number: int) -> bytes:
    return f"key/{number:010d}".encode()


def build(data_dir: str, keys: int, tail: int) -> None:
    """Apply `keys` puts through Raft, then append `tail` more that are never applied."""
    persistence = RaftPersistence.bootstrap(
        OsDisk(), os.path.join(data_dir, "raft"), ConfState(voters=frozenset({1}))
    )
    backend = Backend(os.path.join(data_dir, "db"), map_size_bytes=MAP_SIZE_BYTES)
    kv = KVStore(backend)
    node = RawNode(RaftConfig(id=1, rng=random.Random(1)), persistence.storage)
    node.campaign()
    pump(node, persistence, kv, backend, apply=True)
    for start in range(0, keys + tail, BATCH):
        node.propose_batch([key_of(n) for n in range(start, min(start + BATCH, keys + tail))])
        pump(node, persistence, kv, backend, apply=start + BATCH <= keys)
        if start and start % (10 * BATCH) == 0 and start + BATCH <= keys:
            applied = node.raft.log.applied
            persistence.compact(applied, node.raft.tracker.conf_state(), b"", keep_entries=0)
    persistence.close()
    backend.close()


def pump(
    node: RawNode, persistence: RaftPersistence, kv: KVStore, backend: Backend, apply: bool
) -> None:
    while node.has_ready():
        ready = node.ready()
        persistence.persist(ready)
        if apply and ready.committed_entries:
            with backend.write() as batch:
                for entry in ready.committed_entries:
                    if entry.data:
                        kv.put(batch, PutRequest(key=entry.data, value=VALUE))
                last = ready.committed_entries[-1]
                batch.set_consistent_index(last.index, last.term)
        node.advance(ready)


def cold_start(data_dir: str) -> dict[str, float]:
    """What a restarting node does before it can serve; returns seconds per phase."""
    started = time.perf_counter()
    persistence = RaftPersistence.open(OsDisk(), os.path.join(data_dir, "raft"))
    wal_done = time.perf_counter()
    backend = Backend(os.path.join(data_dir, "db"), map_size_bytes=MAP_SIZE_BYTES)
    kv = KVStore(backend)
    index_done = time.perf_counter()
    consistent = backend.consistent_index().index
    # As a server restarts: Raft from its snapshot, the backend skips what it holds.
    snapshot_index = persistence.storage.snapshot().metadata.index
    config = RaftConfig(id=1, applied=snapshot_index, rng=random.Random(1))
    node = RawNode(config, persistence.storage)
    replayed = 0
    while node.has_ready():
        ready = node.ready()
        persistence.persist(ready)
        fresh = [e for e in ready.committed_entries if e.index > consistent and e.data]
        if fresh:
            with backend.write() as batch:
                for entry in fresh:
                    kv.put(batch, PutRequest(key=entry.data, value=VALUE))
                batch.set_consistent_index(fresh[-1].index, fresh[-1].term)
            replayed += len(fresh)
        node.advance(ready)
    tail_done = time.perf_counter()
    return {
        "wal_replay_seconds": wal_done - started,
        "index_rebuild_seconds": index_done - wal_done,
        "tail_apply_seconds": tail_done - index_done,
        "total_seconds": tail_done - started,
        "replayed_entries": float(replayed),
        "revision": float(kv.current_revision),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cold-start recovery benchmark")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=100_000)
    parser.add_argument("--cold-start", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cold_start:
        for name, value in cold_start(args.cold_start).items():
            print(f"{name}: {value:.3f}")
        return 0
    with tempfile.TemporaryDirectory(prefix="raftkv-recovery-") as data_dir:
        started = time.perf_counter()
        build(data_dir, args.keys, args.tail)
        print(
            f"built {args.keys} keys + {args.tail}-entry tail in "
            f"{time.perf_counter() - started:.1f} s"
        )
        # A fresh process, so nothing is warm in this interpreter.
        command = [sys.executable, "-m", "raftkv.bench.recovery", "--cold-start", data_dir]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        print(completed.stdout, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
