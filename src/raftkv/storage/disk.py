"""The only way the WAL and the snapshotter touch files.

``Disk`` is a small set of primitives with POSIX durability semantics, so the
durable-state code can be written once and run on real files (``OsDisk``) or
on the simulator's in-memory disk (``raftkv.sim.disk.SimDisk``), which loses
unsynced writes and tears the last one on a crash. The semantics the callers
rely on, and that both implementations provide:

- ``DiskFile.write`` appends; the bytes are durable only after ``sync``.
- ``create``, ``rename`` and ``remove`` change a directory; the change is
  durable only after ``sync_dir`` of that directory. ``rename`` is atomic:
  after a crash the target names either the old file or the new one.
- Any failure raises ``DiskError`` naming the path. Callers treat it as fatal:
  after a failed write or sync the state of the page cache is unknown, and a
  retried fsync may report success for data that was dropped.

Paths are strings with ``/`` separators; ``join`` builds them.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Protocol

from raftkv.storage.errors import DiskError


class DiskFile(Protocol):
    """A file opened for appending."""

    @property
    def path(self) -> str: ...

    @property
    def size(self) -> int:
        """Current size in bytes, including writes that are not yet synced."""
        ...

    def write(self, data: bytes) -> None:
        """Append all of data (one call; not durable until sync)."""
        ...

    def sync(self) -> None:
        """fdatasync: make every write and truncate so far durable."""
        ...

    def truncate(self, size: int) -> None:
        """Cut the file to size bytes (size <= current size); later writes append there."""
        ...

    def preallocate(self, total_bytes: int) -> None:
        """Reserve space up to total_bytes past the data (a hint: ``size`` is unchanged)."""
        ...

    def close(self) -> None:
        """Release the file; space preallocated past the data is given back first."""
        ...


class Disk(Protocol):
    def list_dir(self, directory: str) -> list[str]:
        """Names (not paths) of the files in directory, sorted."""
        ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, directory: str) -> None:
        """Create directory and its parents; no error if it exists."""
        ...

    def read(self, path: str) -> bytes:
        """The whole content of a file."""
        ...

    def create(self, path: str) -> DiskFile:
        """Create an empty file (truncating any existing one), opened for appending."""
        ...

    def open_append(self, path: str) -> DiskFile:
        """Open an existing file for appending at its end."""
        ...

    def rename(self, source: str, target: str) -> None:
        """Atomically replace target with source."""
        ...

    def remove(self, path: str) -> None: ...

    def sync_dir(self, directory: str) -> None:
        """Make creates, renames and removes in directory durable."""
        ...


def join(directory: str, name: str) -> str:
    assert name and "/" not in name, name
    return f"{directory.rstrip('/')}/{name}" if directory else name


def _disk_error(operation: str, path: str, exc: OSError) -> DiskError:
    """A DiskError that names the operation, the path and the errno (ENOSPC, EIO...)."""
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    reason = exc.strerror or str(exc)
    return DiskError(f"{operation} {path} failed: {reason} ({code})")


# os.fdatasync is Linux-only; fsync is the portable (slower) equivalent.
_fdatasync = getattr(os, "fdatasync", os.fsync)

# No O_APPEND: writes go to the end of the data, which is not the end of a preallocated file
# (and Linux's pwrite ignores its offset on an O_APPEND descriptor).
_WRITE_FLAGS = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = _WRITE_FLAGS | os.O_CREAT | os.O_TRUNC
_FILE_MODE = 0o644


class OsFile:
    """A real file descriptor; writes append to the data.

    With ``preallocate`` the file is longer than its data, zeros past it, so an append's
    fdatasync has no file length to commit (on ext4 here, 84-95 us against 125-136 us;
    docs/performance.md, change 9). ``close`` cuts the file back to its data.
    """

    def __init__(self, path: str, fd: int, size: int) -> None:
        assert fd >= 0
        assert size >= 0
        self._path = path
        self._fd: int | None = fd
        self._size = size  # the end of the data: where the next write goes
        self._allocated_bytes = size  # the file's length

    @property
    def path(self) -> str:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    def _open_fd(self) -> int:
        assert self._fd is not None, f"{self._path} is closed"
        return self._fd

    def write(self, data: bytes) -> None:
        fd = self._open_fd()
        view = memoryview(data)
        try:
            # os.pwrite may write less than asked (signals, some file systems).
            while view:
                written = os.pwrite(fd, view, self._size + len(data) - len(view))
                assert 0 < written <= len(view), written
                view = view[written:]
        except OSError as exc:
            raise _disk_error("write", self._path, exc) from exc
        finally:
            self._size += len(data) - len(view)
            self._allocated_bytes = max(self._allocated_bytes, self._size)

    def sync(self) -> None:
        try:
            _fdatasync(self._open_fd())
        except OSError as exc:
            raise _disk_error("fdatasync", self._path, exc) from exc

    def truncate(self, size: int) -> None:
        assert 0 <= size <= self._size, (size, self._size)
        try:
            os.ftruncate(self._open_fd(), size)
        except OSError as exc:
            raise _disk_error("truncate", self._path, exc) from exc
        self._size = self._allocated_bytes = size

    def preallocate(self, total_bytes: int) -> None:
        if total_bytes <= self._allocated_bytes:
            return
        fd = self._open_fd()
        try:
            os.posix_fallocate(fd, 0, total_bytes)
        except OSError as exc:
            # The length may have grown part way: learn it, so close still cuts it back.
            self._allocated_bytes = max(self._allocated_bytes, _length(fd, self._path))
            raise _disk_error("preallocate", self._path, exc) from exc
        self._allocated_bytes = total_bytes

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            if self._allocated_bytes > self._size:
                # Synced, so a file closed here never reads longer than its data after a
                # crash (the WAL relies on that for every segment but the last).
                self.truncate(self._size)
                self.sync()
        finally:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                raise _disk_error("close", self._path, exc) from exc


def _length(fd: int, path: str) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError as exc:
        raise _disk_error("stat", path, exc) from exc


class OsDisk:
    """Real files through ``os``: appends, fdatasync, os.replace, directory fsync."""

    def list_dir(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(directory))
        except OSError as exc:
            raise _disk_error("list", directory, exc) from exc

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, directory: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise _disk_error("makedirs", directory, exc) from exc

    def read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise _disk_error("read", path, exc) from exc

    def create(self, path: str) -> OsFile:
        return self._open(path, _CREATE_FLAGS, "create")

    def open_append(self, path: str) -> OsFile:
        return self._open(path, _WRITE_FLAGS, "open")

    def _open(self, path: str, flags: int, operation: str) -> OsFile:
        try:
            fd = os.open(path, flags, _FILE_MODE)
        except OSError as exc:
            raise _disk_error(operation, path, exc) from exc
        try:
            size = _length(fd, path)
        except DiskError:
            os.close(fd)
            raise
        return OsFile(path, fd, size)

    def rename(self, source: str, target: str) -> None:
        try:
            os.replace(source, target)
        except OSError as exc:
            raise _disk_error("rename", f"{source} -> {target}", exc) from exc

    def remove(self, path: str) -> None:
        try:
            os.remove(path)
        except OSError as exc:
            raise _disk_error("remove", path, exc) from exc

    def sync_dir(self, directory: str) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise _disk_error("open directory", directory, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _disk_error("fsync directory", directory, exc) from exc
        finally:
            os.close(fd)


if TYPE_CHECKING:  # OsDisk and OsFile implement the protocols
    _disk: Disk = OsDisk()
    _file: DiskFile = OsFile("", 0, 0)
