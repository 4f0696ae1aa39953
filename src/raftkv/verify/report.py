"""The report of one ``raftkv verify`` run: a results folder made from its RunRecord.

``write_report(record, out_dir)`` writes:

- ``record.json``: the RunRecord itself, so the report can be made again
  (``python -m raftkv.verify.report RECORD.json OUT_DIR``);
- ``summary.json``: the run's summary, latency percentiles, ops and faults counted per kind,
  and ``"passed"``;
- ``summary.txt``: the same for a person (also what the runner prints);
- ``history.jsonl``: one operation per line;
- ``timeline.png``: throughput and latency over time, with the fault windows shaded;
- ``index.html``: one self-contained page with all of the above and, for each anomaly, its
  sub-history drawn as a timeline (one row per client, one bar per operation).

Percentiles are nearest-rank (the smallest value with at least p% of the values at or below
it), so every reported latency is one that a client saw.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from raftkv.limits import (
    REPORT_MAX_THROUGHPUT_BUCKETS,
    REPORT_SCATTER_MAX_POINTS,
    REPORT_SVG_LABEL_MAX_CHARS,
    REPORT_SVG_MAX_OPS,
    REPORT_SVG_TOOLTIP_MAX_CHARS,
)
from raftkv.verify.records import WORKLOADS, Anomaly, FaultRecord, OpRecord, RunRecord

T = TypeVar("T")

ALL_WORKLOADS = "all"
PERCENTILES = (50, 90, 99)
STATUSES = ("ok", "fail", "unknown")

# The timeline image: 1400 x 800 px.
TIMELINE_SIZE_IN = (14.0, 8.0)
TIMELINE_DPI = 100
THROUGHPUT_BUCKET_S = 1.0
# Latencies are drawn on a log scale, which cannot show zero.
MIN_PLOTTED_LATENCY_MS = 1e-3

WORKLOAD_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f")
FAULT_COLOURS = ("#d62728", "#ff7f0e", "#e377c2", "#9467bd", "#bcbd22", "#17becf", "#8c564b")
STATUS_FILL = {"ok": "#c8e6c9", "fail": "#f8d0cc", "unknown": "#fff1c1"}
STATUS_STROKE = {"ok": "#2e7d32", "fail": "#c62828", "unknown": "#a67c00"}
OTHER_FILL = "#e0e0e0"
OTHER_STROKE = "#616161"


@dataclass(frozen=True)
class ReportFiles:
    summary_json: Path
    summary_txt: Path
    history_jsonl: Path
    timeline_png: Path
    index_html: Path
    record_json: Path


def write_report(record: RunRecord, out_dir: Path) -> ReportFiles:
    """Write every report file of ``record`` into ``out_dir`` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        summary_json=out_dir / "summary.json",
        summary_txt=out_dir / "summary.txt",
        history_jsonl=out_dir / "history.jsonl",
        timeline_png=out_dir / "timeline.png",
        index_html=out_dir / "index.html",
        record_json=out_dir / "record.json",
    )
    record.save(files.record_json)
    summary = summary_json(record)
    files.summary_json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    files.summary_txt.write_text(summary_text(record), encoding="utf-8")
    with files.history_jsonl.open("w", encoding="utf-8") as history:
        for op in record.ops:
            history.write(json.dumps(op_json(op)) + "\n")
    write_timeline_png(record, files.timeline_png)
    files.index_html.write_text(index_html(record, files.timeline_png.name), encoding="utf-8")
    return files


# --- Numbers -----------------------------------------------------------------------------


_OP_FIELDS = tuple(f.name for f in fields(OpRecord))


def op_json(op: OpRecord) -> dict[str, Any]:
    """``asdict(op)`` without its deep copy, which is most of the time at 200k ops."""
    return {name: getattr(op, name) for name in _OP_FIELDS}


def run_passed(record: RunRecord) -> bool:
    """The run passed: its summary says so and it recorded no anomaly."""
    return record.summary.passed and not record.anomalies


