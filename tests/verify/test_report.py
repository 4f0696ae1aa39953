"""The verify report: every file is written, readable, and agrees with the record it came from."""

from __future__ import annotations

import json
import random
import re
import struct
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from raftkv.verify import report
from raftkv.verify.records import (
    WORKLOADS,
    Anomaly,
    FaultRecord,
    OpRecord,
    OpStatus,
    RunRecord,
    RunSummary,
)
from raftkv.verify.report import latency_percentiles, main, summary_text, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCRIPT_INPUT = '<script>alert("x")</script> & co'
DURATION_S = 30.0


def make_summary(**changes: object) -> RunSummary:
    base = RunSummary(
        target="raftkv",
        nodes=3,
        seed=1234,
        duration_s=DURATION_S,
        faults_requested=("kill", "partition", "pause"),
        command="raftkv verify --target raftkv --nodes 3 --seed 1234 --time-limit 30",
        started_at="2024-05-01T12:00:00Z",
    )
    return RunSummary(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **changes})


def make_ops(count: int, rng: random.Random) -> list[OpRecord]:
    statuses: tuple[OpStatus, ...] = ("ok", "ok", "ok", "ok", "fail", "unknown")
    ops = []
    for op_id in range(count):
        status = statuses[op_id % len(statuses)]
        call_s = rng.uniform(0.0, DURATION_S)
        latency_s = rng.uniform(0.0005, 0.2)
        ops.append(
            OpRecord(
                op_id=op_id,
                client_id=op_id % 7,
                workload=WORKLOADS[op_id % len(WORKLOADS)],
                call_s=call_s,
                return_s=None if status == "unknown" else call_s + latency_s,
                status=status,
                input=f"write r{op_id % 5} {op_id}",
                output={"ok": "ok", "fail": "leader changed", "unknown": "timeout"}[status],
            )
        )
    return ops


def anomaly_ops() -> tuple[OpRecord, ...]:
    """Two clients; client 1's write never returned, and client 0's later read ran with it."""
    return (
        OpRecord(9001, 0, "register", 10.00, 10.05, "ok", "write r1 3", "ok"),
        OpRecord(9002, 1, "register", 10.02, None, "unknown", "write r1 4", "timeout"),
        OpRecord(9003, 0, "register", 10.06, 10.09, "ok", SCRIPT_INPUT, "4"),
        OpRecord(9004, 2, "register", 10.07, 10.08, "fail", "write r1 5", "leader changed"),
    )


@pytest.fixture
def record() -> RunRecord:
    ops = make_ops(400, random.Random(7))
    ops.extend(anomaly_ops())
    anomaly = Anomaly(
        checker="linearizability",
        summary="read r1 returned 4 <after> 3 was the last write",
        explanation="op 9003 read 4\nbut op 9002 (unknown) & op 9001 ...\n</pre><b>not bold</b>",
        ops=anomaly_ops(),
    )
    faults = [
        FaultRecord("kill", 3.0, 6.5, ("m1",), "kill -9 m1 (leader)"),
        FaultRecord("partition", 12.0, 20.0, ("m2", "m3"), "m2 <-> {m1, m3} cut"),
        FaultRecord("pause", 25.0, None, ("m3",), "SIGSTOP m3, never resumed"),
    ]
    summary = make_summary(
        ops_by_status=dict(Counter(op.status for op in ops)),
        ops_checked=len(ops),
        faults_injected=len(faults),
        verdicts={"linearizability": "anomaly", "watch": "ok", "conservation": "unknown"},
        anomalies=1,
        wall_s=41.5,
    )
    return RunRecord(summary, ops, faults, [anomaly])


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"  # the first chunk, right after its 4-byte length
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def expected_png_size() -> tuple[int, int]:
    width_in, height_in = report.TIMELINE_SIZE_IN
    return round(width_in * report.TIMELINE_DPI), round(height_in * report.TIMELINE_DPI)


def nearest_rank_oracle(latencies: list[float]) -> dict[str, float]:
    """numpy's inverted-CDF percentile is the nearest-rank definition the report uses."""
    values = np.array(latencies)
    row = {f"p{p}": float(np.percentile(values, p, method="inverted_cdf")) for p in (50, 90, 99)}
    row["max"] = float(values.max())
    return row


