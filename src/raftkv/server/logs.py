"""The member's logs: plain text or one JSON object per line (``--log-format``).

etcd 3.5 logs JSON through zap; raftkv logs text by default and JSON with
``--log-format json``, with zap's keys: ``level`` (debug, info, warn, error, fatal),
``ts`` (RFC 3339 UTC, milliseconds), ``logger``, ``caller``, ``msg``, then the record's
structured fields. A call passes fields as ``extra=fields(took="1.2s", ...)``; a field
name's ``_`` becomes ``-`` (etcd's ``expected-duration``). Text lines show the same
fields after the message as ``name=value``.

``--log-outputs`` is etcd's: ``default`` or ``stderr``, ``stdout``, or file paths
(appended to), several separated by commas.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
STANDARD_OUTPUTS = ("default", "stderr", "stdout")
FIELDS_ATTRIBUTE = "fields"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# zap's level names for Python's levels.
_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``extra=`` for a logging call: structured fields of the record."""
    return {FIELDS_ATTRIBUTE: {name.replace("_", "-"): value for name, value in values.items()}}


def duration_text(seconds: float) -> str:
    """A duration as etcd's logs print one: ``1.203s``, ``150.2ms``, ``87µs``."""
    if seconds >= 1:
        return f"{seconds:.3f}s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds * 1_000_000:.0f}µs"


def _record_fields(record: logging.LogRecord) -> Mapping[str, object]:
    values = getattr(record, FIELDS_ATTRIBUTE, None)
    return values if isinstance(values, Mapping) else {}


def _caller(record: logging.LogRecord) -> str:
    directory = os.path.basename(os.path.dirname(record.pathname))
    return f"{directory}/{record.filename}:{record.lineno}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, zap's keys first."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, Any] = {
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "ts": created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z",
            "logger": record.name,
            "caller": _caller(record),
            "msg": record.getMessage(),
        }
        for name, value in _record_fields(record).items():
            document.setdefault(name, value)
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        # default=str: a field that JSON cannot hold (bytes, an enum) is still written.
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """raftkv's text lines, then the record's fields as ``name=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _record_fields(record)
        if not extra:
            return line
        pairs = " ".join(f"{name}={_text_value(value)}" for name, value in extra.items())
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{newline}{rest}"


def _text_value(value: object) -> str:
    text = str(value)
    if not text or any(char.isspace() or char in '"=' for char in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _stream_handler(output: str) -> logging.Handler:
    stream: TextIO = sys.stdout if output == "stdout" else sys.stderr
    return logging.StreamHandler(stream)


def configure_logging(
    level: int, log_format: LogFormat = "text", outputs: Sequence[str] = ("default",)
) -> None:
    """Send every logger's records at ``level`` and above to ``outputs``, formatted."""
    assert log_format in LOG_FORMATS, log_format
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    handlers: list[logging.Handler] = []
    for output in outputs or ("default",):
        if output in STANDARD_OUTPUTS:
            handlers.append(_stream_handler(output))
        else:
            handlers.append(logging.FileHandler(output, encoding="utf-8"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "duration_text",
    "fields",
]