def latency_ms(op: OpRecord) -> float | None:
    """How long the client waited for a definite answer; None when there was none."""
    if op.return_s is None:
        return None
    return (op.return_s - op.call_s) * 1000.0


def nearest_rank(sorted_values: Sequence[float], percentile: int) -> float:
    assert sorted_values, "a percentile of nothing"
    assert 0 < percentile <= 100
    rank = -(-percentile * len(sorted_values) // 100)  # ceil without floats
    return sorted_values[rank - 1]


def latency_percentiles(ops: Sequence[OpRecord]) -> dict[str, dict[str, float]]:
    """p50/p90/p99/max latency in ms of the ok ops, per workload and over "all".

    A workload (or "all") with no ok op has no entry: there is nothing to report.
    """
    by_workload: dict[str, list[float]] = {}
    for op in ops:
        latency = latency_ms(op)
        if op.status != "ok" or latency is None:
            continue
        by_workload.setdefault(op.workload, []).append(latency)
        by_workload.setdefault(ALL_WORKLOADS, []).append(latency)
    result: dict[str, dict[str, float]] = {}
    for workload in [*_ordered_workloads(by_workload), ALL_WORKLOADS]:
        latencies = sorted(by_workload.get(workload, ()))
        if not latencies:
            continue
        row = {f"p{p}": nearest_rank(latencies, p) for p in PERCENTILES}
        row["max"] = latencies[-1]
        result[workload] = row
    return result


def ops_by_workload(ops: Iterable[OpRecord]) -> dict[str, dict[str, int]]:
    """How many ops ended in each status, per workload."""
    counts: dict[str, Counter[str]] = {}
    for op in ops:
        counts.setdefault(op.workload, Counter())[op.status] += 1
    return {w: dict(sorted(counts[w].items())) for w in _ordered_workloads(counts)}


def plot_end_s(record: RunRecord) -> float:
    """The right edge of the run's time axis: the last thing that happened, or the duration."""
    times = [record.summary.duration_s]
    for op in record.ops:
        times.append(op.call_s)
        if op.return_s is not None:
            times.append(op.return_s)
    for fault in record.faults:
        times.append(fault.start_s if fault.end_s is None else fault.end_s)
    end_s = max((t for t in times if math.isfinite(t)), default=0.0)
    return end_s if end_s > 0 else 1.0


def faults_by_kind(faults: Iterable[FaultRecord], end_s: float) -> dict[str, dict[str, float]]:
    """Per fault kind: how many were injected and for how many seconds in total.

    A fault never healed counts until ``end_s``.
    """
    result: dict[str, dict[str, float]] = {}
    for fault in faults:
        row = result.setdefault(fault.kind, {"count": 0, "total_s": 0.0})
        row["count"] += 1
        row["total_s"] += max(0.0, _fault_end_s(fault, end_s) - fault.start_s)
    return dict(sorted(result.items()))


def summary_json(record: RunRecord) -> dict[str, Any]:
    """What summary.json holds: the RunSummary fields plus what the report counts itself."""
    data: dict[str, Any] = {"passed": run_passed(record)}
    data.update(asdict(record.summary))
    data["ops_by_workload"] = ops_by_workload(record.ops)
    data["latency_ms"] = latency_percentiles(record.ops)
    data["faults_by_kind"] = faults_by_kind(record.faults, plot_end_s(record))
    data["anomaly_checkers"] = dict(sorted(Counter(a.checker for a in record.anomalies).items()))
    return data


def downsample(items: Sequence[T], max_items: int) -> list[T]:
    """Every k-th item, k as small as keeps at most ``max_items``: the same items every time."""
    assert max_items >= 1
    stride = max(1, -(-len(items) // max_items))
    return list(items[::stride])


def _fault_end_s(fault: FaultRecord, end_s: float) -> float:
    return end_s if fault.end_s is None else fault.end_s


def _ordered_workloads(workloads: Iterable[str]) -> list[str]:
    """The known workloads in their usual order, then any others by name."""
    present = {w for w in workloads if w != ALL_WORKLOADS}
    return [w for w in WORKLOADS if w in present] + sorted(present.difference(WORKLOADS))


def _colour_map(names: Iterable[str], palette: Sequence[str]) -> dict[str, str]:
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- summary.txt -------------------------------------------------------------------------


def summary_text(record: RunRecord) -> str:
    """The human summary of a run: what the console shows and summary.txt holds."""
    s = record.summary
    verdict = "PASS" if run_passed(record) else "FAIL"
    lines = [
        f"{verdict}  target {s.target}, {s.nodes} nodes, seed {s.seed}, "
        f"faults for {s.duration_s:.1f} s (wall {s.wall_s:.1f} s), started {s.started_at}",
        f"replay: {s.command}",
        "",
        *_ops_table(record.ops),
        f"ops checked (linearizability): {s.ops_checked}",
        "",
        *_faults_lines(record),
        "",
        "verdicts:",
        *([f"  {checker:<20} {v}" for checker, v in s.verdicts.items()] or ["  (none)"]),
        "",
        *_latency_table(latency_percentiles(record.ops)),
        "",
        *_anomaly_lines(record.anomalies),
    ]
    return "\n".join(lines) + "\n"


def _status_columns(ops: Iterable[OpRecord]) -> list[str]:
    extra = sorted({op.status for op in ops}.difference(STATUSES))
    return [*STATUSES, *extra]


def _ops_table(ops: Sequence[OpRecord]) -> list[str]:
    columns = _status_columns(ops)
    counts = ops_by_workload(ops)
    totals: Counter[str] = Counter(op.status for op in ops)
    header = f"{'ops':<12}" + "".join(f"{c:>9}" for c in columns) + f"{'total':>9}"

    def row(name: str, by_status: dict[str, int]) -> str:
        cells = "".join(f"{by_status.get(c, 0):>9}" for c in columns)
        return f"{name:<12}{cells}{sum(by_status.values()):>9}"

    body = [row(w, by_status) for w, by_status in counts.items()]
    return [header, *body, row(ALL_WORKLOADS, dict(totals))]


def _faults_lines(record: RunRecord) -> list[str]:
    requested = ", ".join(record.summary.faults_requested) or "none"
    kinds = faults_by_kind(record.faults, plot_end_s(record))
    lines = [f"faults requested: {requested}", f"faults injected: {len(record.faults)}"]
    for kind, row in kinds.items():
        lines.append(f"  {kind:<20} {int(row['count']):>5} x  {row['total_s']:>9.1f} s in total")
    return lines


def _latency_table(percentiles: dict[str, dict[str, float]]) -> list[str]:
    columns = [f"p{p}" for p in PERCENTILES] + ["max"]
    header = f"{'latency ms':<12}" + "".join(f"{c:>10}" for c in columns)
    if not percentiles:
        return [header, "  (no ok ops)"]
    body = [
        f"{w:<12}" + "".join(f"{row[c]:>10.1f}" for c in columns) for w, row in percentiles.items()
    ]
    return [header, *body]


def _anomaly_lines(anomalies: Sequence[Anomaly]) -> list[str]:
    if not anomalies:
        return ["anomalies: none"]
    return [f"anomalies: {len(anomalies)}"] + [
        f"  [{a.checker}] {_one_line(a.summary)}" for a in anomalies
    ]


# --- timeline.png ------------------------------------------------------------------------


@dataclass(frozen=True)
class _OpArrays:
    """The columns of the ops the timeline draws, as numpy arrays (fast at 200k ops)."""

    call_s: np.ndarray[Any, np.dtype[np.float64]]
    return_s: np.ndarray[Any, np.dtype[np.float64]]  # NaN for no return


def _op_arrays(ops: Sequence[OpRecord]) -> _OpArrays:
    call = np.fromiter((op.call_s for op in ops), dtype=np.float64, count=len(ops))
    ret = np.fromiter(
        (math.nan if op.return_s is None else op.return_s for op in ops),
        dtype=np.float64,
        count=len(ops),
    )
    return _OpArrays(call, ret)


def write_timeline_png(record: RunRecord, path: Path) -> None:
    """Throughput (top) and latency (bottom) over the run, with the fault windows shaded."""
    end_s = plot_end_s(record)
    figure = Figure(figsize=TIMELINE_SIZE_IN, dpi=TIMELINE_DPI)
    FigureCanvasAgg(figure)
    throughput_ax, latency_ax = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [1.0, 1.4]}
    )
    workloads = _ordered_workloads(op.workload for op in record.ops)
    colours = _colour_map(workloads, WORKLOAD_COLOURS)
    _draw_throughput(throughput_ax, record.ops, workloads, colours, end_s)
    note = _draw_latency(latency_ax, record.ops, workloads, colours)
    _shade_faults([throughput_ax, latency_ax], record.faults, end_s)
    latency_ax.set_xlim(0.0, end_s)
    latency_ax.set_xlabel("seconds since start")
    s = record.summary
    verdict = "PASS" if run_passed(record) else "FAIL"
    title = f"{verdict}: {s.target}, {s.nodes} nodes, seed {s.seed}, {len(record.ops)} ops"
    figure.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)
    figure.tight_layout()
    figure.savefig(path, format="png")


