"""DeleteRange (and delete_keys, the lease revoke path) against etcd's semantics."""

from __future__ import annotations

import pytest

from raftkv.storage.errors import EmptyKeyError, TooManyChangesError
from raftkv.storage.mvcc import DeleteRangeRequest, KeyValue, kvstore_txn, validate_delete_range
from tests.mvcc.helpers import KV


def test_delete_one_key_makes_a_revision(kv: KV) -> None:
    kv.put(b"a")
    response = kv.delete(b"a")
    assert (response.revision, response.deleted) == (3, 1)
    assert kv.store.current_revision == 3
    assert kv.get(b"a").kvs == ()


def test_delete_of_a_missing_key_makes_no_revision(kv: KV) -> None:
    kv.put(b"a")
    response = kv.delete(b"b")
    assert (response.revision, response.deleted) == (2, 0)
    assert kv.store.current_revision == 2


def test_delete_of_a_deleted_key_makes_no_revision(kv: KV) -> None:
    kv.put(b"a")
    kv.delete(b"a")
    assert kv.delete(b"a").deleted == 0
    assert kv.store.current_revision == 3


def test_delete_range_deletes_the_keys_in_one_revision(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    response = kv.delete(b"a", range_end=b"c")
    assert (response.revision, response.deleted) == (5, 2)
    assert kv.pairs() == [(b"c", b"")]
    assert kv.stored_revisions()[-2:] == [(5, True), (5, True)]


def test_delete_from_key_on(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    assert kv.delete(b"b", range_end=b"\0").deleted == 2
    assert kv.pairs() == [(b"a", b"")]


def test_delete_everything(kv: KV) -> None:
    for key in (b"a", b"b"):
        kv.put(key)
    assert kv.delete(b"\0", range_end=b"\0").deleted == 2


def test_prev_kv_returns_the_deleted_values(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    response = kv.delete(b"a", range_end=b"\0", prev_kv=True)
    assert response.prev_kvs == (KeyValue(b"a", 2, 2, 1, b"1"), KeyValue(b"b", 3, 3, 1, b"2"))


def test_prev_kv_not_asked_is_empty(kv: KV) -> None:
    kv.put(b"a")
    assert kv.delete(b"a").prev_kvs == ()


def test_validate_delete_range_refuses_an_empty_key() -> None:
    with pytest.raises(EmptyKeyError) as error:
        validate_delete_range(DeleteRangeRequest(b""))
    assert str(error.value) == "etcdserver: key is not provided"


def test_delete_keys_deletes_existing_keys_in_one_revision(kv: KV) -> None:
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    with kv.backend.write() as batch:
        deleted = kv.store.delete_keys(batch, [b"a", b"c", b"missing"])
    assert deleted == 2
    assert kv.store.current_revision == 5
    assert kv.pairs() == [(b"b", b"")]


def test_delete_keys_of_missing_keys_makes_no_revision(kv: KV) -> None:
    with kv.backend.write() as batch:
        assert kv.store.delete_keys(batch, [b"a"]) == 0
    assert kv.store.current_revision == 1


def test_delete_of_more_keys_than_a_revision_holds_is_refused(
    kv: KV, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real bound is 2**20 changes per revision; shrink it to see it work.
    for key in (b"a", b"b", b"c"):
        kv.put(key)
    monkeypatch.setattr(kvstore_txn, "SUB_LIMIT", 3)
    with pytest.raises(TooManyChangesError):
        kv.delete(b"a", range_end=b"\0")
    with pytest.raises(TooManyChangesError), kv.backend.write() as batch:
        kv.store.delete_keys(batch, [b"a", b"b", b"c"])
    assert kv.delete(b"a", range_end=b"c").deleted == 2
    assert kv.pairs() == [(b"c", b"")]
