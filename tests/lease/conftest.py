"""Real LMDB backends in temporary directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from raftkv import limits
from raftkv.storage.backend import Backend

MAP_SIZE_BYTES = 64 * limits.MIB

Reopen = Callable[[Backend], Backend]


def open_backend(directory: Path) -> Backend:
    return Backend(str(directory), map_size_bytes=MAP_SIZE_BYTES, sync=False)


@pytest.fixture
def backend_dir(tmp_path: Path) -> Path:
    return tmp_path / "backend"


@pytest.fixture
def backend(backend_dir: Path) -> Iterator[Backend]:
    opened = open_backend(backend_dir)
    yield opened
    opened.close()


@pytest.fixture
def reopen(backend_dir: Path) -> Iterator[Reopen]:
    """Close a backend and open the same directory again (a restart)."""
    opened: list[Backend] = []

    def _reopen(old: Backend) -> Backend:
        old.close()
        new = open_backend(backend_dir)
        opened.append(new)
        return new

    yield _reopen
    for new in opened:
        new.close()  # closing an LMDB environment twice is harmless
