"""Suite-wide setup: each pytest-xdist worker picks loopback ports from its own slice.

Two workers starting clusters at the same moment could otherwise both probe a port as free
before either member binds it (``raftkv.verify.cluster.free_ports``).
"""

from __future__ import annotations

import os

from raftkv.verify import cluster


def _worker_port_range() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers <= 1:
        return cluster.FREE_PORT_RANGE
    index = int(worker.removeprefix("gw"))
    low, high = cluster.FREE_PORT_RANGE
    width = (high - low) // workers
    return low + index * width, low + (index + 1) * width


cluster.FREE_PORT_RANGE = _worker_port_range()
