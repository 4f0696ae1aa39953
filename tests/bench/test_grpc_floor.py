"""The gRPC floor benchmark runs its three bare servers and measures each workload."""

from __future__ import annotations

import math

import pytest

from raftkv.bench.grpc_floor import run


@pytest.mark.parametrize("server", ["grpcio", "h2"])
def test_the_floor_measures_every_workload_on_real_servers(server: str) -> None:
    # Enough streamed responses for /proc's 10 ms CPU ticks to see the h2 server's 3 µs each.
    runs = run(duration_s=1.0, clients=4, conns=2, watch_responses=30_000, server=server)
    assert [r.name.split(",")[0] for r in runs] == [
        "put",
        "serializable range",
        "put",
        "watch responses streamed",
    ]
    for floor in runs:
        assert floor.ops_per_s > 0, floor
        # The servers' own CPU, read from /proc while they answered.
        assert floor.server_cpu_per_op_us > 0, floor
    assert all(floor.p50_ms > 0 for floor in runs[:3]), runs
    assert math.isnan(runs[3].p50_ms)  # streamed responses: no request each