def _draw_throughput(
    ax: Axes, ops: Sequence[OpRecord], workloads: list[str], colours: dict[str, str], end_s: float
) -> None:
    """Ok ops/s per workload (by return time); fails (by return) and unknowns (by call) thin."""
    # Equal buckets of about THROUGHPUT_BUCKET_S that end exactly at end_s: a partial last
    # bucket would draw a false drop (or spike) in throughput.
    wanted_s = max(THROUGHPUT_BUCKET_S, end_s / REPORT_MAX_THROUGHPUT_BUCKETS)
    buckets = max(1, round(end_s / wanted_s))
    bucket_s = end_s / buckets
    centres_s = (np.arange(buckets) + 0.5) * bucket_s

    def rate(times_s: Iterable[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
        t = np.fromiter(times_s, dtype=np.float64)
        t = t[np.isfinite(t)]
        index = np.clip((t // bucket_s).astype(np.int64), 0, buckets - 1)
        return np.bincount(index, minlength=buckets).astype(np.float64) / bucket_s

    for workload in workloads:
        ok = (
            op.return_s
            for op in ops
            if op.workload == workload and op.status == "ok" and op.return_s is not None
        )
        ax.plot(centres_s, rate(ok), color=colours[workload], linewidth=1.4, label=workload)
    fails = (op.return_s for op in ops if op.status == "fail" and op.return_s is not None)
    ax.plot(centres_s, rate(fails), color="black", linewidth=0.7, linestyle="--", label="fail")
    unknowns = (op.call_s for op in ops if op.status == "unknown")
    ax.plot(centres_s, rate(unknowns), color="red", linewidth=0.7, linestyle=":", label="unknown")
    ax.set_ylabel(f"ops/s ({bucket_s:.2g} s buckets)")
    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
    ax.grid(True, alpha=0.3)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, title="ops", title_fontsize=8
    )


def _draw_latency(
    ax: Axes, ops: Sequence[OpRecord], workloads: list[str], colours: dict[str, str]
) -> str:
    """Latency of ok ops at their call time (log scale); unknowns as marks along the top.

    Returns a note for the title when the scatter shows only a sample.
    """
    ok_ops = downsample(
        [op for op in ops if op.status == "ok" and op.return_s is not None],
        REPORT_SCATTER_MAX_POINTS,
    )
    unknown_ops = downsample(
        [op for op in ops if op.status == "unknown"], REPORT_SCATTER_MAX_POINTS
    )
    ok_total = sum(1 for op in ops if op.status == "ok" and op.return_s is not None)
    unknown_total = sum(1 for op in ops if op.status == "unknown")
    for workload in workloads:
        mine = [op for op in ok_ops if op.workload == workload]
        if not mine:
            continue
        arrays = _op_arrays(mine)
        latency = np.maximum((arrays.return_s - arrays.call_s) * 1000.0, MIN_PLOTTED_LATENCY_MS)
        ax.scatter(
            arrays.call_s,
            latency,
            s=4,
            color=colours[workload],
            alpha=0.5,
            linewidths=0,
            label=workload,
        )
    if unknown_ops:
        calls = _op_arrays(unknown_ops).call_s
        ax.plot(
            calls,
            np.full(len(calls), 0.97),
            linestyle="none",
            marker="|",
            markersize=9,
            color="red",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_yscale("log")
    if not ok_ops:
        ax.set_ylim(0.1, 1000.0)  # an empty log axis still needs a range
    ax.set_ylabel("latency ms (ok ops; | = unknown op called)")
    ax.grid(True, which="major", alpha=0.3)
    notes = []
    if len(ok_ops) < ok_total:
        notes.append(f"latency shows {len(ok_ops)} of {ok_total} ok ops (every k-th)")
    if len(unknown_ops) < unknown_total:
        notes.append(f"{len(unknown_ops)} of {unknown_total} unknown ops marked")
    return "; ".join(notes)


def _shade_faults(axes: Sequence[Axes], faults: Sequence[FaultRecord], end_s: float) -> None:
    kinds = sorted({f.kind for f in faults})
    colours = _colour_map(kinds, FAULT_COLOURS)
    for ax in axes:
        for fault in faults:
            ax.axvspan(
                fault.start_s,
                _fault_end_s(fault, end_s),
                color=colours[fault.kind],
                alpha=0.2,
                linewidth=0,
            )
    handles: list[Any] = [Patch(color=colours[k], alpha=0.3, label=k) for k in kinds]
    handles.append(Line2D([], [], linestyle="none", marker="|", color="red", label="unknown op"))
    axes[-1].legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=8,
        title="faults" if kinds else None,
        title_fontsize=8,
    )


# --- index.html --------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1450px; padding: 0 1em; color: #222; }
h1 .pass { color: #2e7d32; } h1 .fail { color: #c62828; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { background: #f5f5f5; padding: 0.1em 0.3em; }
pre { padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: middle; opacity: 0.5; }
.verdict-ok { color: #2e7d32; } .verdict-anomaly { color: #c62828; font-weight: bold; }
.verdict-unknown { color: #a67c00; }
.anomaly { border-left: 4px solid #c62828; padding-left: 1em; margin-bottom: 2em; }
img { max-width: 100%; }
""".strip()


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned.

    An empty ``header`` gives a table without a header row.
    """
    head = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead>"
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{head if header else ''}<tbody>{body}</tbody></table>"


def index_html(record: RunRecord, timeline_png_name: str) -> str:
    """One self-contained page for the run; every recorded string is escaped."""
    s = record.summary
    passed = run_passed(record)
    verdict = '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>raftkv verify: {'PASS' if passed else 'FAIL'} {_e(s.target)} seed {_e(s.seed)}"
        "</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{verdict} {_e(s.target)}, {_e(s.nodes)} nodes, seed {_e(s.seed)}</h1>",
        _summary_section(record),
        "<h2>Timeline</h2>",
        f'<img src="{_e(timeline_png_name)}" alt="throughput and latency over time">',
        _latency_section(record.ops),
        _faults_section(record),
        _verdicts_section(record),
        _anomalies_section(record.anomalies),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_section(record: RunRecord) -> str:
    s = record.summary
    facts = [
        ("target", _e(s.target)),
        ("nodes", _e(s.nodes)),
        ("seed", _e(s.seed)),
        ("fault phase", f"{s.duration_s:.1f} s"),
        ("whole run", f"{s.wall_s:.1f} s"),
        ("started", _e(s.started_at)),
        ("replay", f"<code>{_e(s.command)}</code>"),
        ("faults requested", _e(", ".join(s.faults_requested) or "none")),
        ("ops checked (linearizability)", _e(s.ops_checked)),
        ("faults injected", _e(len(record.faults))),
    ]
    columns = _status_columns(record.ops)
    counts = ops_by_workload(record.ops)
    totals: Counter[str] = Counter(op.status for op in record.ops)
    rows = [
        [_e(w), *(_e(by.get(c, 0)) for c in columns), _e(sum(by.values()))]
        for w, by in [*counts.items(), (ALL_WORKLOADS, dict(totals))]
    ]
    return (
        "<h2>Summary</h2>"
        + _table([], ([k, v] for k, v in facts), set())
        + "<h3>Operations by status</h3>"
        + _table(["workload", *map(_e, columns), "total"], rows, set(range(1, len(columns) + 2)))
    )


def _latency_section(ops: Sequence[OpRecord]) -> str:
    percentiles = latency_percentiles(ops)
    if not percentiles:
        return "<h2>Latency</h2><p>No ok operations.</p>"
    columns = [f"p{p}" for p in PERCENTILES] + ["max"]
    rows = [[_e(w), *(f"{row[c]:.2f}" for c in columns)] for w, row in percentiles.items()]
    return "<h2>Latency of ok operations (ms)</h2>" + _table(
        ["workload", *columns], rows, set(range(1, len(columns) + 1))
    )


def _faults_section(record: RunRecord) -> str:
    if not record.faults:
        return "<h2>Faults</h2><p>No faults were injected.</p>"
    colours = _colour_map(sorted({f.kind for f in record.faults}), FAULT_COLOURS)
    rows = [
        [
            f'<span class="swatch" style="background:{colours[f.kind]}"></span>{_e(f.kind)}',
            f"{f.start_s:.3f}",
            "never healed" if f.end_s is None else f"{f.end_s:.3f}",
            _e(", ".join(f.targets)),
            _e(f.detail),
        ]
        for f in sorted(record.faults, key=lambda f: f.start_s)
    ]
    return "<h2>Faults</h2>" + _table(
        ["kind", "start s", "end s", "targets", "detail"], rows, {1, 2}
    )


def _verdicts_section(record: RunRecord) -> str:
    verdicts = record.summary.verdicts
    if not verdicts:
        return "<h2>Checkers</h2><p>No checker verdicts were recorded.</p>"
    rows = [
        [_e(checker), f'<span class="verdict-{_e(v)}">{_e(v)}</span>']
        for checker, v in verdicts.items()
    ]
    return "<h2>Checkers</h2>" + _table(["checker", "verdict"], rows, set())


def _anomalies_section(anomalies: Sequence[Anomaly]) -> str:
    if not anomalies:
        return "<h2>Anomalies</h2><p>No anomalies: every checked guarantee held.</p>"
    parts = [f"<h2>Anomalies ({len(anomalies)})</h2>"]
    for index, anomaly in enumerate(anomalies):
        parts.append(
            f'<div class="anomaly"><h3>{index + 1}. {_e(anomaly.checker)}</h3>'
            f"<p>{_e(anomaly.summary)}</p><pre>{_e(anomaly.explanation)}</pre>"
        )
        if anomaly.ops:
            parts.append(anomaly_svg(anomaly.ops, f"a{index}"))
            parts.append(_anomaly_ops_table(anomaly.ops))
        else:
            parts.append("<p>No sub-history was recorded for this anomaly.</p>")
        parts.append("</div>")
    return "\n".join(parts)


def _anomaly_ops_table(ops: Sequence[OpRecord]) -> str:
    rows = [
        [
            _e(op.op_id),
            _e(op.client_id),
            _e(op.workload),
            _e(op.status),
            f"{op.call_s:.6f}",
            "—" if op.return_s is None else f"{op.return_s:.6f}",
            _e(op.input),
            _e(op.output),
        ]
        for op in _drawn_ops(ops)
    ]
    header = ["op", "client", "workload", "status", "call s", "return s", "input", "output"]
    return _table(header, rows, {0, 1, 4, 5})


# --- The anomaly's sub-history as SVG ---------------------------------------------------

SVG_WIDTH_PX = 1200
SVG_LABEL_COLUMN_PX = 90
SVG_RIGHT_PAD_PX = 10
SVG_AXIS_PX = 26
SVG_LANE_PX = 28
SVG_BAR_PX = 20
# Room right of the last event, where unknown ops run to the edge.
SVG_OPEN_END_FRACTION = 0.1
SVG_TICKS = 5


def _drawn_ops(ops: Sequence[OpRecord]) -> list[OpRecord]:
    return sorted(ops, key=lambda op: (op.call_s, op.op_id))[:REPORT_SVG_MAX_OPS]


def _lanes(ops: Sequence[OpRecord], open_end_s: float) -> list[tuple[int, list[OpRecord]]]:
    """Rows of the drawing: each client gets as many lanes as it has overlapping ops.

    A client runs one op at a time, but an unknown op never ends, so the client's next op
    goes in a lane of its own rather than on top of it.
    """
    lanes: list[tuple[int, list[OpRecord]]] = []
    for client in sorted({op.client_id for op in ops}):
        mine: list[list[OpRecord]] = []
        ends_s: list[float] = []
        for op in sorted((op for op in ops if op.client_id == client), key=lambda o: o.call_s):
            free = next((i for i, end in enumerate(ends_s) if end <= op.call_s), None)
            if free is None:
                mine.append([])
                ends_s.append(0.0)
                free = len(mine) - 1
            mine[free].append(op)
            ends_s[free] = open_end_s if op.return_s is None else op.return_s
        lanes.extend((client, lane) for lane in mine)
    return lanes


def anomaly_svg(ops: Sequence[OpRecord], id_prefix: str) -> str:
    """An inline SVG timeline: one row per client, one bar per op from call to return.

    Unknown ops are hatched with a dashed outline and run to the right edge. Every bar is a
    ``<rect class="op op-STATUS">`` and carries its op as a tooltip.
    """
    drawn = _drawn_ops(ops)
    assert drawn, "an empty sub-history has no drawing"
    start_s = min(op.call_s for op in drawn)
    last_s = max(op.call_s if op.return_s is None else max(op.call_s, op.return_s) for op in drawn)
    span_s = max(last_s - start_s, 1e-6)
    open_end_s = last_s + span_s * SVG_OPEN_END_FRACTION
    plot_px = SVG_WIDTH_PX - SVG_LABEL_COLUMN_PX - SVG_RIGHT_PAD_PX

    def x(t_s: float) -> float:
        return SVG_LABEL_COLUMN_PX + (t_s - start_s) / (open_end_s - start_s) * plot_px

    lanes = _lanes(drawn, open_end_s)
    height_px = SVG_AXIS_PX + SVG_LANE_PX * len(lanes) + 4
    hatch = f"{id_prefix}-hatch"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {SVG_WIDTH_PX} '
        f'{height_px}" font-family="monospace" font-size="11" role="img">',
        f'<defs><pattern id="{hatch}" width="8" height="8" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)">'
        f'<rect width="8" height="8" fill="{STATUS_FILL["unknown"]}"/>'
        f'<line x1="0" y1="0" x2="0" y2="8" stroke="{STATUS_STROKE["unknown"]}" '
        'stroke-width="2"/></pattern></defs>',
    ]
    out.extend(_svg_axis(start_s, last_s, x, height_px))
    previous_client: int | None = None
    for row, (client, lane) in enumerate(lanes):
        top_px = SVG_AXIS_PX + row * SVG_LANE_PX
        if client != previous_client:
            out.append(
                f'<line x1="0" y1="{top_px}" x2="{SVG_WIDTH_PX}" y2="{top_px}" stroke="#ddd"/>'
                f'<text x="4" y="{top_px + SVG_BAR_PX - 4}">client {_e(client)}</text>'
            )
            previous_client = client
        for i, op in enumerate(lane):
            # A label may run past its bar, up to where the next op of the lane starts.
            label_right_px = x(lane[i + 1].call_s) if i + 1 < len(lane) else SVG_WIDTH_PX
            clip_id = f"{id_prefix}-clip{len(out)}"
            out.append(_svg_bar(op, top_px + 4, x, open_end_s, label_right_px, clip_id, hatch))
    if len(drawn) < len(ops):
        out.append(
            f'<text x="{SVG_WIDTH_PX - 4}" y="12" text-anchor="end">showing the first '
            f"{len(drawn)} of {len(ops)} ops</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _svg_axis(
    start_s: float, last_s: float, x: Callable[[float], float], height_px: int
) -> list[str]:
    out = []
    for i in range(SVG_TICKS):
        t_s = start_s + (last_s - start_s) * i / (SVG_TICKS - 1)
        px = x(t_s)
        out.append(
            f'<line x1="{px:.1f}" y1="{SVG_AXIS_PX - 6}" x2="{px:.1f}" y2="{height_px}" '
            'stroke="#eee"/>'
            f'<text x="{px:.1f}" y="{SVG_AXIS_PX - 10}" text-anchor="middle">{t_s:.3f} s</text>'
        )
    return out


def _svg_bar(
    op: OpRecord,
    y_px: int,
    x: Callable[[float], float],
    open_end_s: float,
    label_right_px: float,
    clip_id: str,
    hatch: str,
) -> str:
    end_s = open_end_s if op.return_s is None else op.return_s
    left_px = x(op.call_s)
    width_px = max(x(end_s) - left_px, 2.0)
    status = op.status
    if status == "unknown":
        fill, stroke, dash = f"url(#{hatch})", STATUS_STROKE["unknown"], ' stroke-dasharray="5,3"'
    else:
        fill = STATUS_FILL.get(status, OTHER_FILL)
        stroke, dash = STATUS_STROKE.get(status, OTHER_STROKE), ""
    returned = "never" if op.return_s is None else f"{op.return_s:.6f} s"
    tooltip = _truncate(
        f"op {op.op_id} ({op.workload}, client {op.client_id}) {status}: {op.input} → "
        f"{op.output}; called {op.call_s:.6f} s, returned {returned}",
        REPORT_SVG_TOOLTIP_MAX_CHARS,
    )
    label = _truncate(f"{op.input} → {op.output}", REPORT_SVG_LABEL_MAX_CHARS)
    label_width_px = max(label_right_px - left_px - 2.0, width_px)
    return (
        f'<clipPath id="{clip_id}"><rect x="{left_px:.1f}" y="{y_px}" '
        f'width="{label_width_px:.1f}" height="{SVG_BAR_PX}"/></clipPath>'
        f'<rect class="op op-{_e(status)}" x="{left_px:.1f}" y="{y_px}" width="{width_px:.1f}" '
        f'height="{SVG_BAR_PX}" rx="3" fill="{fill}" stroke="{stroke}"{dash}>'
        f"<title>{_e(tooltip)}</title></rect>"
        f'<text x="{left_px + 4:.1f}" y="{y_px + SVG_BAR_PX - 6}" clip-path="url(#{clip_id})" '
        'paint-order="stroke" stroke="#fff" stroke-width="3" stroke-linejoin="round">'
        f"{_e(label)}</text>"
    )


# --- Command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m raftkv.verify.report RECORD.json OUT_DIR``: make the report again."""
    parser = argparse.ArgumentParser(
        prog="python -m raftkv.verify.report",
        description="Write the report of a raftkv verify run from its record.json.",
    )
    parser.add_argument("record", type=Path, help="the run's record.json")
    parser.add_argument("out_dir", type=Path, help="the folder to write the report into")
    args = parser.parse_args(argv)
    record = RunRecord.load(args.record)
    files = write_report(record, args.out_dir)
    sys.stdout.write(summary_text(record))
    sys.stdout.write(f"report: {files.index_html}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
