"""Fixtures for the client tests: real etcd processes, and a runner for `async def` tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.etcd_cluster import EtcdCluster, run_etcd_cluster
from tests.etcd_process import EtcdProcess, run_etcd

# No single client test may run longer than this (a hang fails instead of stalling CI).
ASYNC_TEST_TIMEOUT_S = 45.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests on a fresh event loop (no pytest-asyncio needed)."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def bounded() -> None:
        await asyncio.wait_for(test(**arguments), ASYNC_TEST_TIMEOUT_S)

    asyncio.run(bounded())
    return True


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd member shared by a module's tests (each test uses its own key prefix)."""
    with run_etcd(tmp_path_factory.mktemp("etcd")) as process:
        yield process


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """An etcd member of the test's own (for compaction, which affects the whole store)."""
    with run_etcd(tmp_path) as process:
        yield process


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with run_etcd_cluster(tmp_path, size=3) as cluster:
        yield cluster


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test, so tests sharing an etcd do not see each other."""
    return f"/{request.node.name}/"
