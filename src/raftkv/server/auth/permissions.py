"""Key permissions: what a role grants and whether a user's roles cover a request.

A permission is etcd's ``authpb.Permission``: a type and a key range in etcd's
conventions: an empty ``range_end`` grants the single key, ``range_end == b"\\x00"``
grants every key from ``key`` on, anything else grants ``[key, range_end)``.

A request on one key (empty ``range_end``) is permitted if a granted range holds the
key. A request on a range is permitted only if the union of the granted ranges covers
the whole range, as etcd's interval tree checks it: ``[a, c)`` is covered by grants
``[a, b)`` and ``[b, c)`` together, not by ``[a, b)`` alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

# etcd's range_end meaning "to the end of the keyspace".
OPEN_END = b"\x00"


class PermissionType(enum.IntEnum):
    """etcd's authpb.Permission.Type numbers."""

    READ = 0
    WRITE = 1
    READWRITE = 2

    def grants_read(self) -> bool:
        return self is not PermissionType.WRITE

    def grants_write(self) -> bool:
        return self is not PermissionType.READ


@dataclass(frozen=True, slots=True)
class Permission:
    perm_type: PermissionType
    key: bytes
    range_end: bytes = b""


# [begin, end) with end None meaning unbounded.
Interval = tuple[bytes, bytes | None]


def interval_of(key: bytes, range_end: bytes) -> Interval:
    """The keys ``(key, range_end)`` names, as a half-open interval."""
    if not range_end:
        return key, key + b"\x00"  # the smallest key after ``key``
    if range_end == OPEN_END:
        return key, None
    return key, range_end


def _is_empty(interval: Interval) -> bool:
    begin, end = interval
    return end is not None and end <= begin


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Disjoint, sorted intervals covering exactly the union of ``intervals`` (touching
    ones joined); empty intervals (a grant whose range_end is not after its key) are
    dropped."""
    merged: list[Interval] = []
    for begin, end in sorted(i for i in intervals if not _is_empty(i)):
        if merged:
            last_begin, last_end = merged[-1]
            if last_end is None or begin <= last_end:
                if last_end is not None and (end is None or end > last_end):
                    merged[-1] = (last_begin, end)
                continue
        merged.append((begin, end))
    return merged


def covers(merged: list[Interval], key: bytes, range_end: bytes) -> bool:
    """Whether the merged grants cover the request on ``(key, range_end)``. A request
    whose range is empty (range_end not after key) asks for ``key`` alone."""
    begin, end = interval_of(key, range_end)
    if _is_empty((begin, end)):
        begin, end = interval_of(key, b"")
    for grant_begin, grant_end in merged:
        if grant_begin > begin:
            return False  # sorted: no later grant starts at or before ``begin``
        if grant_end is None:
            return True
        if begin < grant_end:
            return end is not None and end <= grant_end
    return False


class RangePermissions:
    """One user's merged grants, for reading and for writing."""

    def __init__(self, permissions: Iterable[Permission]) -> None:
        granted = list(permissions)
        self.read = merge(
            interval_of(p.key, p.range_end) for p in granted if p.perm_type.grants_read()
        )
        self.write = merge(
            interval_of(p.key, p.range_end) for p in granted if p.perm_type.grants_write()
        )

    def can_read(self, key: bytes, range_end: bytes = b"") -> bool:
        return covers(self.read, key, range_end)

    def can_write(self, key: bytes, range_end: bytes = b"") -> bool:
        return covers(self.write, key, range_end)
