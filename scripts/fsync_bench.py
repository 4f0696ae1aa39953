"""fdatasync after an append, four ways: a growing file, and three kinds of preallocation.

    python scripts/fsync_bench.py DIR [--appends 2000] [--rounds 2]

Each way appends 200-byte records to a new file in DIR, one fdatasync per append, and
prints the p50 and p90 of the fdatasync alone (docs/performance.md, change 9):

- grow: each append extends the file (what the WAL did before change 9);
- keep_size: fallocate(FALLOC_FL_KEEP_SIZE) reserves 64 MiB of blocks, the length grows;
- full: posix_fallocate sets the length to 64 MiB, appends are pwrites inside it;
- zeros: 64 MiB of zeros written and synced first, appends are pwrites inside them.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

PREALLOCATED_BYTES = 64 * 1024 * 1024
RECORD = b"x" * 200
FALLOC_FL_KEEP_SIZE = 1
MODES = ("grow", "keep_size", "full", "zeros")


def _fallocate_keep_size(fd: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, length) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def _prepare(fd: int, mode: str) -> None:
    if mode == "keep_size":
        _fallocate_keep_size(fd, PREALLOCATED_BYTES)
    elif mode == "full":
        os.posix_fallocate(fd, 0, PREALLOCATED_BYTES)
    elif mode == "zeros":
        chunk = bytes(1024 * 1024)
        for offset in range(0, PREALLOCATED_BYTES, len(chunk)):
            os.pwrite(fd, chunk, offset)
    os.fsync(fd)


def measure(directory: str, mode: str, appends: int) -> tuple[float, float]:
    """(p50, p90) of the fdatasync after each append, in microseconds."""
    path = os.path.join(directory, f"fsync-bench-{mode}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _prepare(fd, mode)
        took_ns = []
        for number in range(appends):
            os.pwrite(fd, RECORD, number * len(RECORD))
            started = time.perf_counter_ns()
            os.fdatasync(fd)
            took_ns.append(time.perf_counter_ns() - started)
    finally:
        os.close(fd)
        os.remove(path)
    took_ns.sort()
    return took_ns[len(took_ns) // 2] / 1000, took_ns[len(took_ns) * 9 // 10] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for mode in MODES:
            p50_us, p90_us = measure(args.directory, mode, args.appends)
            print(f"{mode:10} fdatasync p50 {p50_us:5.0f} us  p90 {p90_us:5.0f} us", flush=True)


if __name__ == "__main__":
    main()
