"""Quota: request costs (etcd's quota.go) and the check made before proposing."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.storage.backend import DB_KEY
from raftkv.storage.errors import NoSpaceError
from raftkv.storage.mvcc import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    TxnRequest,
    request_cost_bytes,
)
from tests.mvcc.helpers import KV, open_backend


def test_put_costs_overhead_plus_key_and_value() -> None:
    assert request_cost_bytes(PutRequest(b"key", b"value")) == 256 + 3 + 5


def test_txn_costs_its_costlier_branch() -> None:
    request = TxnRequest(
        success=(PutRequest(b"a", b"1"), DeleteRangeRequest(b"b")),
        failure=(PutRequest(b"a", b"1"), PutRequest(b"b", b"22")),
    )
    assert request_cost_bytes(request) == (256 + 2) + (256 + 3)


def test_txn_without_puts_costs_nothing() -> None:
    request = TxnRequest(success=(RangeRequest(b"a"), DeleteRangeRequest(b"b")))
    assert request_cost_bytes(request) == 0


def test_nested_puts_cost_nothing_as_in_etcd() -> None:
    assert request_cost_bytes(TxnRequest(success=(TxnRequest(success=(PutRequest(b"a"),)),))) == 0


def test_over_quota_compares_size_in_use_plus_the_cost(kv: KV) -> None:
    used = kv.backend.size_in_use_bytes()
    kv.store.quota_bytes = used + 100
    assert not kv.store.over_quota(99)
    assert kv.store.over_quota(100)


def test_check_quota_refuses_a_put_past_the_quota(tmp_path: Path) -> None:
    kv = KV(open_backend(str(tmp_path / "b")), quota_bytes=1)
    with pytest.raises(NoSpaceError) as error:
        kv.store.check_quota(PutRequest(b"a"))
    assert str(error.value) == "etcdserver: mvcc: database space exceeded"
    kv.backend.close()


def test_check_quota_lets_a_txn_without_puts_through(tmp_path: Path) -> None:
    kv = KV(open_backend(str(tmp_path / "b")), quota_bytes=1)
    kv.store.check_quota(TxnRequest(success=(DeleteRangeRequest(b"a"),)))
    kv.backend.close()


def test_apply_path_does_not_check_the_quota(tmp_path: Path) -> None:
    # The size is this member's own; refusing at apply time would split replicas.
    kv = KV(open_backend(str(tmp_path / "b")), quota_bytes=1)
    assert kv.put(b"a").revision == 2
    kv.backend.close()


@pytest.mark.parametrize("batch_commits", [False, True])
def test_the_size_in_use_follows_commits_and_defragmentation(
    tmp_path: Path, batch_commits: bool
) -> None:
    # The size is remembered between commits (it is asked before every proposal): a
    # commit, batched or not, and a defragmentation must each be seen.
    backend = open_backend(str(tmp_path / "b"), batch_commits=batch_commits)
    empty = backend.size_in_use_bytes()
    for round_ in range(4):
        with backend.write() as batch:
            for n in range(200):
                batch.put(DB_KEY, f"{round_}-{n}".encode(), b"v" * 1024)
        backend.size_in_use_bytes()  # asked between batches, as before a proposal
    backend.commit_pending()
    grown = backend.size_in_use_bytes()
    assert grown >= empty + 800 * 1024
    with backend.write() as batch:
        for round_ in range(4):
            for n in range(200):
                assert batch.delete(DB_KEY, f"{round_}-{n}".encode())
    backend.defragment()
    assert backend.size_in_use_bytes() < grown - 400 * 1024
    backend.close()
