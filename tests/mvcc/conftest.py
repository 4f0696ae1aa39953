from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mvcc.helpers import KV, open_backend


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KV]:
    client = KV(open_backend(str(tmp_path / "backend")))
    yield client
    client.backend.close()
