"""Key permissions: single keys, ranges, prefixes and open ends, and range coverage by
the union of grants (etcd's range_perm_cache semantics)."""

from __future__ import annotations

import pytest

from raftkv.server.auth.permissions import (
    OPEN_END,
    Permission,
    PermissionType,
    RangePermissions,
    interval_of,
    merge,
)

READ, WRITE, READWRITE = PermissionType.READ, PermissionType.WRITE, PermissionType.READWRITE


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def test_single_key_grant_covers_that_key_only() -> None:
    perms = RangePermissions([Permission(READ, b"/a")])
    assert perms.can_read(b"/a")
    assert not perms.can_read(b"/a0") and not perms.can_read(b"/")
    assert not perms.can_write(b"/a")
    # A range holding only /a is covered; one reaching past it is not.
    assert perms.can_read(b"/a", b"/a\x00")
    assert not perms.can_read(b"/a", b"/b")


def test_prefix_grant_covers_keys_and_subranges_but_not_beyond() -> None:
    perms = RangePermissions([Permission(READWRITE, b"/p", prefix_end(b"/p"))])
    assert perms.can_read(b"/p/1") and perms.can_write(b"/p/1")
    assert perms.can_read(b"/p", prefix_end(b"/p"))
    assert perms.can_read(b"/p/1", b"/p/3")
    assert not perms.can_read(b"/p/1", b"/q\x00")  # reaches past the grant
    assert not perms.can_read(b"/q")
    assert not perms.can_read(b"/p", OPEN_END)  # open-ended: to the end of the keyspace


def test_range_grant_is_half_open() -> None:
    perms = RangePermissions([Permission(WRITE, b"/w", b"/z")])
    assert perms.can_write(b"/w") and perms.can_write(b"/yzzz")
    assert not perms.can_write(b"/z")
    assert not perms.can_read(b"/w")


def test_open_ended_grant_covers_every_later_key() -> None:
    perms = RangePermissions([Permission(READ, b"m", OPEN_END)])
    assert perms.can_read(b"zzzz") and perms.can_read(b"m", OPEN_END)
    assert not perms.can_read(b"a") and not perms.can_read(b"a", OPEN_END)


def test_adjacent_grants_cover_a_range_together_but_a_gap_does_not() -> None:
    joined = RangePermissions([Permission(READ, b"a", b"c"), Permission(READ, b"c", b"f")])
    assert joined.can_read(b"a", b"f") and joined.can_read(b"b", b"e")
    gap = RangePermissions([Permission(READ, b"a", b"c"), Permission(READ, b"d", b"f")])
    assert not gap.can_read(b"a", b"f")
    assert gap.can_read(b"a", b"c") and gap.can_read(b"d", b"f")


def test_readwrite_counts_for_both_and_read_plus_write_grants_mix() -> None:
    perms = RangePermissions([Permission(READ, b"a", b"m"), Permission(WRITE, b"k", b"z")])
    assert perms.can_read(b"b") and not perms.can_write(b"b")
    assert perms.can_write(b"x") and not perms.can_read(b"x")
    assert perms.can_read(b"k") and perms.can_write(b"k")


def test_no_grants_permit_nothing_and_empty_grants_are_ignored() -> None:
    assert not RangePermissions([]).can_read(b"a")
    backwards = RangePermissions([Permission(READ, b"b", b"a")])  # etcd accepts such a grant
    assert not backwards.can_read(b"a") and not backwards.can_read(b"b")


def test_an_empty_request_range_asks_for_its_key() -> None:
    perms = RangePermissions([Permission(READ, b"k")])
    assert perms.can_read(b"k", b"k")  # etcdctl get k k
    assert not RangePermissions([Permission(READ, b"j")]).can_read(b"k", b"a")


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        ([(b"a", b"c"), (b"b", b"d")], [(b"a", b"d")]),
        ([(b"c", b"d"), (b"a", b"b")], [(b"a", b"b"), (b"c", b"d")]),
        ([(b"a", None), (b"b", b"c")], [(b"a", None)]),
        ([(b"a", b"e"), (b"b", b"c")], [(b"a", b"e")]),
        ([(b"b", b"a")], []),
    ],
)
def test_merge(
    intervals: list[tuple[bytes, bytes | None]], expected: list[tuple[bytes, bytes | None]]
) -> None:
    assert merge(intervals) == expected


def test_interval_of_follows_etcd_range_end_conventions() -> None:
    assert interval_of(b"k", b"") == (b"k", b"k\x00")
    assert interval_of(b"k", OPEN_END) == (b"k", None)
    assert interval_of(b"k", b"z") == (b"k", b"z")
