"""The metrics registry (server/metrics.py): its text format, read back by Prometheus'
own parser, and its behaviour under threads and label floods."""

from __future__ import annotations

import logging
import math
import threading

import pytest

from raftkv import limits
from raftkv.server import metrics
from raftkv.server.metrics import Registry, exponential_buckets, format_value
from tests.metrics.scrape import parse


def test_counters_and_gauges_with_labels_round_trip() -> None:
    registry = Registry()
    requests = registry.counter("demo_requests_total", "Requests.", ["method", "code"])
    temperature = registry.gauge("demo_temperature_celsius", "A gauge.")
    requests.labels("Put", "OK").inc()
    requests.labels("Put", "OK").inc(2)
    requests.labels("Range", "Unavailable").inc()
    temperature.set(-3.5)

    scraped = parse(registry.render().decode())

    assert scraped.types == {"demo_requests": "counter", "demo_temperature_celsius": "gauge"}
    assert scraped.value("demo_requests_total", method="Put", code="OK") == 3
    assert scraped.value("demo_requests_total", method="Range", code="Unavailable") == 1
    assert scraped.value("demo_temperature_celsius") == -3.5
    assert scraped.helps["demo_requests"] == "Requests."


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    odd = 'a "quoted" back\\slash\nnewline'
    family = registry.gauge("demo_odd", 'help with \\ and\na newline and "quotes"', ["value"])
    family.labels(odd).set(1)

    scraped = parse(registry.render().decode())

    assert scraped.value("demo_odd", value=odd) == 1
    assert scraped.helps["demo_odd"] == 'help with \\ and\na newline and "quotes"'


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    registry = Registry()
    latency = registry.histogram("demo_seconds", "Latency.", [0.1, 1.0, 10.0], ["op"])
    for value in (0.05, 0.1, 0.5, 1.0, 20.0):  # 0.1 and 1.0 land in their own bucket
        latency.labels("get").observe(value)

    scraped = parse(registry.render().decode())

    assert scraped.types["demo_seconds"] == "histogram"
    buckets = {
        dict(labels)["le"]: value
        for labels, value in scraped.series("demo_seconds_bucket").items()
        if dict(labels)["op"] == "get"
    }
    assert buckets == {"0.1": 2, "1": 4, "10": 4, "+Inf": 5}  # Go writes le="1"
    assert scraped.value("demo_seconds_count", op="get") == 5
    assert scraped.value("demo_seconds_sum", op="get") == pytest.approx(21.65)
    assert latency.count("get") == 5


def test_values_are_written_as_prometheus_reads_them() -> None:
    assert format_value(3) == "3"
    assert format_value(2147483648.0) == "2147483648"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN"
    assert float(format_value(1e20)) == 1e20


def test_etcd_disk_buckets_span_1ms_to_8s() -> None:
    buckets = metrics.DISK_DURATION_BUCKETS_S
    assert len(buckets) == 14
    assert buckets[0] == pytest.approx(0.001) and buckets[-1] == pytest.approx(8.192)
    pairs = zip(buckets, buckets[1:], strict=False)
    assert all(later == pytest.approx(2 * earlier) for earlier, later in pairs)
    assert exponential_buckets(1, 10, 3) == (1, 10, 100)


def test_concurrent_updates_from_threads_are_not_lost() -> None:
    registry = Registry()
    counter = registry.counter("demo_total", "Counted from threads.")
    histogram = registry.histogram("demo_seconds", "Observed from threads.", [0.5])
    per_thread = 20_000

    def work() -> None:
        for _ in range(per_thread):
            counter.inc()
            histogram.observe(0.25)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    scraped = parse(registry.render().decode())
    assert scraped.value("demo_total") == 4 * per_thread
    assert scraped.value("demo_seconds_count") == 4 * per_thread
    assert scraped.value("demo_seconds_bucket", le="0.5") == 4 * per_thread


def test_label_flood_is_bounded_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(limits, "METRICS_MAX_SERIES_PER_FAMILY", 3)
    registry = Registry()
    family = registry.counter("demo_total", "Flooded.", ["peer"])
    with caplog.at_level(logging.WARNING, logger="raftkv.metrics"):
        for peer in range(10):
            family.labels(str(peer)).inc()

    assert len(parse(registry.render().decode()).series("demo_total")) == 3
    assert len([r for r in caplog.records if "new label values" in r.getMessage()]) == 1


def test_a_failing_refresher_does_not_break_the_render(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry()
    gauge = registry.gauge("demo_gauge", "Refreshed.")

    def broken() -> None:
        raise RuntimeError("boom")

    registry.add_refresher(broken)
    registry.add_refresher(lambda: gauge.set(7))
    with caplog.at_level(logging.ERROR, logger="raftkv.metrics"):
        scraped = parse(registry.render().decode())
    assert scraped.value("demo_gauge") == 7
    assert any("refreshing metrics failed" in r.getMessage() for r in caplog.records)


def test_counters_refuse_to_go_down_and_names_are_unique() -> None:
    registry = Registry()
    counter = registry.counter("demo_total", "Counter.")
    with pytest.raises(AssertionError):
        counter.inc(-1)
    with pytest.raises(AssertionError):
        registry.gauge("demo_total", "Twice.")


def test_bound_member_gauges_follow_its_samples() -> None:
    state = {"leader": 5}

    def sample() -> metrics.MemberSample:
        return metrics.MemberSample(
            leader_id=state["leader"],
            is_leader=False,
            is_learner=False,
            committed_index=10,
            applied_index=9,
            pending_proposals=2,
            db_size_bytes=4096,
            db_size_in_use_bytes=2048,
            quota_bytes=1 << 31,
            keys=3,
        )

    metrics.bind_member(0xABC, "3.5.0", sample)
    try:
        scraped = parse(metrics.REGISTRY.render().decode())
        assert scraped.value("etcd_server_has_leader") == 1
        assert scraped.value("etcd_server_id", server_id="abc") == 1
        assert scraped.value("etcd_server_proposals_committed_total") == 10
        assert scraped.value("etcd_server_proposals_applied_total") == 9
        assert scraped.value("etcd_mvcc_db_total_size_in_use_in_bytes") == 2048
        assert scraped.value("etcd_cluster_version", cluster_version="3.5") == 1
        state["leader"] = 0
        assert parse(metrics.REGISTRY.render().decode()).value("etcd_server_has_leader") == 0
    finally:
        metrics.unbind_member(sample)
    state["leader"] = 9  # no longer bound: the gauge keeps its last value
    assert parse(metrics.REGISTRY.render().decode()).value("etcd_server_has_leader") == 0
