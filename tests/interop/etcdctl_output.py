"""Run etcdctl against a server and normalize what it prints, so raftkv's output and a real
etcd's can be compared exactly.

Only what differs between two servers by nature is masked:

- cluster and member ids become ``<cluster>`` / ``<member>``, and only ids the target really
  has (read from its member list) are replaced: an unknown id stays as it is and makes the
  comparison fail;
- lease ids become ``<lease1>``, ``<lease2>``, ... in the order the test learned them, so the
  same lease must show up in the same places on both servers;
- revisions in JSON (and in "compacted revision N") become relative to the revision the test
  started at (``rev+3``), so both servers must have made the same number of changes;
- raft terms and indexes, database sizes, versions, durations, ports and remaining TTLs,
  which depend on the server's history, clock or implementation, become placeholders.

Everything else (keys, values, counts, flags, the words, the layout) is compared as printed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tests.procs import etcdctl

COMMAND_TIMEOUT_S = 10.0
BACKGROUND_STOP_TIMEOUT_S = 10.0

# JSON fields (etcdctl prints protobuf field names, or Go struct names for some commands).
_MEMBER_OR_LEASE_ID_KEYS = {"cluster_id", "member_id", "ID", "id", "leader", "lease"}
_REVISION_KEYS = {"revision", "create_revision", "mod_revision", "compact_revision"}
_VOLATILE_KEYS = {
    "raft_term": "<term>",
    "raftTerm": "<term>",
    "raftIndex": "<index>",
    "raftAppliedIndex": "<index>",
    "dbSize": "<size>",
    "dbSizeInUse": "<size>",
    "dbSizeQuota": "<size>",
    "took": "<duration>",
    "ttl": "<remaining>",  # lease timetolive's remaining seconds; checked apart
}

_URL = re.compile(r"https?://127\.0\.0\.1:\d+")
_ENDPOINT = re.compile(r"127\.0\.0\.1:\d+")
_DURATION = re.compile(r"took = [\d.]+(ns|µs|us|ms|s)")
_SIZE = re.compile(r"\b\d+(\.\d+)? (B|kB|MB|GB)\b")
_REMAINING = re.compile(r"remaining\(\d+s\)")
_COMPACTED = re.compile(r"compacted revision (\d+)")
_WORD = re.compile(r"\b[0-9a-f]+\b")
# `-w fields` prints one `"Name" : value` per line.
_FIELDS_REVISION = re.compile(r'^"(Revision|CreateRevision|ModRevision|CompactRevision)" : (\d+)$')
_FIELDS_TERM = re.compile(r'^"RaftTerm" : \d+$')


@dataclass
class Target:
    """One server as etcdctl sees it: its endpoints and the ids that differ by nature."""

    name: str
    endpoints: list[str]
    cluster_id: int = 0
    member_ids: frozenset[int] = frozenset()
    lease_placeholders: dict[int, str] = field(default_factory=dict)
    revision_base: int = 0

    @classmethod
    def connect(cls, name: str, endpoints: list[str]) -> Target:
        """A target whose cluster and member ids are read from its member list."""
        target = cls(name, endpoints)
        listed = target.ctl("member", "list", "-w", "json")
        assert listed.returncode == 0, listed.stderr
        members = json.loads(listed.stdout)
        target.cluster_id = members["header"]["cluster_id"]
        target.member_ids = frozenset(member["ID"] for member in members["members"])
        return target

    def ctl(
        self, *args: str, input: str | None = None, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return etcdctl(self.endpoints, *args, input=input, timeout_s=timeout_s)

    def revision(self) -> int:
        """The server's current revision (a linearizable Range's header)."""
        result = self.ctl("get", "-w", "json", "interop/revision-probe")
        assert result.returncode == 0, result.stderr
        revision: int = json.loads(result.stdout)["header"]["revision"]
        return revision

    def begin(self) -> None:
        """Start a comparison: forget learned leases, count revisions from here."""
        self.lease_placeholders.clear()
        self.revision_base = self.revision()

    def rev(self, delta: int) -> str:
        """The absolute revision ``delta`` changes after the test's start, for a command."""
        return str(self.revision_base + delta)

    def learn_lease(self, lease_id: int) -> str:
        """Name a lease the test saw; returns its placeholder."""
        if lease_id not in self.lease_placeholders:
            self.lease_placeholders[lease_id] = f"<lease{len(self.lease_placeholders) + 1}>"
        return self.lease_placeholders[lease_id]

    def learn_lease_hex(self, text: str) -> str:
        return self.learn_lease(int(text, 16))

    def lease_hex(self, number: int) -> str:
        """The id of the ``number``-th learned lease (from 1), as etcdctl takes it."""
        for lease_id, placeholder in self.lease_placeholders.items():
            if placeholder == f"<lease{number}>":
                return f"{lease_id:x}"
        raise AssertionError(f"no lease {number} learned on {self.name}")

    def revoke_all_leases(self) -> None:
        """Revoke every lease left by earlier tests (lock/elect sessions), so lists compare."""
        listed = self.ctl("lease", "list", "-w", "json")
        assert listed.returncode == 0, listed.stderr
        for lease in json.loads(listed.stdout).get("leases") or []:
            self.ctl("lease", "revoke", f"{lease['id']:x}")

    # --- Normalizing ----------------------------------------------------------------------

    def id_placeholder(self, value: int) -> str | int:
        """The placeholder of a known id; anything else is returned unchanged."""
        if value == self.cluster_id:
            return "<cluster>"
        if value in self.member_ids:
            return "<member>"
        return self.lease_placeholders.get(value, value)

    def relative_revision(self, revision: int) -> str | int:
        return 0 if revision == 0 else f"rev{revision - self.revision_base:+d}"

    def normalize_json(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {k: self.normalize_json(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.normalize_json(item, key) for item in value]
        if key in _VOLATILE_KEYS:
            return _VOLATILE_KEYS[key]
        if key == "version" and isinstance(value, str):  # the server's; a key's is an int
            return "<version>"
        if isinstance(value, int) and not isinstance(value, bool):
            if key in _MEMBER_OR_LEASE_ID_KEYS:
                return self.id_placeholder(value)
            if key in _REVISION_KEYS:
                return self.relative_revision(value)
        if isinstance(value, str):
            return self.normalize_line(value)
        return value

    def normalize_line(self, line: str) -> str:
        line = _URL.sub("<url>", line)
        line = _ENDPOINT.sub("<endpoint>", line)
        line = _DURATION.sub("took = <duration>", line)
        line = _SIZE.sub("<size>", line)
        line = _REMAINING.sub("remaining(<remaining>)", line)
        line = _FIELDS_TERM.sub('"RaftTerm" : <term>', line)
        line = _FIELDS_REVISION.sub(
            lambda m: f'"{m.group(1)}" : {self.relative_revision(int(m.group(2)))}', line
        )
        line = _COMPACTED.sub(
            lambda m: f"compacted revision {self.relative_revision(int(m.group(1)))}", line
        )
        return _WORD.sub(self._known_id_word, line)

    def _known_id_word(self, match: re.Match[str]) -> str:
        """A word that spells a known id (hex as etcdctl prints ids, or decimal) -> placeholder."""
        word = match.group(0)
        candidates = [int(word, 16)]
        if word.isdigit():
            candidates.insert(0, int(word))
        for candidate in candidates:
            placeholder = self.id_placeholder(candidate)
            if isinstance(placeholder, str):
                return placeholder
        return word

    def normalize_stdout(self, stdout: str) -> Any:
        """JSON output as normalized data; text as a list of normalized lines."""
        if stdout.startswith(("{", "[")):  # not a bare number such as del's count
            return self.normalize_json(json.loads(stdout))
        return [self.normalize_line(line) for line in stdout.splitlines()]

    def outcome(self, result: subprocess.CompletedProcess[str]) -> Outcome:
        errors = tuple(
            self.normalize_line(line)
            for line in result.stderr.splitlines()
            if line.startswith("Error:")
        )
        return Outcome(result.returncode, self.normalize_stdout(result.stdout), errors)

    def run(self, *args: str, input: str | None = None) -> Outcome:
        """Run one etcdctl command and normalize what it did."""
        return self.outcome(self.ctl(*args, input=input))


@dataclass(frozen=True)
class Outcome:
    """What one etcdctl command did, normalized: exit code, output, "Error:" lines."""

    exit_code: int
    stdout: Any
    errors: tuple[str, ...]


# --- Tables and simple rows -------------------------------------------------------------


def parse_table(text: str) -> tuple[list[str], list[list[str]]]:
    """etcdctl's ``-w table``: (header cells, row cells); asserts the frame is well formed."""
    lines = text.rstrip("\n").splitlines()
    assert len(lines) >= 4, text
    border = lines[0]
    assert re.fullmatch(r"(\+-+)+\+", border), border
    widths = [len(part) for part in border.strip("+").split("+")]
    assert lines[2] == border and lines[-1] == border, text
    rows = []
    for line in [lines[1], *lines[3:-1]]:
        assert len(line) == len(border) and line[0] == "|" and line[-1] == "|", line
        cells = line[1:-1].split("|")
        assert [len(cell) for cell in cells] == widths, line
        rows.append([cell.strip() for cell in cells])
    return rows[0], rows[1:]


def parse_simple(text: str) -> list[list[str]]:
    """etcdctl's default output for member list / endpoint status: comma-separated fields."""
    return [line.split(", ") for line in text.rstrip("\n").splitlines()]


# --- etcdctl in the background ----------------------------------------------------------


class BackgroundCtl:
    """``etcdctl ARGS`` running in its own process group, its stdout lines collected."""

    def __init__(self, target: Target, *args: str) -> None:
        binary = shutil.which("etcdctl")
        assert binary is not None, "no etcdctl on PATH"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        self.process = subprocess.Popen(
            [binary, f"--endpoints={','.join(target.endpoints)}", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own group: a `lock -- CMD` child goes with it
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def read_lines(self, count: int, timeout_s: float = COMMAND_TIMEOUT_S) -> list[str]:
        """The next ``count`` lines; fewer if the process ended or the time ran out."""
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        while len(lines) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # stay at the end for later reads
                break
            lines.append(line)
        self.lines.extend(lines)
        return lines

    def pending_lines(self) -> list[str]:
        """Lines printed so far and not read yet, without waiting."""
        return self.read_lines(1_000_000, timeout_s=0.0)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C: etcdctl lock/elect then release the lock / resign."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)

    def wait(self, timeout_s: float = BACKGROUND_STOP_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def stderr(self) -> str:
        """Its stderr; only once it has ended."""
        assert self.process.poll() is not None
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._reader.join(timeout=BACKGROUND_STOP_TIMEOUT_S)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> BackgroundCtl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()
