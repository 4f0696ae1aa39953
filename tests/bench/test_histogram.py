"""The latency histogram: bucket layout, accuracy against numpy, merging, serialization."""

from __future__ import annotations

import numpy as np
import pytest

from raftkv import limits
from raftkv.bench.histogram import (
    BUCKET_COUNT,
    HIGHEST_NS,
    LOWEST_NS,
    Histogram,
    bucket_bounds,
    bucket_index,
)

ERROR = limits.BENCH_HISTOGRAM_RELATIVE_ERROR
PERCENTS = [0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 100.0]


def histogram_of(values: np.ndarray) -> Histogram:
    histogram = Histogram()
    for value in values.tolist():
        histogram.record_ns(int(value))
    return histogram


def latencies_ns(seed: int, size: int) -> np.ndarray:
    """Log-normal latencies around 2 ms spanning µs to seconds, as real ones do."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=np.log(2e6), sigma=1.5, size=size)
    return np.clip(values, LOWEST_NS, HIGHEST_NS).astype(np.int64)


def test_buckets_tile_the_range_and_are_narrow() -> None:
    previous_upper = bucket_bounds(bucket_index(LOWEST_NS))[0]
    for index in range(bucket_index(LOWEST_NS), BUCKET_COUNT):
        lower, upper = bucket_bounds(index)
        assert lower == previous_upper, index  # contiguous, no gaps or overlaps
        assert bucket_index(lower) == index and bucket_index(upper - 1) == index
        assert (upper - lower) / lower <= 1 / 128  # the midpoint is within 0.4%
        previous_upper = upper
    assert bucket_bounds(BUCKET_COUNT - 1)[1] > HIGHEST_NS


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_numpy_within_the_stated_error(seed: int) -> None:
    values = latencies_ns(seed, 50_000)
    histogram = histogram_of(values)
    for percent in PERCENTS:
        # Nearest rank is numpy's "inverted_cdf". Its default (linear interpolation) is
        # checked too where the data are dense; in the far tail neighbouring samples are
        # further apart than 1%, and the two definitions differ by more than any bucket.
        methods = ["inverted_cdf", "linear"] if percent <= 99.0 else ["inverted_cdf"]
        for method in methods:
            exact = float(np.percentile(values, percent, method=method))
            got = histogram.percentile_ns(percent)
            assert abs(got - exact) <= ERROR * exact, (percent, method, got, exact)
    assert histogram.count == len(values)
    assert histogram.min_ns == int(values.min()) and histogram.max_ns == int(values.max())
    assert histogram.mean_ns() == pytest.approx(float(values.mean()), rel=1e-9)


def test_merge_equals_recording_everything_in_one() -> None:
    values = latencies_ns(7, 20_000)
    whole = histogram_of(values)
    merged = Histogram()
    for part in np.array_split(values, 5):
        merged.merge(histogram_of(part))
    merged.merge(Histogram())  # merging an empty one changes nothing
    assert merged.counts == whole.counts
    assert (merged.count, merged.min_ns, merged.max_ns, merged.sum_ns) == (
        whole.count,
        whole.min_ns,
        whole.max_ns,
        whole.sum_ns,
    )
    for percent in PERCENTS:
        assert merged.percentile_ns(percent) == whole.percentile_ns(percent)


def test_round_trip_through_dict() -> None:
    histogram = histogram_of(latencies_ns(11, 1000))
    copy = Histogram.from_dict(histogram.to_dict())
    assert copy.counts == histogram.counts
    assert copy.summary_ms() == histogram.summary_ms()


def test_out_of_range_values_are_counted_and_min_max_stay_exact() -> None:
    histogram = Histogram()
    histogram.record_ns(10)  # below 1 µs
    histogram.record_ns(5_000_000)
    histogram.record_ns(HIGHEST_NS * 3)  # above 60 s
    assert histogram.count == 3
    assert histogram.min_ns == 10 and histogram.max_ns == HIGHEST_NS * 3
    assert histogram.percentile_ns(0.0) == 10.0  # clamped to the exact min
    assert histogram.percentile_ns(100.0) == HIGHEST_NS * 3
    assert abs(histogram.percentile_ns(50.0) - 5_000_000) <= ERROR * 5_000_000


def test_empty_histogram() -> None:
    histogram = Histogram()
    assert histogram.percentile_ns(99.0) == 0.0
    assert histogram.mean_ns() == 0.0
