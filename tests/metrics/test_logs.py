"""Log formats (server/logs.py) and the flags that choose them and the monitoring listener
(server/config.py)."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.server.config import ConfigError, load_config
from raftkv.server.logs import JsonFormatter, TextFormatter, configure_logging, fields


def _record(message: str, level: int = logging.WARNING, **values: object) -> logging.LogRecord:
    logger = logging.getLogger("raftkv.test")
    record = logger.makeRecord(
        "raftkv.test", level, "/src/raftkv/server/node.py", 42, message, (), None
    )
    if values:
        record.fields = fields(**values)["fields"]
    return record


def test_json_lines_carry_zaps_keys_and_the_fields() -> None:
    line = JsonFormatter().format(
        _record("slow fdatasync", took="1.203s", expected_duration="1s", entries=3)
    )
    document = json.loads(line)
    assert "\n" not in line
    assert document["level"] == "warn"
    assert document["msg"] == "slow fdatasync"
    assert document["logger"] == "raftkv.test"
    assert document["caller"] == "server/node.py:42"
    assert document["took"] == "1.203s"
    assert document["expected-duration"] == "1s"
    assert document["entries"] == 3
    stamp = datetime.datetime.strptime(document["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((now - stamp).total_seconds()) < 60


def test_json_keeps_exceptions_and_odd_values_on_one_line() -> None:
    try:
        raise ValueError("broken\nline")
    except ValueError:
        record = _record("failed", logging.ERROR, data=b"\x00\xff", path=Path("/x"))
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    document = json.loads(line)
    assert "\n" not in line
    assert document["level"] == "error"
    assert "ValueError: broken" in document["error"]
    assert document["path"] == "/x"


def test_text_lines_append_fields_quoting_when_needed() -> None:
    line = TextFormatter().format(
        _record("lost leader", member_id="abc", reason="peer down", term=7)
    )
    assert line.endswith('lost leader member-id=abc reason="peer down" term=7')
    assert " WARNING raftkv.test: " in line


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_configured_json_file_output_parses(tmp_path: Path, restore_root_logger: None) -> None:
    path = tmp_path / "member.log"
    configure_logging(logging.INFO, "json", [str(path)])
    logging.getLogger("raftkv.node").info("member %x started", 0xABC)
    logging.getLogger("raftkv.node").debug("not at info")
    logging.getLogger("raftkv.node").warning("lost leader", extra=fields(term=3))
    for handler in logging.getLogger().handlers:
        handler.flush()
    documents = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["msg"] for d in documents] == ["member abc started", "lost leader"]
    assert documents[1]["term"] == 3


BASE = [
    "--listen-client-urls=http://127.0.0.1:2379",
    "--advertise-client-urls=http://127.0.0.1:2379",
]


def test_flags_choose_the_log_format_outputs_and_metrics_listener() -> None:
    config = load_config(
        [
            *BASE,
            "--log-format=json",
            "--log-outputs=stdout,/tmp/raftkv.log",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--metrics=extensive",
            "--experimental-warning-apply-duration=250ms",
        ],
        {},
    )
    assert config.log_format == "json"
    assert config.log_outputs == ("stdout", "/tmp/raftkv.log")
    assert config.listen_metrics_urls == ("http://127.0.0.1:2381",)
    assert config.metrics == "extensive"
    assert config.warning_apply_duration_ms == 250
    defaults = load_config(BASE, {})
    assert (defaults.log_format, defaults.log_outputs) == ("text", ("default",))
    assert (defaults.metrics, defaults.warning_apply_duration_ms) == ("basic", 100)
    from_env = load_config(BASE, {"ETCD_LISTEN_METRICS_URLS": "http://127.0.0.1:2390"})
    assert from_env.listen_metrics_urls == ("http://127.0.0.1:2390",)


@pytest.mark.parametrize(
    ("flag", "complaint"),
    [
        ("--log-format=xml", '--log-format: "xml" is not one of text, json'),
        ("--metrics=all", '--metrics: "all" is not one of basic, extensive'),
        ("--listen-metrics-urls=http://127.0.0.1:2379", "already used by --listen-client-urls"),
        ("--listen-metrics-urls=https://127.0.0.1:2399", "uses https, which needs --cert-file"),
        ("--experimental-warning-apply-duration=soon", "is not a duration like 100ms"),
        ("--log-outputs=,", "must name at least one output"),
    ],
)
def test_bad_monitoring_flags_are_refused(flag: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config([*BASE, flag], {})
    assert complaint in refused.value.message
