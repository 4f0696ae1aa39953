"""Range, option by option, against etcd's semantics."""

from __future__ import annotations

import pytest

from raftkv.storage.errors import (
    CompactedError,
    EmptyKeyError,
    FutureRevisionError,
    InvalidSortOptionError,
)
from raftkv.storage.mvcc import KeyValue, RangeRequest, SortOrder, SortTarget
from tests.mvcc.helpers import KV


def keys_of(kv: KV, key: bytes, **options: object) -> list[bytes]:
    return [item.key for item in kv.get(key, **options).kvs]


def test_empty_store_is_at_revision_1(kv: KV) -> None:
    response = kv.get(b"a")
    assert response.kvs == ()
    assert response.count == 0
    assert response.revision == 1


def test_put_key_is_returned_with_its_metadata(kv: KV) -> None:
    kv.put(b"a", b"1", lease=7)
    assert kv.get(b"a").kvs == (KeyValue(b"a", 2, 2, 1, b"1", 7),)


def test_empty_range_end_reads_one_key_not_its_prefix_neighbours(kv: KV) -> None:
    for key in (b"a", b"ab", b"b"):
        kv.put(key)
    assert keys_of(kv, b"a") == [b"a"]


def test_range_end_is_exclusive(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    assert keys_of(kv, b"a", range_end=b"c") == [b"a", b"b"]


def test_prefix_range_is_key_plus_one(kv: KV) -> None:
    for key in (b"a", b"a\x00", b"aa", b"a\xff\xff", b"b", b"`"):
        kv.put(key)
    assert keys_of(kv, b"a", range_end=b"b") == [b"a", b"a\x00", b"aa", b"a\xff\xff"]


def test_range_end_zero_byte_reads_every_key_from_key_on(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    assert keys_of(kv, b"b", range_end=b"\0") == [b"b", b"c"]


def test_key_and_range_end_zero_byte_read_everything(kv: KV) -> None:
    for key in (b"\x00", b"a", b"\xff"):
        kv.put(key)
    assert keys_of(kv, b"\0", range_end=b"\0") == [b"\x00", b"a", b"\xff"]


def test_range_end_not_after_key_is_empty(kv: KV) -> None:
    kv.put(b"b")
    assert keys_of(kv, b"b", range_end=b"b") == []
    assert keys_of(kv, b"b", range_end=b"a") == []


def test_limit_truncates_and_sets_more(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    response = kv.get(b"a", range_end=b"\0", limit=2)
    assert [item.key for item in response.kvs] == [b"a", b"b"]
    assert response.more
    assert response.count == 3


def test_limit_equal_to_the_count_is_not_more(kv: KV) -> None:
    for key in (b"a", b"b"):
        kv.put(key)
    response = kv.get(b"a", range_end=b"\0", limit=2)
    assert len(response.kvs) == 2
    assert not response.more


def test_negative_limit_means_no_limit(kv: KV) -> None:
    for key in (b"a", b"b"):
        kv.put(key)
    assert len(kv.get(b"a", range_end=b"\0", limit=-1).kvs) == 2


def test_past_revision_reads_the_value_then(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"a", b"2")
    assert kv.get(b"a", revision=2).kvs == (KeyValue(b"a", 2, 2, 1, b"1"),)
    assert kv.get(b"a", revision=3).kvs == (KeyValue(b"a", 2, 3, 2, b"2"),)


def test_historical_read_answers_with_the_current_revision(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"b")
    assert kv.get(b"a", revision=2).revision == 3


def test_revision_before_the_key_existed_is_empty(kv: KV) -> None:
    kv.put(b"x")
    kv.put(b"a")
    assert kv.get(b"a", revision=2).kvs == ()


def test_zero_or_negative_revision_reads_the_latest(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"a", b"2")
    assert kv.get(b"a", revision=0).kvs[0].value == b"2"
    assert kv.get(b"a", revision=-5).kvs[0].value == b"2"


def test_future_revision_fails(kv: KV) -> None:
    kv.put(b"a")
    with pytest.raises(FutureRevisionError) as error:
        kv.get(b"a", revision=3)
    assert str(error.value) == "etcdserver: mvcc: required revision is a future revision"


def test_revision_below_the_compaction_fails(kv: KV) -> None:
    for value in (b"1", b"2", b"3"):
        kv.put(b"a", value)
    kv.compact(3)
    with pytest.raises(CompactedError) as error:
        kv.get(b"a", revision=2)
    assert str(error.value) == "etcdserver: mvcc: required revision has been compacted"


def test_revision_at_the_compaction_is_readable(kv: KV) -> None:
    for value in (b"1", b"2", b"3"):
        kv.put(b"a", value)
    kv.compact(3)
    assert kv.get(b"a", revision=3).kvs[0].value == b"2"


def test_deleted_key_is_gone_after_the_delete_only(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.delete(b"a")
    assert kv.get(b"a").kvs == ()
    assert kv.get(b"a", revision=2).kvs[0].value == b"1"


def test_count_only_counts_without_values(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    response = kv.get(b"a", range_end=b"\0", count_only=True, limit=1)
    assert response.kvs == ()
    assert response.count == 3
    assert not response.more


def test_count_only_at_a_past_revision(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"b")
    assert kv.get(b"a", range_end=b"\0", count_only=True, revision=2).count == 1


def test_keys_only_drops_values_and_keeps_metadata(kv: KV) -> None:
    kv.put(b"a", b"value", lease=7)
    assert kv.get(b"a", keys_only=True).kvs == (KeyValue(b"a", 2, 2, 1, b"", 7),)


def test_version_counts_puts_and_create_revision_stays(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.put(b"a")
    (item,) = kv.get(b"a").kvs
    assert (item.create_revision, item.mod_revision, item.version) == (2, 4, 3)


def test_delete_resets_version_and_create_revision(kv: KV) -> None:
    kv.put(b"a")
    kv.put(b"a")
    kv.delete(b"a")
    kv.put(b"a")
    (item,) = kv.get(b"a").kvs
    assert (item.create_revision, item.mod_revision, item.version) == (5, 5, 1)


# --- Sorting -------------------------------------------------------------------


@pytest.fixture
def sortable(kv: KV) -> KV:
    """c: value 1, created 2, version 1;  a: value 3, created 3, version 2;
    b: value 2, created 4, version 1."""
    kv.put(b"c", b"1")
    kv.put(b"a", b"9")
    kv.put(b"b", b"2")
    kv.put(b"a", b"3")
    return kv


def test_default_order_is_ascending_keys(sortable: KV) -> None:
    assert keys_of(sortable, b"a", range_end=b"\0") == [b"a", b"b", b"c"]


def test_descending_keys(sortable: KV) -> None:
    order = keys_of(sortable, b"a", range_end=b"\0", sort_order=SortOrder.DESCEND)
    assert order == [b"c", b"b", b"a"]


@pytest.mark.parametrize(
    ("target", "ascending"),
    [
        (SortTarget.VERSION, [b"b", b"c", b"a"]),  # 1, 1, 2: ties keep key order
        (SortTarget.CREATE, [b"c", b"a", b"b"]),
        (SortTarget.MOD, [b"c", b"b", b"a"]),
        (SortTarget.VALUE, [b"c", b"b", b"a"]),
    ],
)
def test_ascending_by_target(sortable: KV, target: SortTarget, ascending: list[bytes]) -> None:
    order = keys_of(
        sortable, b"a", range_end=b"\0", sort_order=SortOrder.ASCEND, sort_target=target
    )
    assert order == ascending


def test_descending_by_target(sortable: KV) -> None:
    order = keys_of(
        sortable, b"a", range_end=b"\0", sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD
    )
    assert order == [b"a", b"b", b"c"]


def test_order_none_on_another_target_sorts_ascending(sortable: KV) -> None:
    order = keys_of(sortable, b"a", range_end=b"\0", sort_target=SortTarget.CREATE)
    assert order == [b"c", b"a", b"b"]


def test_sort_happens_before_the_limit(sortable: KV) -> None:
    response = sortable.get(
        b"a", range_end=b"\0", limit=1, sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD
    )
    assert [item.key for item in response.kvs] == [b"a"]
    assert response.more
    assert response.count == 3


# --- Revision filters ------------------------------------------------------------


def test_min_and_max_mod_revision(sortable: KV) -> None:
    # mod revisions: c 2, b 4, a 5
    assert keys_of(sortable, b"a", range_end=b"\0", min_mod_revision=4) == [b"a", b"b"]
    assert keys_of(sortable, b"a", range_end=b"\0", max_mod_revision=4) == [b"b", b"c"]


def test_min_and_max_create_revision(sortable: KV) -> None:
    # create revisions: c 2, a 3, b 4
    assert keys_of(sortable, b"a", range_end=b"\0", min_create_revision=3) == [b"a", b"b"]
    assert keys_of(sortable, b"a", range_end=b"\0", max_create_revision=3) == [b"a", b"c"]


def test_count_ignores_the_filters(sortable: KV) -> None:
    response = sortable.get(b"a", range_end=b"\0", min_mod_revision=5)
    assert [item.key for item in response.kvs] == [b"a"]
    assert response.count == 3


def test_filters_apply_before_the_limit(sortable: KV) -> None:
    response = sortable.get(b"a", range_end=b"\0", min_create_revision=3, limit=1)
    assert [item.key for item in response.kvs] == [b"a"]
    assert response.more


# --- Validation --------------------------------------------------------------------


def test_empty_key_is_refused(kv: KV) -> None:
    with pytest.raises(EmptyKeyError) as error:
        kv.get(b"")
    assert str(error.value) == "etcdserver: key is not provided"


@pytest.mark.parametrize("options", [{"sort_order": 3}, {"sort_target": 5}, {"sort_order": -1}])
def test_unknown_sort_option_is_refused(kv: KV, options: dict[str, int]) -> None:
    with pytest.raises(InvalidSortOptionError) as error:
        kv.store.range(RangeRequest(b"a", **options))  # type: ignore[arg-type]
    assert str(error.value) == "etcdserver: invalid sort option"
