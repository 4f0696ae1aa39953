"""Checks observed watch streams against the server's own write history.

The guarantees are etcd's (api_guarantees.md): Ordered, Unique, Reliable, Atomic,
Resumable and Bookmarkable, plus agreement of every event with the KV history and
respect of the NOPUT/NODELETE filters and the watched key range.

The history is the server's record of every change: one RevisionChange per key a
revision touched (a txn touching three keys is three changes sharing one revision),
in the order the revision applied them. Each watch is what one client observed.
The checker never raises for a broken guarantee: it collects WatchViolations.
It raises a typed error only for malformed input (InvalidHistoryError,
InvalidWatchObservationError).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

ChangeKind = Literal["put", "delete"]
WatchFilter = Literal["noput", "nodelete"]

# The names a WatchViolation's guarantee takes.
ORDERED: Final = "ordered"
UNIQUE: Final = "unique"
RELIABLE: Final = "reliable"
ATOMIC: Final = "atomic"
AGREES: Final = "agrees"
RESUMABLE: Final = "resumable"
BOOKMARKABLE: Final = "bookmarkable"
FILTERS: Final = "filters"  # NOPUT/NODELETE, and the watched key range
CREATED: Final = "created"  # the created response comes first, without events
CANCELED: Final = "canceled"  # nothing follows a cancel

# etcd's range_end meaning "every key from key on".
_ALL_FROM_KEY: Final = b"\0"


class InvalidHistoryError(ValueError):
    """The write history is malformed (revisions go backwards, a key twice in a revision)."""


class InvalidWatchObservationError(ValueError):
    """The watch observations are malformed (duplicate watch ids, unknown resumed_from)."""


@dataclass(frozen=True, slots=True)
class RevisionChange:
    """One key changed by one revision, as the server recorded it."""

    revision: int
    key: bytes
    kind: ChangeKind
    value: bytes | None  # None for a delete
    prev_value: bytes | None  # None when the key did not exist before


@dataclass(frozen=True, slots=True)
class ObservedEvent:
    kind: ChangeKind
    key: bytes
    value: bytes | None  # a delete's value may be None or b""
    mod_revision: int
    create_revision: int
    version: int
    prev_value: bytes | None = None  # only meaningful when the watch asked for prev_kv


@dataclass(frozen=True, slots=True)
class ObservedResponse:
    header_revision: int
    events: Sequence[ObservedEvent] = ()
    progress_notify: bool = False  # a progress notification: no events
    compact_revision: int = 0
    canceled: bool = False
    created: bool = False


@dataclass(frozen=True, slots=True)
class WatchObservation:
    """One watch as a client saw it, every response in arrival order."""

    watch_id: int
    key: bytes
    range_end: bytes = b""  # b"": the key only; b"\0": every key >= key; else [key, range_end)
    start_revision: int = 0  # 0: from "now" (the created header's revision + 1)
    prev_kv: bool = False
    filters: frozenset[WatchFilter] = frozenset()
    responses: Sequence[ObservedResponse] = ()
    resumed_from: int | None = None  # watch_id of the watch this one continues

    def matches_key(self, key: bytes) -> bool:
        return key_in_range(key, self.key, self.range_end)

    def wants(self, kind: ChangeKind) -> bool:
        filtered: WatchFilter = "noput" if kind == "put" else "nodelete"
        return filtered not in self.filters


@dataclass(frozen=True, slots=True)
class WatchViolation:
    watch_id: int
    guarantee: str
    detail: str


@dataclass(frozen=True, slots=True)
class WatchReport:
    ok: bool
    violations: list[WatchViolation] = field(default_factory=list)
    events_checked: int = 0


def key_in_range(key: bytes, range_key: bytes, range_end: bytes) -> bool:
    """etcd's range semantics for a watch's (key, range_end)."""
    if range_end == b"":
        return key == range_key
    if range_end == _ALL_FROM_KEY:
        return key >= range_key
    return range_key <= key < range_end


@dataclass(frozen=True, slots=True)
class _KnownChange:
    """A history change with its place in the history and the key's derived metadata."""

    change: RevisionChange
    position: int  # index in the history: orders changes within one revision
    create_revision: int | None  # None when the key's creation predates the history
    version: int | None


