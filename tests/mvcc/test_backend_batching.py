"""Backend(batch_commits=True): write batches go into one open LMDB transaction, which is
committed to disk only when due. The MVCC tests run on it too (conftest); these check the
batching itself."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from raftkv.storage.backend import DB_META, Backend

KEY = b"probe"


def put(backend: Backend, value: bytes, index: int) -> None:
    with backend.write() as batch:
        batch.put(DB_META, KEY, value)
        batch.set_consistent_index(index, 1)


def on_disk(backend: Backend) -> bytes | None:
    """What a fresh read transaction sees: only what was committed to the file."""
    with backend.env.begin(write=False) as txn:
        value = txn.get(KEY, db=backend.db(DB_META))
    return None if value is None else bytes(value)


def read(backend: Backend) -> bytes | None:
    with backend.read() as txn:
        value = txn.get(KEY, db=backend.db(DB_META))
    return None if value is None else bytes(value)


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    return Backend(str(tmp_path / "db"), map_size_bytes=64 << 20, batch_commits=True)


def test_batches_are_readable_at_once_and_on_disk_once_committed(backend: Backend) -> None:
    put(backend, b"one", 5)
    put(backend, b"two", 6)
    assert read(backend) == b"two"
    assert backend.consistent_index().index == 6
    assert on_disk(backend) is None
    backend.commit_pending()
    assert on_disk(backend) == b"two"
    backend.close()


def test_a_failed_batch_undoes_only_itself(backend: Backend) -> None:
    put(backend, b"kept", 5)
    with pytest.raises(RuntimeError), backend.write() as batch:
        batch.put(DB_META, KEY, b"lost")
        raise RuntimeError("the batch fails half way")
    assert read(backend) == b"kept"
    backend.commit_pending()
    assert on_disk(backend) == b"kept"
    backend.close()


def test_commit_if_due_waits_for_the_interval(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"), batch_commits=True, batch_interval_ms=60_000)
    put(backend, b"one", 5)
    backend.commit_if_due()
    assert on_disk(backend) is None
    backend.batch_interval_ms = 0
    backend.commit_if_due()
    assert on_disk(backend) == b"one"
    backend.close()


def test_the_batch_limit_commits(tmp_path: Path) -> None:
    backend = Backend(str(tmp_path / "db"), batch_commits=True, batch_limit=3)
    put(backend, b"one", 5)
    put(backend, b"two", 6)
    assert on_disk(backend) is None
    put(backend, b"three", 7)
    assert on_disk(backend) == b"three"
    backend.close()


def test_flush_copy_and_close_commit_first(backend: Backend, tmp_path: Path) -> None:
    put(backend, b"one", 5)
    backend.flush()
    assert on_disk(backend) == b"one"
    put(backend, b"two", 6)
    backend.copy_to(str(tmp_path / "copy"))
    assert on_disk(backend) == b"two"
    put(backend, b"three", 7)
    backend.close()
    reopened = Backend(str(tmp_path / "db"), map_size_bytes=64 << 20)
    assert read(reopened) == b"three"
    reopened.close()


def test_another_thread_may_not_use_the_open_transaction(backend: Backend) -> None:
    put(backend, b"one", 5)
    failures: list[BaseException] = []

    def use() -> None:
        try:
            read(backend)
        except AssertionError as error:
            failures.append(error)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(failures) == 1 and "another thread" in str(failures[0])
    backend.close()


_CRASHING_WRITER = """
import os, sys
from raftkv.storage.backend import DB_META, Backend
backend = Backend(sys.argv[1], map_size_bytes=64 << 20, batch_commits=True)
for index, value in ((5, b"one"), (6, b"two")):
    with backend.write() as batch:
        batch.put(DB_META, b"probe", value)
        batch.set_consistent_index(index, 1)
backend.commit_pending()
with backend.write() as batch:
    batch.put(DB_META, b"probe", b"three")
    batch.set_consistent_index(7, 1)
os._exit(0)  # dies with the last batch not committed
"""


def test_a_crash_loses_the_uncommitted_batches_whole(tmp_path: Path) -> None:
    """The file holds the last commit, consistent index included: the WAL replays the rest."""
    directory = str(tmp_path / "db")
    subprocess.run([sys.executable, "-c", _CRASHING_WRITER, directory], check=True)
    backend = Backend(directory, map_size_bytes=64 << 20)
    assert read(backend) == b"two"
    assert backend.consistent_index().index == 6
    backend.close()
