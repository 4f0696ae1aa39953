"""The MVCC store on LMDB: ``python -m raftkv.bench.mvcc``.

Three measurements, each on the real ``KVStore`` over a real ``Backend``:

1. **Put apply throughput.** ``--puts`` puts of ``--key-bytes`` keys (a
   big-endian counter, like etcd's ``benchmark put --sequential-keys``) and
   ``--value-bytes`` values into an empty store, ``--batch`` puts per write
   batch, each batch one LMDB commit with the consistent index, as the
   server's apply loop does. With ``--sync`` (default) every commit is
   fsynced.
2. **Load and restart.** ``--range-keys`` keys are loaded the same way into a
   second store (time and RSS reported), then the backend is closed and
   reopened: the index is rebuilt from DB_KEY (time and RSS reported).
3. **Point Range latency.** ``--range-samples`` Range requests for single
   keys picked at random (seeded) among the loaded ones, each timed alone.

RSS is split into anonymous memory (the Python heap: mostly the index) and
file-backed memory (LMDB's memory map; pages the OS may drop at will).

This is a benchmark, not a test: it asserts only what makes the figures
meaningful (every put applied, every read found its key).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from raftkv.argtypes import bounded_int
from raftkv.storage.backend import Backend
from raftkv.storage.mvcc import KVStore, PutRequest, RangeRequest

DEFAULT_PUTS = 100_000
DEFAULT_BATCH = 1_000
DEFAULT_KEY_BYTES = 8
DEFAULT_VALUE_BYTES = 256
DEFAULT_RANGE_KEYS = 1_000_000
DEFAULT_RANGE_SAMPLES = 100_000
DEFAULT_SEED = 1

MAX_PUTS = 100_000_000
MAX_BATCH = 1_000_000
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_SAMPLES = 100_000_000
# Keys are a big-endian counter, so the key size bounds how many there can be.
MIN_KEY_BYTES = 4


@dataclass(frozen=True, slots=True)
class BenchConfig:
    puts: int
    batch: int
    key_bytes: int
    value_bytes: int
    range_keys: int
    range_samples: int
    sync: bool
    seed: int


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident set, in bytes, from /proc/self/status."""

    anonymous: int
    file: int

    @classmethod
    def now(cls) -> Memory:
        fields: dict[str, int] = {}
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in ("RssAnon", "RssFile"):
                    fields[name] = int(rest.split()[0]) * 1024
        return cls(fields.get("RssAnon", 0), fields.get("RssFile", 0))

    def describe(self) -> str:
        mib = 1024 * 1024
        total = (self.anonymous + self.file) / mib
        anonymous, file = self.anonymous / mib, self.file / mib
        return f"RSS {total:,.0f} MiB (anonymous {anonymous:,.0f}, file {file:,.0f})"


def _key(number: int, key_bytes: int) -> bytes:
    return number.to_bytes(key_bytes, "big")


def load(store: KVStore, backend: Backend, config: BenchConfig, count: int) -> float:
    """Put ``count`` keys, ``config.batch`` per commit; returns the seconds taken."""
    value = random.Random(config.seed).randbytes(config.value_bytes)
    applied = 0
    start = time.perf_counter()
    while applied < count:
        batch_end = min(applied + config.batch, count)
        with backend.write() as batch:
            for number in range(applied, batch_end):
                store.put(batch, PutRequest(_key(number, config.key_bytes), value))
            # The apply loop records which Raft entry the batch reflects.
            batch.set_consistent_index(batch_end, 1)
        applied = batch_end
    seconds = time.perf_counter() - start
    assert store.current_revision == 1 + count, (store.current_revision, count)
    return seconds


def range_latencies_ns(store: KVStore, config: BenchConfig) -> list[int]:
    rng = random.Random(config.seed)
    keys = [
        _key(rng.randrange(config.range_keys), config.key_bytes)
        for _ in range(config.range_samples)
    ]
    timer = time.perf_counter_ns
    latencies: list[int] = []
    for key in keys:
        start = timer()
        response = store.range(RangeRequest(key))
        latencies.append(timer() - start)
        assert response.count == 1, key
    return latencies