class _History:
    def __init__(self, changes: Sequence[RevisionChange]) -> None:
        self.changes: list[_KnownChange] = []
        self.by_revision_key: dict[tuple[int, bytes], _KnownChange] = {}
        self._derive(changes)

    def _derive(self, changes: Sequence[RevisionChange]) -> None:
        # key -> (create_revision, version) of its live generation; None = unknown
        generation: dict[bytes, tuple[int, int] | None] = {}
        last_revision = 0
        for position, change in enumerate(changes):
            if change.revision < last_revision:
                raise InvalidHistoryError(
                    f"revision {change.revision} (key {change.key!r}) after {last_revision}"
                )
            if (change.revision, change.key) in self.by_revision_key:
                raise InvalidHistoryError(
                    f"key {change.key!r} changed twice in revision {change.revision}"
                )
            last_revision = change.revision
            known = self._metadata(change, position, generation)
            self.changes.append(known)
            self.by_revision_key[(change.revision, change.key)] = known

    @staticmethod
    def _metadata(
        change: RevisionChange, position: int, generation: dict[bytes, tuple[int, int] | None]
    ) -> _KnownChange:
        if change.kind == "delete":
            generation[change.key] = (0, 0)
            return _KnownChange(change, position, 0, 0)
        if change.prev_value is None:
            created = (change.revision, 1)
        elif change.key in generation and generation[change.key] not in (None, (0, 0)):
            previous = generation[change.key]
            assert previous is not None
            created = (previous[0], previous[1] + 1)
        else:
            # The key existed before the history starts: its creation is unknown.
            generation[change.key] = None
            return _KnownChange(change, position, None, None)
        generation[change.key] = created
        return _KnownChange(change, position, created[0], created[1])

    def matching(self, watch: WatchObservation) -> list[_KnownChange]:
        return [
            known
            for known in self.changes
            if watch.matches_key(known.change.key) and watch.wants(known.change.kind)
        ]


@dataclass(slots=True)
class _Delivered:
    event: ObservedEvent
    response_index: int
    known: _KnownChange | None  # None when the history has no such change


def _order_of(delivered: _Delivered) -> tuple[int, int]:
    position = delivered.known.position if delivered.known is not None else -1
    return (delivered.event.mod_revision, position)


