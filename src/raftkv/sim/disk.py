"""An in-memory disk for the simulator: loses unsynced writes and tears the last one.

``SimDisk`` implements the ``raftkv.storage.disk.Disk`` protocol. Its model of
a power loss (``crash``) is the one Raft needs to be tested against:

- A file's content is its durable bytes (as of its last ``sync``) plus a
  prefix of the writes and truncates made since. The first unsynced write that
  is not kept whole may survive as a torn prefix of random length, possibly
  ending in garbage (random bytes or zeros), possibly followed by zeros up to
  a 512-byte sector.
- A directory holds its durable entries (as of its last ``sync_dir``) plus a
  prefix of the creates, renames and removes made in it since. A rename
  within one directory is atomic. Directories themselves (``makedirs``) are
  durable at once: a simplification, since nothing here removes them.

Bytes that were synced are never changed; this disk does not model media
corruption (Raft assumes fsync is durable). Tests corrupt files explicitly.
Every random choice comes from the ``random.Random`` passed to ``crash``, so a
run is a pure function of its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raftkv.storage.errors import DiskError

if TYPE_CHECKING:
    from raftkv.storage.disk import Disk, DiskFile

SECTOR_BYTES = 512
TORN_GARBAGE_BYTES_MAX = 32
_GARBAGE_PROBABILITY = 0.5
_SECTOR_ZEROS_PROBABILITY = 0.25


@dataclass(frozen=True, slots=True)
class _Write:
    data: bytes


@dataclass(frozen=True, slots=True)
class _Truncate:
    size: int


_FileOp = _Write | _Truncate


class _Inode:
    """File content. ``data`` is what reads see; the durable bytes are tracked
    without copying the file on every sync (appends never change a prefix)."""

    __slots__ = ("data", "durable_size", "durable_copy", "unsynced")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable_size = 0
        # Set when an unsynced truncate cut into the durable bytes.
        self.durable_copy: bytes | None = None
        self.unsynced: list[_FileOp] = []

    def durable(self) -> bytes:
        if self.durable_copy is not None:
            return self.durable_copy
        return bytes(self.data[: self.durable_size])

    def reset(self, content: bytes) -> None:
        self.data = bytearray(content)
        self.durable_size = len(content)
        self.durable_copy = None
        self.unsynced = []


# One directory change applied atomically: each path is linked to an inode or
# unlinked (None).
_DirOp = tuple[tuple[str, _Inode | None], ...]


def _normalize(path: str) -> str:
    parts = [part for part in path.split("/") if part not in ("", ".")]
    assert ".." not in parts, f"'..' in simulated path {path!r}"
    return ("/" if path.startswith("/") else "") + "/".join(parts)


def _parent(path: str) -> str:
    parent, _, _ = path.rpartition("/")
    return parent if parent or not path.startswith("/") else "/"


class SimFile:
    """A handle on a simulated file; like a file descriptor it follows renames."""

    def __init__(self, disk: SimDisk, path: str, inode: _Inode) -> None:
        self._disk = disk
        self._path = path
        self._inode = inode
        self._generation = disk.generation
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def size(self) -> int:
        return len(self._inode.data)

    def _check_usable(self) -> None:
        assert not self._closed, f"{self._path} is closed"
        # A handle from before a crash belongs to a process that no longer exists.
        assert self._generation == self._disk.generation, f"{self._path}: handle predates crash"

    def write(self, data: bytes) -> None:
        self._check_usable()
        if self._disk.inject_write_error:
            self._disk.inject_write_error = False
            raise DiskError(f"write {self._path} failed: injected I/O error (EIO)")
        self._inode.data += data
        self._inode.unsynced.append(_Write(bytes(data)))
        self._disk.write_count += 1

    def sync(self) -> None:
        self._check_usable()
        self._inode.durable_size = len(self._inode.data)
        self._inode.durable_copy = None
        self._inode.unsynced = []
        self._disk.sync_count += 1

    def truncate(self, size: int) -> None:
        self._check_usable()
        inode = self._inode
        assert 0 <= size <= len(inode.data), (size, len(inode.data))
        if size < inode.durable_size and inode.durable_copy is None:
            inode.durable_copy = bytes(inode.data[: inode.durable_size])
        del inode.data[size:]
        inode.unsynced.append(_Truncate(size))

    def preallocate(self, total_bytes: int) -> None:
        # Not modelled: preallocated space reads as zeros past the data, which the WAL
        # treats like any zero tail (tests/storage/test_wal.py covers it on real files).
        self._check_usable()

    def close(self) -> None:
        self._closed = True


class SimDisk:
    def __init__(self) -> None:
        self._files: dict[str, _Inode] = {}  # what the running process sees
        self._durable_files: dict[str, _Inode] = {}  # what survives a crash
        self._dir_ops: dict[str, list[_DirOp]] = {}  # unsynced changes, per directory
        self._dirs: set[str] = {"/", ""}
        self.generation = 0  # bumped by crash; older handles are dead
        self.sync_count = 0  # file and directory syncs
        self.write_count = 0
        # Set to make the next write (to any file) fail with DiskError.
        self.inject_write_error = False

    # -- Disk ---------------------------------------------------------------

    def list_dir(self, directory: str) -> list[str]:
        directory = _normalize(directory)
        if directory not in self._dirs:
            raise DiskError(f"list {directory} failed: No such file or directory (ENOENT)")
        return sorted(path.rpartition("/")[2] for path in self._files if _parent(path) == directory)

    def exists(self, path: str) -> bool:
        path = _normalize(path)
        return path in self._files or path in self._dirs

    def makedirs(self, directory: str) -> None:
        directory = _normalize(directory)
        while directory not in self._dirs:
            self._dirs.add(directory)
            directory = _parent(directory)

    def read(self, path: str) -> bytes:
        return bytes(self._inode(path, "read").data)

    def create(self, path: str) -> SimFile:
        path = _normalize(path)
        if _parent(path) not in self._dirs:
            raise DiskError(f"create {path} failed: No such file or directory (ENOENT)")
        inode = _Inode()
        self._change(_parent(path), ((path, inode),))
        return SimFile(self, path, inode)

    def open_append(self, path: str) -> SimFile:
        path = _normalize(path)
        return SimFile(self, path, self._inode(path, "open"))

    def rename(self, source: str, target: str) -> None:
        source, target = _normalize(source), _normalize(target)
        inode = self._inode(source, "rename")
        if _parent(source) == _parent(target):
            self._change(_parent(source), ((target, inode), (source, None)))
            return
        if _parent(target) not in self._dirs:
            raise DiskError(f"rename {source} -> {target} failed: No such directory (ENOENT)")
        # Across directories, each side becomes durable with its own sync_dir.
        self._change(_parent(target), ((target, inode),))
        self._change(_parent(source), ((source, None),))

    def remove(self, path: str) -> None:
        path = _normalize(path)
        self._inode(path, "remove")
        self._change(_parent(path), ((path, None),))

    def sync_dir(self, directory: str) -> None:
        directory = _normalize(directory)
        if directory not in self._dirs:
            raise DiskError(f"fsync directory {directory} failed: No such directory (ENOENT)")
        for op in self._dir_ops.pop(directory, []):
            _apply_dir_op(self._durable_files, op)
        self.sync_count += 1

    # -- Faults ---------------------------------------------------------------

    def crash(self, rng: random.Random) -> None:
        """Power loss: keep what is durable plus a random prefix of what is not."""
        for directory in sorted(self._dir_ops):
            ops = self._dir_ops[directory]
            for op in ops[: rng.randint(0, len(ops))]:
                _apply_dir_op(self._durable_files, op)
        self._dir_ops.clear()
        self._files = dict(self._durable_files)
        crashed: set[int] = set()
        for path in sorted(self._files):
            inode = self._files[path]
            if id(inode) not in crashed:  # a half-done cross-directory rename links it twice
                crashed.add(id(inode))
                inode.reset(_surviving_content(inode, rng))
        self.generation += 1

    def durable_content(self, path: str) -> bytes:
        """The bytes of path that a crash cannot take away (for tests and checkers)."""
        return self._inode(path, "read").durable()

    # -- Internals ------------------------------------------------------------

    def _inode(self, path: str, operation: str) -> _Inode:
        path = _normalize(path)
        inode = self._files.get(path)
        if inode is None:
            raise DiskError(f"{operation} {path} failed: No such file or directory (ENOENT)")
        return inode

    def _change(self, directory: str, op: _DirOp) -> None:
        assert directory in self._dirs, directory
        assert all(_parent(path) == directory for path, _ in op), (directory, op)
        _apply_dir_op(self._files, op)
        self._dir_ops.setdefault(directory, []).append(op)


def _apply_dir_op(namespace: dict[str, _Inode], op: _DirOp) -> None:
    for path, inode in op:
        if inode is None:
            namespace.pop(path, None)
        else:
            namespace[path] = inode


def _surviving_content(inode: _Inode, rng: random.Random) -> bytes:
    content = bytearray(inode.durable())
    ops = inode.unsynced
    kept = rng.randint(0, len(ops))
    for op in ops[:kept]:
        if isinstance(op, _Write):
            content += op.data
        else:
            del content[op.size :]
    if kept < len(ops):
        lost = ops[kept]
        if isinstance(lost, _Write):
            content += _torn(lost.data, len(content), rng)
    return bytes(content)


def _torn(data: bytes, offset: int, rng: random.Random) -> bytes:
    """What a write at offset, interrupted by power loss, may leave behind."""
    survived = bytearray(data[: rng.randint(0, len(data))])
    if survived and rng.random() < _GARBAGE_PROBABILITY:
        garbage_bytes = rng.randint(1, min(len(survived), TORN_GARBAGE_BYTES_MAX))
        garbage = rng.randbytes(garbage_bytes) if rng.random() < 0.5 else bytes(garbage_bytes)
        survived[-garbage_bytes:] = garbage
    if rng.random() < _SECTOR_ZEROS_PROBABILITY:
        survived += bytes(-(offset + len(survived)) % SECTOR_BYTES)
    assert len(survived) < len(data) + SECTOR_BYTES
    return bytes(survived)


if TYPE_CHECKING:  # SimDisk and SimFile implement the protocols
    _disk: Disk = SimDisk()
    _file: DiskFile = SimFile(SimDisk(), "", _Inode())
