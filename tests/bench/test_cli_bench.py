"""`raftkv bench` on the command line: argument errors, a real run, a tiny --compare."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.cli import main
from tests.etcd_process import EtcdProcess, run_etcd

NOWHERE = "127.0.0.1:1"  # nothing listens: a usage error must be found before connecting


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    with run_etcd(tmp_path_factory.mktemp("bench-cli-etcd")) as process:
        yield process


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--endpoints", NOWHERE, "nosuch"],
        ["bench", "--endpoints", NOWHERE, "put", "--clients", "0"],
        ["bench", "--endpoints", NOWHERE, "put", "--clients", "10001"],
        ["bench", "--endpoints", NOWHERE, "put", "--conns", "x"],
        ["bench", "--endpoints", NOWHERE, "put", "--duration", "0"],
        ["bench", "--endpoints", NOWHERE, "put", "--rate", "-5"],
        ["bench", "--endpoints", NOWHERE, "range", "--consistency", "x"],
        ["bench", "--endpoints", NOWHERE, "put", "--workers", "0"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench"], "--endpoints"),
        (["bench", "put"], "--endpoints"),
        (["bench", "--endpoints", NOWHERE], "WORKLOAD"),
        (["bench", "--endpoints", NOWHERE, "put", "--key-size", "2"], "do not fit"),
        (["bench", "--compare", "put"], "no WORKLOAD"),
        (["bench", "--compare", "--compare-only", "nosuch"], "unknown comparison"),
        (["bench", "--compare", "--server-env", "PYTHONPATH"], "KEY=VALUE"),
    ],
)
def test_inconsistent_options_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_real_run_prints_a_table_and_writes_json(
    etcd: EtcdProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "put.json"
    argv = ["bench", "--endpoints", etcd.client_url, "put", "--total", "60", "--clients", "3"]
    assert main([*argv, "--workers", "1", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "put [" in captured.err and "\r" in captured.err  # the progress line
    assert "p99" in captured.out and "errors: 0" in captured.out
    data = json.loads(out.read_text())
    assert data["latency_ms"]["put"]["count"] == 60
    assert data["throughput_ops_s"]["put"] > 0


def test_quiet_has_no_progress_line(etcd: EtcdProcess, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--endpoints", etcd.endpoint, "range", "--total", "30", "--quiet"]
    assert main([*argv, "--workers", "1", "--consistency", "s"]) == 0
    assert capsys.readouterr().err == ""


def test_tiny_compare_writes_table_chart_and_doc(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nOlder results stay.\n")
    out = tmp_path / "out"
    argv = [
        "bench", "--compare", "--quiet",
        "--compare-only", "put_latency_p50,watch_fanout",
        "--compare-duration", "1", "--compare-scale", "2000",
        "--compare-conns", "2", "--compare-watchers", "5", "--compare-watch-writes", "20",
        "--workers", "1",
        "--out", str(out), "--doc", str(doc), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    assert main(argv) == 0

    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = (out / "compare.md").read_text()
    assert "| Workload | etcd | raftkv | raftkv / etcd | Target | Met? |" in section
    assert "raftkv bench --compare --quiet --compare-only" in section  # the exact command
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nOlder results stay.\n\n## Comparison with etcd")
    assert "](out/compare.png)" in text  # the chart, relative to the doc

    rows = {row["key"]: row for row in json.loads((out / "compare.json").read_text())["rows"]}
    assert set(rows) == {
        "put_latency_p50",
        "watch_fanout",
        "peak_rss",
        "restart_to_serving",
        "load_time",
    }
    for row in rows.values():
        assert row["etcd"] > 0 and row["raftkv"] > 0, row
        assert math.isclose(row["ratio"], row["raftkv"] / row["etcd"])
        assert row["notes"] == "", row  # no errors, no lost watch events
    assert rows["peak_rss"]["etcd"] < 1024  # MiB: a VmHWM, not bytes or kB
    assert rows["watch_fanout"]["met"] in (True, False)
