from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mvcc.helpers import BATCH_COMMITS, KV, open_backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every MVCC test function runs on a backend that commits each batch, and on one that
    batches commits into an open transaction as a member's does (the model-based test
    has a class for each)."""
    opens_its_own = metafunc.module.__name__.endswith("test_backend_batching")
    if "backend_commits" in metafunc.fixturenames and not opens_its_own:
        modes = ["commit-per-batch", "batched-commits"]
        metafunc.parametrize("backend_commits", modes, indirect=True)


@pytest.fixture(autouse=True)
def backend_commits(request: pytest.FixtureRequest) -> Iterator[None]:
    BATCH_COMMITS["enabled"] = getattr(request, "param", "") == "batched-commits"
    yield
    BATCH_COMMITS["enabled"] = False


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KV]:
    client = KV(open_backend(str(tmp_path / "backend")))
    yield client
    client.backend.close()