class _WatchChecker:
    """Checks one watch; violations accumulate in self.violations."""

    def __init__(self, history: _History, watch: WatchObservation) -> None:
        self.history = history
        self.watch = watch
        self.violations: list[WatchViolation] = []
        self.expected = history.matching(watch)
        self.delivered: list[_Delivered] = []
        self.start_revision = self._effective_start()

    def report(self, guarantee: str, detail: str) -> None:
        self.violations.append(WatchViolation(self.watch.watch_id, guarantee, detail))

    def _effective_start(self) -> int | None:
        """The first revision this watch must deliver, when the observation says."""
        if self.watch.start_revision > 0:
            return self.watch.start_revision
        responses = self.watch.responses
        if responses and responses[0].created:
            return responses[0].header_revision + 1
        for response in responses:
            if response.events:
                return response.events[0].mod_revision
        return None

    def run(self) -> None:
        self._check_response_framing()
        self._collect_and_check_events()
        self._check_atomic()
        self._check_reliable()
        self._check_bookmarks()

    def _check_response_framing(self) -> None:
        last_header = 0
        for index, response in enumerate(self.watch.responses):
            if response.created and (index != 0 or response.events):
                self.report(
                    CREATED,
                    f"created response at position {index} "
                    f"with {len(response.events)} events; it must be first and empty",
                )
            if response.canceled and index != len(self.watch.responses) - 1:
                self.report(
                    CANCELED,
                    f"response {index} cancels the watch but "
                    f"{len(self.watch.responses) - 1 - index} responses follow",
                )
            if response.progress_notify and response.events:
                self.report(
                    BOOKMARKABLE,
                    f"progress notification (response {index}, "
                    f"revision {response.header_revision}) carries events",
                )
            if response.header_revision < last_header:
                self.report(
                    ORDERED,
                    f"response {index} header revision "
                    f"{response.header_revision} after {last_header}",
                )
            last_header = max(last_header, response.header_revision)

    def _collect_and_check_events(self) -> None:
        seen: set[tuple[int, bytes]] = set()
        previous: _Delivered | None = None
        for index, response in enumerate(self.watch.responses):
            for event in response.events:
                known = self.history.by_revision_key.get((event.mod_revision, event.key))
                delivered = _Delivered(event, index, known)
                self._check_event(delivered, response)
                identity = (event.mod_revision, event.key)
                if identity in seen:
                    self.report(
                        UNIQUE,
                        f"event {_describe(event)} delivered twice (again in response {index})",
                    )
                    continue
                seen.add(identity)
                if previous is not None and _order_of(delivered) < _order_of(previous):
                    self.report(
                        ORDERED,
                        f"event {_describe(event)} (response {index}) after "
                        f"{_describe(previous.event)}",
                    )
                self.delivered.append(delivered)
                previous = delivered

    def _check_event(self, delivered: _Delivered, response: ObservedResponse) -> None:
        event = delivered.event
        if not self.watch.matches_key(event.key):
            self.report(
                FILTERS,
                f"event {_describe(event)} outside the watched range "
                f"[{self.watch.key!r}, {self.watch.range_end!r})",
            )
        if not self.watch.wants(event.kind):
            self.report(
                FILTERS, f"event {_describe(event)} despite filters {sorted(self.watch.filters)}"
            )
        if self.start_revision is not None and event.mod_revision < self.start_revision:
            self.report(
                FILTERS,
                f"event {_describe(event)} before the watch's start revision {self.start_revision}",
            )
        if event.mod_revision > response.header_revision:
            self.report(
                AGREES,
                f"event {_describe(event)} beyond its response's header "
                f"revision {response.header_revision}",
            )
        if delivered.known is None:
            self.report(
                AGREES,
                f"event {_describe(event)}: the history has no change to "
                f"this key at revision {event.mod_revision}",
            )
            return
        for mismatch in _mismatches(event, delivered.known, self.watch.prev_kv):
            self.report(AGREES, f"event {_describe(event)}: {mismatch}")

    def _check_atomic(self) -> None:
        responses_of_revision: dict[int, set[int]] = {}
        for delivered in self.delivered:
            revision = delivered.event.mod_revision
            responses_of_revision.setdefault(revision, set()).add(delivered.response_index)
        for revision, response_indexes in sorted(responses_of_revision.items()):
            if len(response_indexes) > 1:
                self.report(
                    ATOMIC, f"revision {revision} split across responses {sorted(response_indexes)}"
                )

    def _lower_bound(self) -> int:
        """The first revision that must be delivered: after the start and any compaction."""
        assert self.start_revision is not None
        compacted = max((r.compact_revision for r in self.watch.responses), default=0)
        return max(self.start_revision, compacted)

    def _check_reliable(self) -> None:
        if self.start_revision is None or not self.delivered:
            return
        first = self._lower_bound()
        last = max(d.event.mod_revision for d in self.delivered)
        delivered = {(d.event.mod_revision, d.event.key) for d in self.delivered}
        for known in self.expected:
            change = known.change
            if first <= change.revision <= last and (change.revision, change.key) not in delivered:
                self.report(
                    RELIABLE,
                    f"missing {change.kind} of {change.key!r} at revision "
                    f"{change.revision} (delivered up to revision {last})",
                )

    def _check_bookmarks(self) -> None:
        delivered_before: set[tuple[int, bytes]] = set()
        bookmark: int | None = None  # the highest progress revision so far
        for index, response in enumerate(self.watch.responses):
            for event in response.events:
                if bookmark is not None and event.mod_revision <= bookmark:
                    self.report(
                        BOOKMARKABLE,
                        f"event {_describe(event)} (response {index}) "
                        f"after a progress notification at revision {bookmark}",
                    )
            if response.progress_notify:
                self._check_bookmark_complete(index, response.header_revision, delivered_before)
                bookmark = max(bookmark or 0, response.header_revision)
            delivered_before.update((e.mod_revision, e.key) for e in response.events)

    def _check_bookmark_complete(
        self, index: int, progress_revision: int, delivered_before: set[tuple[int, bytes]]
    ) -> None:
        if self.start_revision is None:
            return
        first = self._lower_bound()
        for known in self.expected:
            change = known.change
            if change.revision > progress_revision:
                break
            if change.revision >= first and (change.revision, change.key) not in delivered_before:
                self.report(
                    BOOKMARKABLE,
                    f"progress notification at revision "
                    f"{progress_revision} (response {index}) before the {change.kind} "
                    f"of {change.key!r} at revision {change.revision} was delivered",
                )

    def last_covered_revision(self) -> int | None:
        """The highest revision this watch vouches for: delivered or bookmarked."""
        revisions = [d.event.mod_revision for d in self.delivered]
        revisions += [r.header_revision for r in self.watch.responses if r.progress_notify]
        if revisions:
            return max(revisions)
        if self.start_revision is not None:
            return self.start_revision - 1
        return None


