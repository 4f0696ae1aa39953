"""bbolt's file format: a streaming writer, a reader, and bbolt's own consistency check.

The facts, from bbolt's page, meta, bucket, node and freelist code (all integers are
little-endian, as bbolt writes its structs on every platform etcd ships for):

- The file is a sequence of pages of ``page_bytes`` (a meta field). A page starts with a
  16-byte header: ``id u64, flags u16, count u16, overflow u32``; a page that needs more
  room takes ``overflow`` more pages right after it. Flags: branch 0x01, leaf 0x02,
  meta 0x04, freelist 0x10 (exactly one).
- Pages 0 and 1 are meta pages (the one a commit writes is ``txid % 2``). After the header:
  ``magic u32 (0xED0CDAED), version u32 (2), page size u32, flags u32, root bucket
  (root pgid u64, sequence u64), freelist pgid u64, high-water pgid u64, txid u64,
  checksum u64`` where the checksum is FNV-1a 64 of the 56 bytes before it. A reader
  takes the valid meta with the larger txid. The high-water mark is the page count.
- A leaf page holds ``count`` elements ``flags u32, pos u32, ksize u32, vsize u32``, then
  the keys and values; ``pos`` counts from the element itself to its key, and the value
  follows the key. A branch page holds ``pos u32, ksize u32, pgid u64`` elements; each key
  is the first key of the child page. Keys are sorted bytewise.
- A bucket is a leaf element with flag 0x01 whose value is ``root pgid u64, sequence u64``;
  root 0 means an inline bucket, whose single leaf page follows inside the value. The
  database's buckets are the elements of the root bucket named by the meta page.
- A freelist page's ``count`` is the number of free page ids (u64 each) that follow;
  0xFFFF means the real count is the first u64. Freelist pgid 2^64-1 means none was saved.

The writer builds each bucket's tree bottom-up from sorted items while writing pages in
order, so memory holds one pending page per tree level, whatever the bucket's size.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from raftkv import limits
from raftkv.storage.etcdsnap.errors import SnapshotFormatError

MAGIC = 0xED0CDAED
VERSION = 2
NO_FREELIST = 0xFFFFFFFFFFFFFFFF

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
# magic, version, page size, flags, root pgid, root sequence, freelist, high water, txid
META_FIELDS = struct.Struct("<IIIIQQQQQ")
META_CHECKSUM = struct.Struct("<Q")
FREELIST_ID = struct.Struct("<Q")
FREELIST_COUNT_OVERFLOW = 0xFFFF
MAX_ELEMENTS_PER_PAGE = 0xFFFF  # the header's count is a u16

assert PAGE_HEADER.size == LEAF_ELEMENT.size == BRANCH_ELEMENT.size == 16
assert META_FIELDS.size == 56 and BUCKET_HEADER.size == 16

_FNV64_OFFSET = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_U64_MASK = (1 << 64) - 1


def fnv1a_64(data: bytes) -> int:
    value = _FNV64_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV64_PRIME) & _U64_MASK
    return value


@dataclass(frozen=True, slots=True)
class Meta:
    page_bytes: int
    root_pgid: int
    freelist_pgid: int
    high_water_pgid: int  # pages in use: every page id is below it
    txid: int

    def encode_page(self, page_id: int) -> bytes:
        fields = META_FIELDS.pack(
            MAGIC,
            VERSION,
            self.page_bytes,
            0,
            self.root_pgid,
            0,
            self.freelist_pgid,
            self.high_water_pgid,
            self.txid,
        )
        body = fields + META_CHECKSUM.pack(fnv1a_64(fields))
        page = PAGE_HEADER.pack(page_id, META_PAGE, 0, 0) + body
        return page.ljust(self.page_bytes, b"\0")


# --- Writer -----------------------------------------------------------------------------


class BoltWriter:
    """Writes a bbolt file: ``add_bucket`` for each top-level bucket in name order, then
    ``finish``. Every page is full except the last of each tree level; nothing is free."""

    FIRST_DATA_PGID = 2  # after the two meta pages

    def __init__(self, handle: BinaryIO, page_bytes: int = limits.ETCD_SNAPSHOT_PAGE_BYTES):
        assert page_bytes >= limits.ETCD_SNAPSHOT_MIN_PAGE_BYTES
        assert page_bytes <= limits.ETCD_SNAPSHOT_MAX_PAGE_BYTES
        self._handle = handle
        self.page_bytes = page_bytes
        self._next_pgid = self.FIRST_DATA_PGID
        self._buckets: list[tuple[bytes, int]] = []
        self._finished = False
        handle.seek(self.FIRST_DATA_PGID * page_bytes)

    def add_bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Write one bucket from items in strictly increasing key order; returns how many."""
        assert not self._finished
        assert not self._buckets or name > self._buckets[-1][0], f"bucket {name!r} out of order"
        tree = _TreeBuilder(self, element_flags=0)
        count = 0
        for key, value in items:
            tree.add(key, value)
            count += 1
        self._buckets.append((name, tree.finish()))
        return count

    def finish(self) -> int:
        """Write the root bucket, an empty freelist and both meta pages; returns the size."""
        assert not self._finished
        self._finished = True
        root = _TreeBuilder(self, element_flags=BUCKET_LEAF_FLAG)
        for name, root_pgid in self._buckets:
            root.add(name, BUCKET_HEADER.pack(root_pgid, 0))
        root_pgid = root.finish()
        freelist_pgid = self.write_page(FREELIST_PAGE, 0, b"")
        high_water = self._next_pgid
        self._handle.seek(0)
        for txid in (0, 1):  # meta page ``txid % 2``; readers take txid 1
            meta = Meta(self.page_bytes, root_pgid, freelist_pgid, high_water, txid)
            self._handle.write(meta.encode_page(txid))
        self._handle.seek(high_water * self.page_bytes)
        return high_water * self.page_bytes

    def write_page(self, flags: int, count: int, body: bytes) -> int:
        """Append one page (with overflow pages if the body needs them); returns its id."""
        assert 0 <= count <= MAX_ELEMENTS_PER_PAGE
        pgid = self._next_pgid
        size = PAGE_HEADER.size + len(body)
        span = -(-size // self.page_bytes)
        assert self._handle.tell() == pgid * self.page_bytes, "pages are written in order"
        header = PAGE_HEADER.pack(pgid, flags, count, span - 1)
        self._handle.write(header)
        self._handle.write(body)
        self._handle.write(b"\0" * (span * self.page_bytes - size))
        self._next_pgid += span
        return pgid


@dataclass(slots=True)
class _Level:
    """The page being filled at one level of a tree (0: leaves)."""

    is_leaf: bool
    keys: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)  # leaf values
    children: list[int] = field(default_factory=list)  # branch child pgids
    size_bytes: int = PAGE_HEADER.size
    pages_written: int = 0

    def clear(self) -> None:
        self.keys.clear()
        self.payloads.clear()
        self.children.clear()
        self.size_bytes = PAGE_HEADER.size