def _percentile(sorted_values: list[int], fraction: float) -> int:
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


def _open(directory: str, sync: bool) -> tuple[Backend, KVStore]:
    backend = Backend(directory, sync=sync)
    return backend, KVStore(backend)


def bench_puts(root: str, config: BenchConfig) -> None:
    backend, store = _open(os.path.join(root, "puts"), config.sync)
    seconds = load(store, backend, config, config.puts)
    backend.close()
    print(
        f"put apply: {config.puts:,} puts in {seconds:.2f} s = {config.puts / seconds:,.0f} puts/s "
        f"({config.puts // config.batch} commits of {config.batch}, sync={config.sync})"
    )


def bench_ranges(root: str, config: BenchConfig) -> None:
    directory = os.path.join(root, "ranges")
    backend, store = _open(directory, config.sync)
    seconds = load(store, backend, config, config.range_keys)
    print(f"load: {config.range_keys:,} keys in {seconds:.1f} s; {Memory.now().describe()}")
    backend.close()
    del store
    start = time.perf_counter()
    backend, store = _open(directory, config.sync)
    restart = time.perf_counter() - start
    print(f"restart: index rebuilt in {restart:.1f} s; {Memory.now().describe()}")
    latencies = sorted(range_latencies_ns(store, config))
    backend.close()
    print(
        f"point range ({config.range_samples:,} random keys of {config.range_keys:,}): "
        f"p50 {_percentile(latencies, 0.50) / 1000:.1f} us, "
        f"p99 {_percentile(latencies, 0.99) / 1000:.1f} us, "
        f"mean {statistics.fmean(latencies) / 1000:.1f} us"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.bench.mvcc",
        description="Batched put apply throughput and point Range latency of the MVCC store.",
    )

    def add(name: str, lo: int, hi: int, default: int, text: str) -> None:
        parser.add_argument(
            f"--{name}",
            type=bounded_int(name, lo, hi),
            default=default,
            help=f"{text} (default {default})",
        )

    add("puts", 1, MAX_PUTS, DEFAULT_PUTS, "puts for the throughput run")
    add("batch", 1, MAX_BATCH, DEFAULT_BATCH, "puts per write batch (one LMDB commit)")
    add("key-bytes", MIN_KEY_BYTES, MAX_KEY_BYTES, DEFAULT_KEY_BYTES, "key size")
    add("value-bytes", 0, MAX_VALUE_BYTES, DEFAULT_VALUE_BYTES, "value size")
    add("range-keys", 1, MAX_PUTS, DEFAULT_RANGE_KEYS, "keys loaded for the range run")
    add("range-samples", 1, MAX_SAMPLES, DEFAULT_RANGE_SAMPLES, "point ranges timed")
    add("seed", 0, 2**32, DEFAULT_SEED, "seed for the value bytes and the keys read")
    parser.add_argument(
        "--sync",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fsync every commit (default on, as the server does)",
    )
    parser.add_argument("--dir", default=None, help="work directory (default: a new temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = BenchConfig(
        puts=int(args.puts),
        batch=int(args.batch),
        key_bytes=int(args.key_bytes),
        value_bytes=int(args.value_bytes),
        range_keys=int(args.range_keys),
        range_samples=int(args.range_samples),
        sync=bool(args.sync),
        seed=int(args.seed),
    )
    assert max(config.puts, config.range_keys) < 256**config.key_bytes, "keys do not fit"
    root = tempfile.mkdtemp(prefix="raftkv-bench-mvcc-", dir=args.dir)
    print(
        f"raftkv MVCC on LMDB: key_bytes={config.key_bytes} value_bytes={config.value_bytes} "
        f"batch={config.batch} sync={config.sync} dir={root}"
    )
    try:
        bench_puts(root, config)
        bench_ranges(root, config)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"python: {platform.python_implementation()} {platform.python_version()} ({sys.platform})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
