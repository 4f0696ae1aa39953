"""Crash test of the storage layer with real processes and SIGKILL.

A writer process runs a one-node Raft over the real WAL and snapshot files,
applies committed entries to the MVCC store on LMDB (the consistent index in
the same commit), and prints an ACK for every write after it is applied. The
runner kills it with SIGKILL at random moments, hundreds of times, and after
every kill opens the store itself and checks:

- every acknowledged write is present, with the revision it was acknowledged at;
- no transaction is half applied (both of its keys, at one revision, or neither);
- nothing was applied twice (every key has version 1: replay is idempotent);
- the revision counts exactly the applied writes (one revision per request);
- the store and the WAL open again without manual repair.

Run it longer locally: ``python -m raftkv.verify.storage_crash --iterations 500``.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from raftkv.raft.config import RaftConfig
from raftkv.raft.messages import ConfState, Entry
from raftkv.raft.rawnode import RawNode
from raftkv.server.apply import Applier
from raftkv.server.requests import encode
from raftkv.storage.alarm import AlarmStore
from raftkv.storage.backend import Backend
from raftkv.storage.disk import OsDisk
from raftkv.storage.errors import RequestError
from raftkv.storage.lease import Lessor
from raftkv.storage.mvcc import (
    KeyValue,
    KVStore,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
    TxnResponse,
)
from raftkv.storage.raft_storage import RaftPersistence

BACKEND_MAP_SIZE_BYTES = 1 << 30
READY_TIMEOUT_SECONDS = 60.0
REQUEST_IDS_PER_INCARNATION = 1 << 40
SNAPSHOT_EVERY_ENTRIES = 500  # compact often, so recovery from a snapshot is exercised too


# --- The writer process ------------------------------------------------------------


class Writer:
    def __init__(self, data_dir: str, incarnation: int, seed: int) -> None:
        disk = OsDisk()
        raft_dir = os.path.join(data_dir, "raft")
        if RaftPersistence.exists(disk, raft_dir):
            self.persistence = RaftPersistence.open(disk, raft_dir)
        else:
            voters = ConfState(voters=frozenset({1}))
            self.persistence = RaftPersistence.bootstrap(disk, raft_dir, voters)
        self.backend = Backend(os.path.join(data_dir, "db"), map_size_bytes=BACKEND_MAP_SIZE_BYTES)
        self.kv = KVStore(self.backend)
        # The server's own apply path: one LMDB batch per Ready, with the
        # consistent index, skipping entries the backend already holds.
        self.applier = Applier(self.backend, self.kv, Lessor(10, 10), AlarmStore(self.backend), 1)
        # Raft restarts from its snapshot, so membership changes after it are
        # re-applied to the core; the Applier skips what the backend already
        # holds (index <= consistent index), which makes the replay idempotent.
        applied = self.persistence.storage.snapshot().metadata.index
        config = RaftConfig(id=1, applied=applied, rng=random.Random(seed))
        self.node = RawNode(config, self.persistence.storage)
        self.incarnation = incarnation
        self.rng = random.Random(seed)
        self.sequence = 0
        # Requests proposed by this incarnation, by request id, to acknowledge.
        self.pending: dict[int, tuple[str, str, str]] = {}

    def run(self) -> None:
        self.node.campaign()
        self.pump()  # replays committed entries the backend has not applied yet
        print(f"READY {self.kv.current_revision}", flush=True)
        while True:
            payloads = [self.next_payload() for _ in range(self.rng.randint(1, 64))]
            self.node.propose_batch(payloads)
            self.pump()

    def next_payload(self) -> bytes:
        self.sequence += 1
        request_id = self.incarnation * REQUEST_IDS_PER_INCARNATION + self.sequence
        name = f"{self.incarnation}-{self.sequence}"
        value = f"v{self.rng.getrandbits(32)}"
        request: PutRequest | TxnRequest
        if self.rng.random() < 0.3:
            kind = "txn"
            request = TxnRequest(
                success=tuple(
                    PutRequest(key=f"{side}/{name}".encode(), value=value.encode())
                    for side in ("a", "b")
                )
            )
        else:
            kind = "put"
            request = PutRequest(key=f"k/{name}".encode(), value=value.encode())
        self.pending[request_id] = (kind, name, value)
        return encode(request_id, request)

    def pump(self) -> None:
        while self.node.has_ready():
            ready = self.node.ready()
            self.persistence.persist(ready)
            acks = self.apply(ready.committed_entries)
            self.node.advance(ready)
            if acks:
                sys.stdout.write("".join(acks))
                sys.stdout.flush()
            self.maybe_compact()

    def apply(self, entries: list[Entry]) -> list[str]:
        acks: list[str] = []
        for request_id, result in self.applier.apply(entries):
            if isinstance(result, RequestError):
                raise result  # no request here may fail: a bug, so crash loudly
            proposed = self.pending.pop(request_id, None)
            if proposed is not None:  # replays of an earlier incarnation were acked then
                assert isinstance(result, PutResponse | TxnResponse), result
                kind, name, value = proposed
                acks.append(f"ACK {kind} {name} {value} {result.revision}\n")
        return acks

    def maybe_compact(self) -> None:
        applied = self.node.raft.log.applied
        snapshot_index = self.persistence.storage.snapshot().metadata.index
        if applied - snapshot_index < SNAPSHOT_EVERY_ENTRIES:
            return
        # The state machine lives in LMDB; the Raft snapshot only marks the index.
        conf_state = self.node.raft.tracker.conf_state()
        self.persistence.compact(applied, conf_state, b"", keep_entries=50)


# --- The runner --------------------------------------------------------------------


@dataclass(slots=True)
class Acked:
    puts: dict[str, tuple[str, int]] = field(default_factory=dict)
    txns: dict[str, tuple[str, int]] = field(default_factory=dict)

    def record(self, line: str) -> None:
        _, kind, name, value, revision = line.split()
        target = self.puts if kind == "put" else self.txns
        target[name] = (value, int(revision))


class CrashTestFailure(AssertionError):
    pass


def check_store(data_dir: str, acked: Acked) -> int:
    """Open the store as a restarted node would and check every property; return revision."""
    backend = Backend(os.path.join(data_dir, "db"), map_size_bytes=BACKEND_MAP_SIZE_BYTES)
    try:
        kv = KVStore(backend)
        everything = kv.range(RangeRequest(key=b"\0", range_end=b"\0"))
        by_key = {kv_.key.decode(): kv_ for kv_ in everything.kvs}
        for name, (value, revision) in acked.puts.items():
            found = by_key.get(f"k/{name}")
            if found is None or found.value.decode() != value or found.mod_revision != revision:
                raise CrashTestFailure(f"acknowledged put {name}={value}@{revision} lost: {found}")
        for name, (value, revision) in acked.txns.items():
            for side in ("a", "b"):
                found = by_key.get(f"{side}/{name}")
                if found is None or found.value.decode() != value or found.mod_revision != revision:
                    raise CrashTestFailure(f"acknowledged txn {name}@{revision} lost: {found}")
        check_atomic_and_once(by_key)
        puts = sum(1 for key in by_key if key.startswith("k/"))
        txns = sum(1 for key in by_key if key.startswith("a/"))
        if kv.current_revision != 1 + puts + txns:
            raise CrashTestFailure(
                f"revision {kv.current_revision} != 1 + {puts} puts + {txns} txns"
            )
        return kv.current_revision
    finally:
        backend.close()


def check_atomic_and_once(by_key: dict[str, KeyValue]) -> None:
    for key, kv in by_key.items():
        if kv.version != 1:
            raise CrashTestFailure(f"{key} applied more than once (version {kv.version})")
        if key.startswith(("a/", "b/")):
            other = by_key.get(("b/" if key.startswith("a/") else "a/") + key[2:])
            if other is None or other.mod_revision != kv.mod_revision:
                raise CrashTestFailure(f"half-applied txn: {key} without its pair")


def start_writer(data_dir: str, incarnation: int, seed: int) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "raftkv.verify.storage_crash",
        "--writer",
        data_dir,
        "--incarnation",
        str(incarnation),
        "--seed",
        str(seed),
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )


def read_lines_until(
    process: subprocess.Popen[str], deadline: float, acked: Acked, stop_at_ready: bool = False
) -> bool:
    """Collect ACK lines until deadline (or READY); True once READY was seen."""
    assert process.stdout is not None
    ready = False
    while time.monotonic() < deadline:
        timeout = max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([process.stdout], [], [], timeout)
        if not readable:
            break
        line = process.stdout.readline()
        if not line:
            break  # the process exited
        if line.startswith("READY"):
            ready = True
            if stop_at_ready:
                break
        elif line.startswith("ACK"):
            acked.record(line)
    return ready


def run_incarnation(data_dir: str, incarnation: int, rng: random.Random, acked: Acked) -> None:
    process = start_writer(data_dir, incarnation, rng.getrandbits(32))
    try:
        # Wait for READY: the store opened (and replayed) without manual repair.
        ready_deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        if not read_lines_until(process, ready_deadline, acked, stop_at_ready=True):
            process.kill()
            _, stderr = process.communicate()
            raise CrashTestFailure(f"writer {incarnation} did not start:\n{stderr}")
        read_lines_until(process, time.monotonic() + rng.uniform(0.0, 0.3), acked)
        process.send_signal(signal.SIGKILL)
        # Lines written before the kill were acknowledged; collect them all.
        stdout, stderr = process.communicate()
        for line in stdout.splitlines():
            if line.startswith("ACK"):
                acked.record(line)
        if process.returncode != -signal.SIGKILL:
            raise CrashTestFailure(f"writer {incarnation} exited {process.returncode}:\n{stderr}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run(iterations: int, seed: int, data_dir: str | None = None, verbose: bool = False) -> Acked:
    rng = random.Random(seed)
    acked = Acked()
    with tempfile.TemporaryDirectory(prefix="raftkv-crash-") as scratch:
        directory = data_dir or scratch
        for incarnation in range(1, iterations + 1):
            run_incarnation(directory, incarnation, rng, acked)
            revision = check_store(directory, acked)
            if verbose:
                print(
                    f"kill {incarnation}/{iterations}: revision {revision}, "
                    f"{len(acked.puts)} puts and {len(acked.txns)} txns acknowledged, all present",
                    flush=True,
                )
    return acked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--writer", metavar="DATA_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--incarnation", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        Writer(args.writer, args.incarnation, args.seed).run()
        return 0
    try:
        acked = run(args.iterations, args.seed, args.data_dir, verbose=True)
    except CrashTestFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        print(f"replay: python -m raftkv.verify.storage_crash --seed {args.seed}", file=sys.stderr)
        return 1
    print(
        f"storage crash test: {args.iterations} kills, {len(acked.puts)} puts and "
        f"{len(acked.txns)} txns acknowledged, none lost, none half applied, none applied twice"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