class _TreeBuilder:
    """One bucket's B+tree, built bottom-up from sorted items."""

    def __init__(self, writer: BoltWriter, element_flags: int) -> None:
        self._writer = writer
        self._element_flags = element_flags
        self._levels = [_Level(is_leaf=True)]
        self._last_key: bytes | None = None

    def add(self, key: bytes, value: bytes) -> None:
        assert 0 < len(key) <= limits.ETCD_SNAPSHOT_MAX_KEY_BYTES, f"key of {len(key)} bytes"
        assert len(value) <= limits.ETCD_SNAPSHOT_MAX_VALUE_BYTES
        assert self._last_key is None or key > self._last_key, f"key {key!r} out of order"
        self._last_key = key
        leaf = self._levels[0]
        entry_bytes = LEAF_ELEMENT.size + len(key) + len(value)
        if leaf.keys and leaf.size_bytes + entry_bytes > self._writer.page_bytes:
            self._flush(0)
        leaf.keys.append(key)
        leaf.payloads.append(value)
        leaf.size_bytes += entry_bytes

    def finish(self) -> int:
        """Write what is pending at every level; returns the root page id."""
        depth = 0
        while True:
            level = self._levels[depth]
            if depth == len(self._levels) - 1 and level.pages_written == 0:
                return self._write(level)  # one page holds the rest: the root
            assert level.keys, "a level that wrote a page always has a pending entry"
            self._flush(depth)
            depth += 1

    def _flush(self, depth: int) -> None:
        """Write the pending page at ``depth`` and enter it in the level above."""
        level = self._levels[depth]
        first_key = level.keys[0]
        pgid = self._write(level)
        level.pages_written += 1
        if depth + 1 == len(self._levels):
            self._levels.append(_Level(is_leaf=False))
        parent = self._levels[depth + 1]
        entry_bytes = BRANCH_ELEMENT.size + len(first_key)
        if parent.keys and parent.size_bytes + entry_bytes > self._writer.page_bytes:
            self._flush(depth + 1)
        parent.keys.append(first_key)
        parent.children.append(pgid)
        parent.size_bytes += entry_bytes

    def _write(self, level: _Level) -> int:
        count = len(level.keys)
        elements = bytearray(count * LEAF_ELEMENT.size)
        data: list[bytes] = []
        data_offset = PAGE_HEADER.size + len(elements)
        for index, key in enumerate(level.keys):
            element_offset = PAGE_HEADER.size + index * LEAF_ELEMENT.size
            pos = data_offset - element_offset
            at = index * LEAF_ELEMENT.size
            if level.is_leaf:
                value = level.payloads[index]
                LEAF_ELEMENT.pack_into(elements, at, self._element_flags, pos, len(key), len(value))
                data.append(key)
                data.append(value)
                data_offset += len(key) + len(value)
            else:
                BRANCH_ELEMENT.pack_into(elements, at, pos, len(key), level.children[index])
                data.append(key)
                data_offset += len(key)
        flags = LEAF_PAGE if level.is_leaf else BRANCH_PAGE
        pgid = self._writer.write_page(flags, count, bytes(elements) + b"".join(data))
        level.clear()
        return pgid