def anomaly_svgs(page: str) -> list[ET.Element]:
    """The inline SVGs of the page, parsed as XML (which also proves they are well formed)."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.DOTALL)]


def op_bars(svg: ET.Element) -> list[ET.Element]:
    ns = "{http://www.w3.org/2000/svg}"
    return [r for r in svg.iter(f"{ns}rect") if r.get("class", "").startswith("op ")]


def test_write_report_writes_every_file_consistent_with_the_record(
    record: RunRecord, tmp_path: Path
) -> None:
    out_dir = tmp_path / "results" / "run-1"  # does not exist yet
    files = report.write_report(record, out_dir)

    for path in (
        files.summary_json,
        files.summary_txt,
        files.history_jsonl,
        files.timeline_png,
        files.index_html,
        files.record_json,
    ):
        assert path.parent == out_dir
        assert path.stat().st_size > 0, path

    assert png_size(files.timeline_png.read_bytes()) == expected_png_size()
    assert RunRecord.load(files.record_json) == record

    history = files.history_jsonl.read_text(encoding="utf-8").splitlines()
    assert len(history) == len(record.ops)
    assert [OpRecord(**json.loads(line)) for line in history] == record.ops


def test_summary_json_counts_what_the_ops_and_faults_say(record: RunRecord, tmp_path: Path) -> None:
    files = write_report(record, tmp_path)
    data = json.loads(files.summary_json.read_text(encoding="utf-8"))

    assert data["passed"] is False
    summary_fields = {f.name: data[f.name] for f in fields(RunSummary)}
    summary_fields["faults_requested"] = tuple(summary_fields["faults_requested"])
    assert RunSummary(**summary_fields) == record.summary

    by_workload: dict[str, Counter[str]] = {}
    for op in record.ops:
        by_workload.setdefault(op.workload, Counter())[op.status] += 1
    assert data["ops_by_workload"] == {w: dict(c) for w, c in by_workload.items()}

    run_end_s = max(
        [DURATION_S]
        + [op.return_s for op in record.ops if op.return_s is not None]
        + [op.call_s for op in record.ops]
        + [f.start_s for f in record.faults]
        + [f.end_s for f in record.faults if f.end_s is not None]
    )
    seconds: dict[str, float] = {}
    for fault in record.faults:
        end_s = run_end_s if fault.end_s is None else fault.end_s
        seconds[fault.kind] = seconds.get(fault.kind, 0.0) + end_s - fault.start_s
    assert {k: v["count"] for k, v in data["faults_by_kind"].items()} == Counter(
        f.kind for f in record.faults
    )
    assert {k: v["total_s"] for k, v in data["faults_by_kind"].items()} == pytest.approx(seconds)

    ok_latencies: dict[str, list[float]] = {}
    for op in record.ops:
        if op.status == "ok" and op.return_s is not None:
            latency_ms = (op.return_s - op.call_s) * 1000
            ok_latencies.setdefault(op.workload, []).append(latency_ms)
            ok_latencies.setdefault("all", []).append(latency_ms)
    assert data["latency_ms"] == {w: nearest_rank_oracle(v) for w, v in ok_latencies.items()}


def test_summary_text_says_fail_and_lists_what_happened(record: RunRecord) -> None:
    text = summary_text(record)
    lines = text.splitlines()
    assert lines[0].startswith("FAIL")
    assert "raftkv" in lines[0] and "seed 1234" in lines[0] and "3 nodes" in lines[0]
    assert record.summary.command in text
    for workload in WORKLOADS:
        counts = Counter(op.status for op in record.ops if op.workload == workload)
        row = next(line for line in lines if line.startswith(workload + " "))
        assert row.split()[1:] == [
            str(counts["ok"]),
            str(counts["fail"]),
            str(counts["unknown"]),
            str(sum(counts.values())),
        ]
    pause_line = next(line for line in lines if line.strip().startswith("pause "))
    assert pause_line.split()[1] == "1"
    for checker, verdict in record.summary.verdicts.items():
        assert any(line.split() == [checker, verdict] for line in lines)
    assert f"[linearizability] {record.anomalies[0].summary}" in text


def test_index_html_draws_each_anomaly_and_escapes_every_string(
    record: RunRecord, tmp_path: Path
) -> None:
    page = write_report(record, tmp_path).index_html.read_text(encoding="utf-8")

    assert 'src="timeline.png"' in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "read r1 returned 4 &lt;after&gt; 3 was the last write" in page
    assert "&lt;/pre&gt;&lt;b&gt;not bold&lt;/b&gt;" in page  # the explanation cannot break out
    assert "m2 &lt;-&gt; {m1, m3} cut" in page
    assert "never healed" in page

    (svg,) = anomaly_svgs(page)
    bars = op_bars(svg)
    ops = record.anomalies[0].ops
    assert len(bars) == len(ops)
    assert sorted(bar.get("class", "") for bar in bars) == sorted(
        f"op op-{op.status}" for op in ops
    )

    def right_px(bar: ET.Element) -> float:
        return float(bar.get("x", "nan")) + float(bar.get("width", "nan"))

    (unknown_bar,) = [bar for bar in bars if bar.get("class") == "op op-unknown"]
    assert unknown_bar.get("stroke-dasharray")  # drawn dashed
    # The unknown op runs past every op that returned, to the right edge.
    assert all(right_px(unknown_bar) > right_px(bar) for bar in bars if bar is not unknown_bar)


def test_latency_percentiles_are_nearest_rank_over_ok_ops_only() -> None:
    rng = random.Random(3)
    latencies_ms = [("register", float(ms)) for ms in range(1, 101)]
    latencies_ms += [("transfer", float(ms)) for ms in range(200, 1101, 100)]
    rng.shuffle(latencies_ms)
    ops = [
        OpRecord(i, i % 4, workload, 5.0 + i, 5.0 + i + ms / 1000, "ok", "op", "ok")
        for i, (workload, ms) in enumerate(latencies_ms)
    ]
    # Neither failed nor unknown ops count, however slow; a workload with no ok op is absent.
    ops.append(OpRecord(500, 1, "register", 1.0, 60.0, "fail", "op", "error"))
    ops.append(OpRecord(501, 1, "watch", 1.0, 61.0, "fail", "op", "error"))
    ops.append(OpRecord(502, 2, "transfer", 1.0, None, "unknown", "op", "timeout"))

    result = latency_percentiles(ops)

    assert list(result) == ["register", "transfer", "all"]
    # register: 1..100 ms; transfer: 200, 300, ..., 1100 ms (10 ops); all: the 110 together.
    expected = {
        "register": {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0},
        "transfer": {"p50": 600.0, "p90": 1000.0, "p99": 1100.0, "max": 1100.0},
        "all": {"p50": 55.0, "p90": 99.0, "p99": 1000.0, "max": 1100.0},
    }
    for workload, row in expected.items():
        assert result[workload] == pytest.approx(row), workload


def test_latency_percentiles_of_no_ok_ops_is_empty() -> None:
    assert latency_percentiles([]) == {}
    unknown = OpRecord(1, 1, "register", 1.0, None, "unknown", "op", "timeout")
    assert latency_percentiles([unknown]) == {}


def test_an_empty_record_writes_every_file_and_passes(tmp_path: Path) -> None:
    empty = RunRecord(make_summary(faults_requested=()))
    files = write_report(empty, tmp_path)

    assert files.summary_txt.read_text(encoding="utf-8").startswith("PASS")
    data = json.loads(files.summary_json.read_text(encoding="utf-8"))
    assert data["passed"] is True
    assert data["latency_ms"] == {} and data["ops_by_workload"] == {}
    assert data["faults_by_kind"] == {}
    assert files.history_jsonl.read_text(encoding="utf-8") == ""
    assert png_size(files.timeline_png.read_bytes()) == expected_png_size()
    page = files.index_html.read_text(encoding="utf-8")
    assert "No anomalies" in page and "<svg" not in page
    assert RunRecord.load(files.record_json) == empty


def test_anomaly_without_ops_and_odd_faults_do_not_crash(tmp_path: Path) -> None:
    odd = RunRecord(
        make_summary(verdicts={"lost-write": "anomaly"}, anomalies=1),
        ops=[OpRecord(1, 1, "odd\nworkload", 2.0, None, "unknown", "", "\x00")],
        faults=[FaultRecord("clock <skew>", 0.0, None, (), "")],
        anomalies=[Anomaly("lost-write", "", "")],
    )
    files = write_report(odd, tmp_path)
    page = files.index_html.read_text(encoding="utf-8")
    assert "No sub-history was recorded" in page
    assert "clock &lt;skew&gt;" in page
    assert files.summary_txt.read_text(encoding="utf-8").startswith("FAIL")


def test_main_regenerates_the_report_from_record_json(
    record: RunRecord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_report(record, tmp_path / "first")
    capsys.readouterr()

    assert main([str(first.record_json), str(tmp_path / "again")]) == 0

    again = tmp_path / "again"
    for name in ("summary.json", "summary.txt", "history.jsonl", "index.html", "record.json"):
        assert (again / name).read_bytes() == (first.record_json.parent / name).read_bytes(), name
    assert png_size((again / "timeline.png").read_bytes()) == expected_png_size()
    assert capsys.readouterr().out.startswith("FAIL")


def test_downsample_keeps_every_kth_item_deterministically() -> None:
    items = list(range(100))
    assert report.downsample(items, 30) == list(range(0, 100, 4))  # stride ceil(100 / 30)
    assert report.downsample(items, 100) == items
    assert report.downsample(items, 1000) == items
    assert report.downsample([], 5) == []
