"""Put, option by option, against etcd's semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.storage.errors import (
    EmptyKeyError,
    KeyNotFoundError,
    LeaseNotFoundError,
    LeaseProvidedError,
    ValueProvidedError,
)
from raftkv.storage.mvcc import KeyValue, PutRequest, validate_put
from tests.mvcc.helpers import KV, open_backend


def test_each_put_makes_one_revision(kv: KV) -> None:
    assert kv.put(b"a").revision == 2
    assert kv.put(b"b").revision == 3
    assert kv.store.current_revision == 3


def test_first_put_creates_the_key_at_version_1(kv: KV) -> None:
    kv.put(b"a", b"1")
    assert kv.get(b"a").kvs == (KeyValue(b"a", 2, 2, 1, b"1"),)


def test_prev_kv_returns_the_value_before_the_put(kv: KV) -> None:
    kv.put(b"a", b"1")
    response = kv.put(b"a", b"2", prev_kv=True)
    assert response.prev_kv == KeyValue(b"a", 2, 2, 1, b"1")


def test_prev_kv_of_a_new_key_is_none(kv: KV) -> None:
    assert kv.put(b"a", prev_kv=True).prev_kv is None


def test_prev_kv_not_asked_is_none(kv: KV) -> None:
    kv.put(b"a")
    assert kv.put(b"a").prev_kv is None


def test_put_with_a_known_lease_stores_it(kv: KV) -> None:
    kv.put(b"a", lease=7)
    assert kv.get(b"a").kvs[0].lease == 7


def test_put_with_an_unknown_lease_fails_and_writes_nothing(kv: KV) -> None:
    with pytest.raises(LeaseNotFoundError) as error:
        kv.put(b"a", lease=99)
    assert str(error.value) == "etcdserver: requested lease not found"
    assert kv.store.current_revision == 1


def test_without_a_lease_checker_every_lease_is_unknown(tmp_path: Path) -> None:
    kv = KV(open_backend(str(tmp_path / "b")), lease_checker=None)
    with pytest.raises(LeaseNotFoundError):
        kv.put(b"a", lease=7)
    kv.backend.close()


def test_put_without_lease_drops_the_old_lease(kv: KV) -> None:
    kv.put(b"a", lease=7)
    kv.put(b"a")
    assert kv.get(b"a").kvs[0].lease == 0


def test_ignore_value_keeps_the_value(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"a", ignore_value=True, lease=7)
    assert kv.get(b"a").kvs == (KeyValue(b"a", 2, 3, 2, b"1", 7),)


def test_ignore_value_of_a_missing_key_fails(kv: KV) -> None:
    with pytest.raises(KeyNotFoundError) as error:
        kv.put(b"a", ignore_value=True)
    assert str(error.value) == "etcdserver: key not found"
    assert kv.store.current_revision == 1


def test_ignore_lease_keeps_the_lease(kv: KV) -> None:
    kv.put(b"a", b"1", lease=7)
    kv.put(b"a", b"2", ignore_lease=True)
    assert kv.get(b"a").kvs == (KeyValue(b"a", 2, 3, 2, b"2", 7),)


def test_ignore_lease_of_a_deleted_key_fails(kv: KV) -> None:
    kv.put(b"a", lease=7)
    kv.delete(b"a")
    with pytest.raises(KeyNotFoundError):
        kv.put(b"a", ignore_lease=True)


def test_unknown_lease_is_reported_before_a_missing_key(kv: KV) -> None:
    # etcd's Put looks the lease up first.
    with pytest.raises(LeaseNotFoundError):
        kv.put(b"a", ignore_value=True, lease=99)


def test_put_after_delete_starts_a_new_generation(kv: KV) -> None:
    kv.put(b"a", b"1")
    kv.put(b"a", b"2")
    kv.delete(b"a")
    kv.put(b"a", b"3")
    assert kv.get(b"a").kvs == (KeyValue(b"a", 5, 5, 1, b"3"),)


def test_empty_value_is_a_value(kv: KV) -> None:
    kv.put(b"a", b"")
    assert kv.get(b"a").count == 1


# --- Validation before proposing (etcd's checkPutRequest) ---------------------------


def test_validate_put_refuses_an_empty_key() -> None:
    with pytest.raises(EmptyKeyError) as error:
        validate_put(PutRequest(b""))
    assert str(error.value) == "etcdserver: key is not provided"


def test_validate_put_refuses_ignore_value_with_a_value() -> None:
    with pytest.raises(ValueProvidedError) as error:
        validate_put(PutRequest(b"a", b"v", ignore_value=True))
    assert str(error.value) == "etcdserver: value is provided"


def test_validate_put_refuses_ignore_lease_with_a_lease() -> None:
    with pytest.raises(LeaseProvidedError) as error:
        validate_put(PutRequest(b"a", lease=7, ignore_lease=True))
    assert str(error.value) == "etcdserver: lease is provided"


def test_validate_put_accepts_ignore_flags_alone() -> None:
    validate_put(PutRequest(b"a", ignore_value=True, ignore_lease=True))


# --- The lessor is told which keys carry which lease ----------------------------------


class FakeLessor:
    def __init__(self) -> None:
        self.key_lease: dict[bytes, int] = {}
        self.calls: list[tuple[str, int, bytes]] = []

    def lease_of(self, key: bytes) -> int:
        return self.key_lease.get(key, 0)

    def attach(self, lease_id: int, key: bytes) -> None:
        self.calls.append(("attach", lease_id, key))
        self.key_lease[key] = lease_id

    def detach(self, lease_id: int, key: bytes) -> None:
        self.calls.append(("detach", lease_id, key))
        del self.key_lease[key]


def test_lessor_sees_attach_move_and_detach(tmp_path: Path) -> None:
    lessor = FakeLessor()
    kv = KV(open_backend(str(tmp_path / "b")), leases=lessor)
    kv.put(b"a", lease=7)
    kv.put(b"a", lease=8)
    kv.put(b"a", ignore_lease=True)
    kv.delete(b"a")
    assert lessor.calls == [
        ("attach", 7, b"a"),
        ("detach", 7, b"a"),
        ("attach", 8, b"a"),
        ("detach", 8, b"a"),
        ("attach", 8, b"a"),
        ("detach", 8, b"a"),
    ]
    assert lessor.key_lease == {}
    kv.backend.close()


def test_keys_with_leases_lists_live_leased_keys(kv: KV) -> None:
    kv.put(b"a", lease=7)
    kv.put(b"b")
    kv.put(b"c", lease=8)
    kv.put(b"d", lease=8)
    kv.delete(b"d")
    assert kv.store.keys_with_leases() == [(b"a", 7), (b"c", 8)]