# --- Reader -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """Where a page's bytes are: in the file (``pgid``) or inside a bucket value."""

    buffer: memoryview
    start: int  # offset of the page header
    end: int  # one past the page's last byte
    flags: int
    count: int
    overflow: int
    pgid: int | None  # None for an inline bucket's page


@dataclass(frozen=True, slots=True)
class Entry:
    key: bytes
    value: bytes
    is_bucket: bool


class BoltReader:
    """A read-only view of a bbolt database held in ``data`` (e.g. a file's mmap)."""

    def __init__(self, data: memoryview, name: str = "snapshot") -> None:
        self._data = data
        self.name = name
        self.meta = self._read_meta()
        if self.meta.high_water_pgid * self.meta.page_bytes > len(data):
            raise SnapshotFormatError(
                f"{name}: truncated: the meta page names {self.meta.high_water_pgid} pages of "
                f"{self.meta.page_bytes} bytes but the file has {len(data)} bytes"
            )

    # -- Meta ---------------------------------------------------------------------------

    def _read_meta(self) -> Meta:
        candidates = [self._meta_at(0, 0)]
        first = candidates[0]
        sizes = [first.page_bytes] if first is not None else _page_size_guesses()
        for page_bytes in sizes:
            second = self._meta_at(page_bytes, 1)
            if second is not None and second.page_bytes == page_bytes:
                candidates.append(second)
                break
        valid = [meta for meta in candidates if meta is not None]
        if not valid:
            raise SnapshotFormatError(f"{self.name}: not a bbolt database (no valid meta page)")
        return max(valid, key=lambda meta: meta.txid)

    def _meta_at(self, offset: int, page_id: int) -> Meta | None:
        end = offset + PAGE_HEADER.size + META_FIELDS.size + META_CHECKSUM.size
        if end > len(self._data):
            return None
        _, flags, _, _ = PAGE_HEADER.unpack_from(self._data, offset)
        fields_at = offset + PAGE_HEADER.size
        fields = bytes(self._data[fields_at : fields_at + META_FIELDS.size])
        magic, version, page_bytes, _, root, _, freelist, high_water, txid = META_FIELDS.unpack(
            fields
        )
        (checksum,) = META_CHECKSUM.unpack_from(self._data, fields_at + META_FIELDS.size)
        if flags != META_PAGE or magic != MAGIC or version != VERSION:
            return None
        if checksum != fnv1a_64(fields):
            return None
        if (
            not limits.ETCD_SNAPSHOT_MIN_PAGE_BYTES
            <= page_bytes
            <= (limits.ETCD_SNAPSHOT_MAX_PAGE_BYTES)
        ):
            return None
        if root >= high_water or (freelist >= high_water and freelist != NO_FREELIST):
            return None
        return Meta(page_bytes, root, freelist, high_water, txid)

    # -- Pages --------------------------------------------------------------------------

    def page(self, pgid: int) -> _Node:
        meta = self.meta
        if not 2 <= pgid < meta.high_water_pgid:
            raise SnapshotFormatError(
                f"{self.name}: page {pgid} is outside 2..{meta.high_water_pgid - 1}"
            )
        start = pgid * meta.page_bytes
        page_id, flags, count, overflow = PAGE_HEADER.unpack_from(self._data, start)
        if page_id != pgid:
            raise SnapshotFormatError(f"{self.name}: page {pgid} says it is page {page_id}")
        if pgid + overflow >= meta.high_water_pgid:
            raise SnapshotFormatError(f"{self.name}: page {pgid} overflows past the last page")
        end = start + (overflow + 1) * meta.page_bytes
        return _Node(self._data, start, end, flags, count, overflow, pgid)

    def _inline_page(self, value: bytes) -> _Node:
        buffer = memoryview(value)
        start = BUCKET_HEADER.size
        if len(value) < start + PAGE_HEADER.size:
            raise SnapshotFormatError(f"{self.name}: inline bucket of {len(value)} bytes")
        _, flags, count, overflow = PAGE_HEADER.unpack_from(buffer, start)
        return _Node(buffer, start, len(value), flags, count, overflow, None)

    def _root_node(self, bucket_value: bytes) -> _Node:
        if len(bucket_value) < BUCKET_HEADER.size:
            raise SnapshotFormatError(f"{self.name}: bucket value of {len(bucket_value)} bytes")
        root_pgid, _ = BUCKET_HEADER.unpack_from(bucket_value)
        return self._inline_page(bucket_value) if root_pgid == 0 else self.page(root_pgid)

    # -- Iteration ----------------------------------------------------------------------

    def buckets(self) -> list[Entry]:
        """The top-level entries (in etcd's files, all buckets), in key order."""
        return list(self._walk(self.page(self.meta.root_pgid), 0))

    def bucket(self, name: bytes) -> Entry | None:
        for entry in self.buckets():
            if entry.key == name:
                return entry if entry.is_bucket else None
        return None

    def items(self, bucket: Entry) -> Iterator[Entry]:
        """Every entry of a bucket, in key order."""
        assert bucket.is_bucket
        return self._walk(self._root_node(bucket.value), 0)

    def _walk(self, node: _Node, depth: int) -> Iterator[Entry]:
        if depth > limits.ETCD_SNAPSHOT_MAX_TREE_DEPTH:
            raise SnapshotFormatError(f"{self.name}: tree deeper than the limit (a page cycle?)")
        if node.flags == LEAF_PAGE:
            yield from self._leaf_entries(node)
        elif node.flags == BRANCH_PAGE and node.pgid is not None:
            for _, child in self._branch_entries(node):
                yield from self._walk(self.page(child), depth + 1)
        else:
            where = "an inline bucket" if node.pgid is None else f"page {node.pgid}"
            raise SnapshotFormatError(
                f"{self.name}: {where} has flags {node.flags:#x} where a tree page belongs"
            )

    def _leaf_entries(self, node: _Node) -> Iterator[Entry]:
        buffer = node.buffer
        self._check_elements_fit(node)
        for index in range(node.count):
            at = node.start + PAGE_HEADER.size + index * LEAF_ELEMENT.size
            flags, pos, key_bytes, value_bytes = LEAF_ELEMENT.unpack_from(buffer, at)
            key_at = at + pos
            value_at = key_at + key_bytes
            if value_at + value_bytes > node.end:
                raise SnapshotFormatError(
                    f"{self.name}: {self._where(node)} element {index} runs past its page"
                )
            yield Entry(
                bytes(buffer[key_at:value_at]),
                bytes(buffer[value_at : value_at + value_bytes]),
                bool(flags & BUCKET_LEAF_FLAG),
            )

    def _branch_entries(self, node: _Node) -> Iterator[tuple[bytes, int]]:
        buffer = node.buffer
        self._check_elements_fit(node)
        for index in range(node.count):
            at = node.start + PAGE_HEADER.size + index * BRANCH_ELEMENT.size
            pos, key_bytes, child = BRANCH_ELEMENT.unpack_from(buffer, at)
            key_at = at + pos
            if key_at + key_bytes > node.end:
                raise SnapshotFormatError(
                    f"{self.name}: {self._where(node)} element {index} runs past its page"
                )
            yield bytes(buffer[key_at : key_at + key_bytes]), child

    def _check_elements_fit(self, node: _Node) -> None:
        if node.start + PAGE_HEADER.size + node.count * LEAF_ELEMENT.size > node.end:
            raise SnapshotFormatError(
                f"{self.name}: {self._where(node)} has more elements ({node.count}) than room"
            )

    @staticmethod
    def _where(node: _Node) -> str:
        return "an inline bucket page" if node.pgid is None else f"page {node.pgid}"

    # -- bbolt's Tx.Check ---------------------------------------------------------------

    def check(self) -> list[str]:
        """The problems bbolt's consistency check (``Tx.Check``, which ``etcdutl snapshot
        status`` runs) would report, plus key order: [] for a sound file. A file whose meta
        page names no freelist (bbolt's NoFreelistSync, as etcd runs it) has every page that
        is not reachable free, as bbolt rebuilds it."""
        problems: list[str] = []
        freed: set[int] = set()
        for pgid in self.free_pages():
            if pgid in freed:
                problems.append(f"page {pgid}: already freed")
            freed.add(pgid)
        reachable: set[int] = {0, 1}
        if self.meta.freelist_pgid != NO_FREELIST:
            freelist = self.page(self.meta.freelist_pgid)
            reachable.update(
                range(freelist.start // self.meta.page_bytes, freelist.end // self.meta.page_bytes)
            )
        try:
            root = self.page(self.meta.root_pgid)
            self._check_tree(root, reachable, freed, problems, None, None, 0)
        except SnapshotFormatError as error:
            problems.append(str(error))
        if self.meta.freelist_pgid == NO_FREELIST:
            return problems  # bbolt then takes every unreachable page as free (etcd's case)
        for pgid in range(self.meta.high_water_pgid):
            if pgid not in reachable and pgid not in freed:
                problems.append(f"page {pgid}: unreachable unfreed")
        return problems

    def free_pages(self) -> list[int]:
        if self.meta.freelist_pgid == NO_FREELIST:
            return []
        node = self.page(self.meta.freelist_pgid)
        if node.flags != FREELIST_PAGE:
            raise SnapshotFormatError(f"{self.name}: page {node.pgid} is not a freelist page")
        first, count = node.start + PAGE_HEADER.size, node.count
        if count == FREELIST_COUNT_OVERFLOW:
            (count,) = FREELIST_ID.unpack_from(node.buffer, first)
            first += FREELIST_ID.size
        if first + count * FREELIST_ID.size > node.end:
            raise SnapshotFormatError(f"{self.name}: freelist of {count} ids overflows its page")
        return [
            FREELIST_ID.unpack_from(node.buffer, first + i * FREELIST_ID.size)[0]
            for i in range(count)
        ]

    def _check_tree(
        self,
        node: _Node,
        reachable: set[int],
        freed: set[int],
        problems: list[str],
        low: bytes | None,
        high: bytes | None,
        depth: int,
    ) -> None:
        if depth > limits.ETCD_SNAPSHOT_MAX_TREE_DEPTH:
            raise SnapshotFormatError(f"{self.name}: tree deeper than the limit (a page cycle?)")
        if node.pgid is not None:
            for pgid in range(node.pgid, node.pgid + node.overflow + 1):
                if pgid in reachable:
                    problems.append(f"page {pgid}: multiple references")
                    return
                if pgid in freed:
                    problems.append(f"page {pgid}: reachable freed")
                reachable.add(pgid)
        if node.flags == LEAF_PAGE:
            entries = list(self._leaf_entries(node))
            keys = [entry.key for entry in entries]
        elif node.flags == BRANCH_PAGE and node.pgid is not None:
            branches = list(self._branch_entries(node))
            keys = [key for key, _ in branches]
        else:
            problems.append(f"{self._where(node)}: invalid type {node.flags:#x}")
            return
        self._check_order(node, keys, low, high, problems)
        if node.flags == LEAF_PAGE:
            for entry in entries:
                if entry.is_bucket:
                    child = self._root_node(entry.value)
                    self._check_tree(child, reachable, freed, problems, None, None, depth + 1)
            return
        for index, (key, child_pgid) in enumerate(branches):
            child_high = branches[index + 1][0] if index + 1 < len(branches) else high
            self._check_tree(
                self.page(child_pgid), reachable, freed, problems, key, child_high, depth + 1
            )

    def _check_order(
        self,
        node: _Node,
        keys: list[bytes],
        low: bytes | None,
        high: bytes | None,
        problems: list[str],
    ) -> None:
        for previous, key in zip(keys, keys[1:], strict=False):
            if key <= previous:
                problems.append(f"{self._where(node)}: key {key!r} out of order")
        if keys and low is not None and keys[0] < low:
            problems.append(f"{self._where(node)}: first key below its branch key")
        if keys and high is not None and keys[-1] >= high:
            problems.append(f"{self._where(node)}: last key not below the next branch key")


def _page_size_guesses() -> list[int]:
    sizes = []
    size = limits.ETCD_SNAPSHOT_MIN_PAGE_BYTES
    while size <= limits.ETCD_SNAPSHOT_MAX_PAGE_BYTES:
        sizes.append(size)
        size *= 2
    return sizes


@contextmanager
def open_reader(path: str, size_bytes: int | None = None) -> Iterator[BoltReader]:
    """A reader over the first ``size_bytes`` of the file (default: all of it)."""
    with open(path, "rb") as handle:
        file_bytes = os.fstat(handle.fileno()).st_size
        if file_bytes == 0:
            raise SnapshotFormatError(f"{path}: empty file")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)[: file_bytes if size_bytes is None else size_bytes]
    try:
        yield BoltReader(view, name=path)
    finally:
        view.release()
        mapped.close()
