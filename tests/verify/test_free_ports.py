"""free_ports: ports handed out but not yet bound are not handed out again."""

from __future__ import annotations

from raftkv.verify import cluster


def test_ports_handed_out_are_not_handed_out_again_before_they_are_bound(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cluster, "FREE_PORT_RANGE", (21_000, 21_040))
    monkeypatch.setattr(cluster, "_given_ports", cluster.collections.deque(maxlen=100))
    picked: list[int] = []
    for _ in range(10):  # 40 of the 40 ports, none bound by anyone in between
        picked += cluster.free_ports(4)
    assert sorted(picked) == list(range(21_000, 21_040))


def test_a_range_with_too_few_ports_left_is_a_clear_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cluster, "FREE_PORT_RANGE", (21_100, 21_104))
    monkeypatch.setattr(cluster, "_given_ports", cluster.collections.deque(maxlen=100))
    cluster.free_ports(3)
    try:
        cluster.free_ports(3)
    except cluster.ClusterError as error:
        assert "no 3 free ports" in str(error)
    else:
        raise AssertionError("a fourth and fifth port were handed out of a 4-port range")


def test_pytest_workers_pick_from_disjoint_slices(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import _worker_port_range

    monkeypatch.setattr(cluster, "FREE_PORT_RANGE", (10_000, 20_000))
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for index in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        slices.append(_worker_port_range())
    assert slices == [(10_000, 13_333), (13_333, 16_666), (16_666, 19_999)]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert _worker_port_range() == (10_000, 20_000)