def _describe(event: ObservedEvent) -> str:
    return f"{event.kind} {event.key!r}@{event.mod_revision}"


def _mismatches(event: ObservedEvent, known: _KnownChange, prev_kv: bool) -> Iterable[str]:
    change = known.change
    if event.kind != change.kind:
        yield f"kind: expected {change.kind}, got {event.kind}"
    if change.kind == "put" and event.value != change.value:
        yield f"value: expected {change.value!r}, got {event.value!r}"
    if change.kind == "delete" and event.value not in (None, b""):
        yield f"value: expected none for a delete, got {event.value!r}"
    if known.create_revision is not None and event.create_revision != known.create_revision:
        yield f"create_revision: expected {known.create_revision}, got {event.create_revision}"
    if known.version is not None and event.version != known.version:
        yield f"version: expected {known.version}, got {event.version}"
    if prev_kv and event.prev_value != change.prev_value:
        yield f"prev_kv value: expected {change.prev_value!r}, got {event.prev_value!r}"


def _check_resumption(
    history: _History, earlier: _WatchChecker, later: _WatchChecker
) -> list[WatchViolation]:
    """A watch resumed at last covered revision + 1 loses nothing and repeats nothing."""
    watch = later.watch
    violations: list[WatchViolation] = []

    def report(detail: str) -> None:
        violations.append(WatchViolation(watch.watch_id, RESUMABLE, detail))

    before = earlier.watch
    if (before.key, before.range_end, before.filters, before.prev_kv) != (
        watch.key,
        watch.range_end,
        watch.filters,
        watch.prev_kv,
    ):
        report(f"resumes watch {before.watch_id} with a different range, filters or prev_kv")
    covered = earlier.last_covered_revision()
    if covered is None:
        return violations
    if later.start_revision is None:
        report(
            f"resumes watch {before.watch_id} (covered up to revision {covered}) "
            f"without a start revision"
        )
        return violations
    for known in history.matching(watch):
        change = known.change
        if covered < change.revision < later.start_revision:
            report(
                f"lost the {change.kind} of {change.key!r} at revision {change.revision} "
                f"between watch {before.watch_id} (up to {covered}) and the resume at "
                f"{later.start_revision}"
            )
    already = {(d.event.mod_revision, d.event.key) for d in earlier.delivered}
    for delivered in later.delivered:
        event = delivered.event
        if (event.mod_revision, event.key) in already:
            report(f"event {_describe(event)} already delivered by watch {before.watch_id}")
    return violations


def check_watches(
    history: Sequence[RevisionChange], watches: Sequence[WatchObservation]
) -> WatchReport:
    """Every violation of etcd's watch guarantees in the observed watches."""
    known_history = _History(history)
    checkers: dict[int, _WatchChecker] = {}
    for watch in watches:
        if watch.watch_id in checkers:
            raise InvalidWatchObservationError(f"watch id {watch.watch_id} observed twice")
        checkers[watch.watch_id] = _WatchChecker(known_history, watch)
    violations: list[WatchViolation] = []
    events_checked = 0
    for checker in checkers.values():
        checker.run()
        violations.extend(checker.violations)
        events_checked += sum(len(r.events) for r in checker.watch.responses)
    for checker in checkers.values():
        resumed_from = checker.watch.resumed_from
        if resumed_from is None:
            continue
        if resumed_from not in checkers:
            raise InvalidWatchObservationError(
                f"watch {checker.watch.watch_id} resumes unknown watch {resumed_from}"
            )
        violations.extend(_check_resumption(known_history, checkers[resumed_from], checker))
    return WatchReport(ok=not violations, violations=violations, events_checked=events_checked)
