"""Shared fixtures for the interop tests: one 3-member raftkv cluster and one real etcd.

Both are module-scoped: a module starts each server once and its tests use keys of their
own, so they do not see each other's data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcd_process import EtcdProcess, run_etcd
from tests.procs import RaftkvCluster

CLUSTER_SIZE = 3


@pytest.fixture(scope="module")
def raftkv_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftkvCluster]:
    with RaftkvCluster.start(tmp_path_factory.mktemp("raftkv"), size=CLUSTER_SIZE) as cluster:
        cluster.wait_for_leader()
        yield cluster


@pytest.fixture(scope="module")
def real_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    with run_etcd(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd
