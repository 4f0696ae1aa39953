"""A latency histogram with log-linear buckets, mergeable across processes.

Like an HDR histogram: values are nanoseconds, and each power of two is split into
``2**BENCH_HISTOGRAM_SUB_BUCKET_BITS`` equal buckets, so a bucket is at most 1/128 of its
values wide. A percentile is the midpoint of the bucket that holds the value of that rank
(clamped to the exact min and max), hence within 0.4% of the exact order statistic; the
stated error bound is ``BENCH_HISTOGRAM_RELATIVE_ERROR`` (1%). Count, sum, min and max are
exact. Values outside [1 µs, 60 s] are counted in the first or last bucket.

Usage:
    latency = Histogram()
    latency.record_ns(1_250_000)
    latency.merge(Histogram.from_dict(other_process_histogram.to_dict()))
    p99_ns = latency.percentile_ns(99.0)
"""

from __future__ import annotations

import math
from typing import Any

from raftkv import limits

SUB_BITS = limits.BENCH_HISTOGRAM_SUB_BUCKET_BITS
SUB_BUCKETS = 1 << SUB_BITS  # buckets per power of two
LOWEST_NS = limits.BENCH_HISTOGRAM_LOWEST_NS
HIGHEST_NS = limits.BENCH_HISTOGRAM_HIGHEST_NS


def bucket_index(value_ns: int) -> int:
    """The bucket of ``value_ns`` (already clamped): below 2**(SUB_BITS+1) every integer is a
    bucket; above, the top SUB_BITS+1 significant bits pick it."""
    shift = value_ns.bit_length() - SUB_BITS - 1
    if shift <= 0:
        return value_ns
    return (shift << SUB_BITS) + (value_ns >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """[lower, upper) of bucket ``index``, in ns."""
    if index < 2 * SUB_BUCKETS:
        return index, index + 1
    shift = (index >> SUB_BITS) - 1
    mantissa = index - (shift << SUB_BITS)
    assert SUB_BUCKETS <= mantissa < 2 * SUB_BUCKETS, (index, mantissa)
    return mantissa << shift, (mantissa + 1) << shift


BUCKET_COUNT = bucket_index(HIGHEST_NS) + 1


class Histogram:
    """Counts of latencies in log-linear buckets, with exact count, sum, min and max."""

    __slots__ = ("counts", "count", "sum_ns", "min_ns", "max_ns")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKET_COUNT
        self.count = 0
        self.sum_ns = 0
        self.min_ns = 0  # meaningful only when count > 0
        self.max_ns = 0

    def record_ns(self, value_ns: int) -> None:
        if value_ns < LOWEST_NS:
            clamped = LOWEST_NS
        elif value_ns > HIGHEST_NS:
            clamped = HIGHEST_NS
        else:
            clamped = value_ns
        self.counts[bucket_index(clamped)] += 1
        if self.count == 0 or value_ns < self.min_ns:
            self.min_ns = value_ns
        if value_ns > self.max_ns:
            self.max_ns = value_ns
        self.count += 1
        self.sum_ns += value_ns

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to this one."""
        if other.count == 0:
            return
        pairs = zip(self.counts, other.counts, strict=True)
        self.counts = [mine + theirs for mine, theirs in pairs]
        self.min_ns = other.min_ns if self.count == 0 else min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.sum_ns += other.sum_ns

    def percentile_ns(self, percent: float) -> float:
        """The value at ``percent`` (0..100) by nearest rank: the smallest value with at least
        that share of the values at or below it (0.0 for an empty histogram)."""
        assert 0.0 <= percent <= 100.0, percent
        if self.count == 0:
            return 0.0
        if percent >= 100.0:
            return float(self.max_ns)
        if percent <= 0.0:
            return float(self.min_ns)
        rank = max(1, math.ceil(percent / 100.0 * self.count))
        seen = 0
        for index, bucket_count in enumerate(self.counts):
            seen += bucket_count
            if seen >= rank:
                lower, upper = bucket_bounds(index)
                midpoint = (lower + upper - 1) / 2.0
                return min(max(midpoint, float(self.min_ns)), float(self.max_ns))
        raise AssertionError("bucket counts add up to less than count")

    def mean_ns(self) -> float:
        return self.sum_ns / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A compact, JSON- and pickle-friendly form (only the non-empty buckets)."""
        return {
            "count": self.count,
            "sum_ns": self.sum_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "buckets": [[i, c] for i, c in enumerate(self.counts) if c],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        for index, bucket_count in data["buckets"]:
            histogram.counts[int(index)] = int(bucket_count)
        histogram.count = int(data["count"])
        histogram.sum_ns = int(data["sum_ns"])
        histogram.min_ns = int(data["min_ns"])
        histogram.max_ns = int(data["max_ns"])
        assert sum(histogram.counts) == histogram.count, "corrupt histogram"
        return histogram

    def summary_ms(self) -> dict[str, float]:
        """count, mean, p50, p90, p99, p99.9, min and max (latencies in ms)."""
        ms = 1e-6
        return {
            "count": float(self.count),
            "mean_ms": self.mean_ns() * ms,
            "min_ms": self.min_ns * ms,
            "p50_ms": self.percentile_ns(50.0) * ms,
            "p90_ms": self.percentile_ns(90.0) * ms,
            "p99_ms": self.percentile_ns(99.0) * ms,
            "p99.9_ms": self.percentile_ns(99.9) * ms,
            "max_ms": self.max_ns * ms,
        }
