"""Watches over the MVCC store (etcd ``server/storage/mvcc/watchable_store.go``,
``watcher_group.go``).

A ``WatchHub`` listens to a ``KVStore``: after each write batch commits it gets
the batch's changes and buffers the matching events in each *synced* watcher
(one that has seen everything up to the store's revision). A watcher starting
in the past, or one whose stream is too slow, is *unsynced*: it gets nothing
from the listener and instead catches up from the stored history in
``sync_unsynced``, which the server calls periodically; once it reaches the
store's revision it is synced again. ``Watcher.next_revision`` is the first
revision a watcher has neither buffered nor handed out, and every path that
buffers events (listener and history) only takes events at or past it, so no
event is delivered twice and none is skipped.

Bounds: a watcher holds at most ``buffer_events_max`` events, counted in whole
revisions (a single larger revision is held whole, alone). A synced watcher
that would go past it falls behind at that revision's boundary, so a slow
stream costs bounded memory and never stalls the writes or the other
watchers. A catch-up pass reads at most ``max_revisions`` revisions.

Pure and single-threaded: no clock, no I/O of its own, no threads. The server's
event loop calls ``watch``, ``cancel``, ``sync_unsynced`` and ``Watcher.take``;
the hub calls each watcher's ``wake`` when it goes from nothing to take to
something to take. None of these may run while a write batch of the store is
open (the hub reads the store).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from raftkv import limits
from raftkv.storage.errors import CompactedError
from raftkv.storage.mvcc.kvstore import KVStore
from raftkv.storage.mvcc.txn import KeyValue, RangeRequest


class EventType(enum.IntEnum):
    """mvccpb.Event.EventType."""

    PUT = 0
    DELETE = 1


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """mvccpb.Event. A DELETE's ``kv`` is the tombstone: key and mod_revision
    (the delete's revision) set, everything else zero. ``prev_kv`` is the key as
    of the revision before the event (None: it did not exist, the watch did not
    ask for it, or that revision is compacted)."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What a watch watches (etcd's WatchCreateRequest).

    ``range_end``: b"" = the single ``key``; b"\\0" = every key >= ``key``;
    otherwise [key, range_end). ``start_revision`` <= 0: only future changes
    (from the current revision + 1). ``filter_put`` / ``filter_delete`` are
    etcd's NOPUT / NODELETE filters.
    """

    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    filter_put: bool = False
    filter_delete: bool = False
    prev_kv: bool = False

    @property
    def is_single_key(self) -> bool:
        return not self.range_end

    def matches(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """What one ``take`` hands out.

    ``events`` are whole revisions, in order. ``revision`` is the store revision
    through which the watcher has now had every event it matches (the header
    revision to report). ``compact_revision`` > 0: the watcher was canceled
    because the history it needed is compacted; it is the compacted revision,
    the earliest one a new watch can start from. That batch has no events and
    is the watcher's last.
    """

    events: tuple[WatchEvent, ...]
    revision: int
    compact_revision: int = 0


# Called when a watcher has something to take; must be cheap (e.g. set a flag)
# and must not raise (it may run inside a write batch's commit callback).
Wake = Callable[[], None]

# One revision's events for one watcher: (revision, events in change order).
_RevisionEvents = tuple[int, list[WatchEvent]]


class Watcher:
    """One watch: the hub buffers its events, its stream takes them."""

    __slots__ = (
        "spec",
        "_hub",
        "_wake",
        "_next_revision",
        "_synced",
        "_canceled",
        "_buffer",
        "_pending_events",
        "_compact_revision",
    )

    def __init__(
        self, hub: WatchHub, spec: WatchSpec, wake: Wake, next_revision: int, synced: bool
    ) -> None:
        self.spec = spec
        self._hub = hub
        self._wake = wake
        # Unsynced: the first revision not yet buffered. Synced: a lower bound
        # (the start revision of a watch from the future); the hub's revision
        # gives the rest, so a delivery need not touch unmatched watchers.
        self._next_revision = next_revision
        self._synced = synced
        self._canceled = False
        self._buffer: deque[_RevisionEvents] = deque()
        self._pending_events = 0
        self._compact_revision = 0  # > 0: the final, compacted batch is due

    @property
    def next_revision(self) -> int:
        """The first revision whose events this watcher has not buffered yet."""
        if self._synced:
            return max(self._next_revision, self._hub.revision + 1)
        return self._next_revision

    @property
    def is_synced(self) -> bool:
        """Whether the store's new changes reach it directly (it is caught up)."""
        return self._synced

    @property
    def canceled(self) -> bool:
        """Canceled by ``WatchHub.cancel`` or by compaction. After a compaction
        ``take`` still hands out what was buffered, then the compacted batch."""
        return self._canceled

    @property
    def pending_events(self) -> int:
        """Buffered events not taken yet."""
        return self._pending_events

    def has_pending(self) -> bool:
        return bool(self._buffer) or self._compact_revision > 0

    def take(self, max_events: int) -> WatchBatch | None:
        """The buffered events, oldest first: whole revisions, as many as fit in
        ``max_events`` but at least one revision (however large; the API layer
        fragments). None if there is nothing to take."""
        assert max_events >= 1
        buffer = self._buffer
        if buffer:
            events: list[WatchEvent] = []
            while buffer and (not events or len(events) + len(buffer[0][1]) <= max_events):
                events.extend(buffer.popleft()[1])
            self._pending_events -= len(events)
            return WatchBatch(tuple(events), self._seen_revision())
        if self._compact_revision > 0:
            batch = WatchBatch((), self._seen_revision(), self._compact_revision)
            self._compact_revision = 0
            return batch
        return None

    def _seen_revision(self) -> int:
        """The revision through which everything this watcher matches has been taken."""
        if self._buffer:
            return self._buffer[0][0] - 1
        if self._synced:
            return self._hub.revision
        return self._next_revision - 1

    def _buffer_revisions(self, revisions: list[_RevisionEvents], events_max: int) -> int | None:
        """Buffer whole revisions while they fit in ``events_max`` (a revision
        always fits an empty buffer); the first revision that did not fit, if any."""
        for revision, events in revisions:
            if self._pending_events and self._pending_events + len(events) > events_max:
                return revision
            assert not self._buffer or self._buffer[-1][0] < revision, "revisions out of order"
            self._buffer.append((revision, events))
            self._pending_events += len(events)
        return None

    def _cancel(self, compact_revision: int) -> None:
        """Stop; with ``compact_revision`` > 0 keep the buffer and queue the
        compacted batch, else drop everything."""
        self._canceled = True
        self._synced = False
        self._compact_revision = compact_revision
        if compact_revision == 0:
            self._buffer.clear()
            self._pending_events = 0


class _WatcherGroup:
    """Watchers by what they watch: single-key watchers in a dict by key, range
    watchers in one list that every change scans (etcd uses an interval tree;
    ranged watches are few). Dicts serve as ordered sets, so iteration order,
    and therefore wake order, is deterministic."""

    __slots__ = ("_by_key", "_ranges", "_count")

    def __init__(self) -> None:
        self._by_key: dict[bytes, dict[Watcher, None]] = {}
        self._ranges: dict[Watcher, None] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Watcher]:
        for watchers in self._by_key.values():
            yield from watchers
        yield from self._ranges

    def add(self, watcher: Watcher) -> None:
        spec = watcher.spec
        if spec.is_single_key:
            self._by_key.setdefault(spec.key, {})[watcher] = None
        else:
            self._ranges[watcher] = None
        self._count += 1

    def remove(self, watcher: Watcher) -> None:
        spec = watcher.spec
        if spec.is_single_key:
            watchers = self._by_key[spec.key]
            del watchers[watcher]
            if not watchers:
                del self._by_key[spec.key]
        else:
            del self._ranges[watcher]
        self._count -= 1

    def matching(self, key: bytes) -> Iterator[Watcher]:
        watchers = self._by_key.get(key)
        if watchers:
            yield from watchers
        for watcher in self._ranges:
            if watcher.spec.matches(key):
                yield watcher


class WatchHub:
    def __init__(
        self, kv: KVStore, buffer_events_max: int = limits.WATCH_BUFFER_EVENTS_MAX
    ) -> None:
        """Registers itself as ``kv``'s change and restore listener. Create it
        between write batches."""
        assert buffer_events_max >= 1
        self._kv = kv
        self.buffer_events_max = buffer_events_max
        # The store revision whose changes the synced watchers have had.
        self._revision = kv.current_revision
        self._synced = _WatcherGroup()
        self._unsynced: dict[Watcher, None] = {}
        self._listen(kv)

    def rebind(self, kv: KVStore) -> None:
        """Follow a new store (the server reopened the state machine over a
        backend replaced by a snapshot). As after a restore, every synced watcher
        catches up from the new store's history; the old store is ignored."""
        self._kv = kv
        self._listen(kv)
        self._on_restore()

    def _listen(self, kv: KVStore) -> None:
        def on_changes(changes: list[KeyValue]) -> None:
            if kv is self._kv:
                self._on_changes(changes)

        def on_restore() -> None:
            if kv is self._kv:
                self._on_restore()

        kv.add_change_listener(on_changes)
        kv.add_restore_listener(on_restore)

    @property
    def revision(self) -> int:
        """The store revision the hub has seen (the last committed change)."""
        return self._revision

    @property
    def watcher_count(self) -> int:
        return len(self._synced) + len(self._unsynced)

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    # --- Watchers ----------------------------------------------------------------

    def watch(self, spec: WatchSpec, wake: Wake) -> Watcher:
        """A new watcher. From the past (0 < start <= current revision) it is
        unsynced and catches up in ``sync_unsynced`` (call it next); else it
        gets the changes from max(start, current + 1) on as they commit."""
        start = spec.start_revision
        if 0 < start <= self._revision:
            watcher = Watcher(self, spec, wake, start, synced=False)
            self._unsynced[watcher] = None
        else:
            watcher = Watcher(self, spec, wake, max(start, self._revision + 1), synced=True)
            self._synced.add(watcher)
        return watcher

    def cancel(self, watcher: Watcher) -> None:
        """Stop the watcher and drop what it has buffered (idempotent)."""
        assert watcher._hub is self, "a watcher of another hub"
        self._detach(watcher)
        watcher._cancel(compact_revision=0)

    def progress_revision(self, watcher: Watcher) -> int | None:
        """The store revision, if the watcher is synced and has nothing to take
        (it has had every event up to it); else None (etcd answers a progress
        request only then)."""
        if watcher.is_synced and not watcher.has_pending():
            return self._revision
        return None

    # --- Catching up -------------------------------------------------------------

    def sync_unsynced(self, max_revisions: int = limits.WATCH_SYNC_MAX_REVISIONS) -> int:
        """Move events from the stored history into the unsynced watchers that have
        room, reading at most ``max_revisions`` revisions; a watcher that reaches
        the store's revision is synced again, one whose history is compacted is
        canceled with a compacted batch. Returns the number of events moved."""
        assert max_revisions >= 1
        current = self._kv.current_revision
        assert current == self._revision, "sync_unsynced inside a write batch"
        compacted = self._kv.compacted_revision
        woken: list[Watcher] = []
        catching_up: list[Watcher] = []
        for watcher in list(self._unsynced):
            if watcher._next_revision < compacted:
                self._cancel_compacted(watcher, compacted, woken)
            elif watcher._next_revision > current:
                self._resync(watcher)  # nothing to read (a restore left it ahead)
            elif watcher.pending_events < self.buffer_events_max:
                catching_up.append(watcher)
        moved = self._catch_up(catching_up, current, max_revisions, woken) if catching_up else 0
        _wake_all(woken)
        return moved

    def _catch_up(
        self, watchers: list[Watcher], current: int, max_revisions: int, woken: list[Watcher]
    ) -> int:
        """One history read from the lowest next revision, shared by ``watchers``."""
        start = min(watcher._next_revision for watcher in watchers)
        changes = self._kv.changes_between(start, current, max_revisions)
        read_through = current
        if _revision_count(changes) == max_revisions:
            read_through = changes[-1].mod_revision  # there may be more after it
        group = _WatcherGroup()
        for watcher in watchers:
            group.add(watcher)
        matched = self._match(changes, group)
        moved = 0
        for watcher in watchers:
            was_pending = watcher.has_pending()
            before = watcher.pending_events
            not_fitting = watcher._buffer_revisions(
                matched.get(watcher, []), self.buffer_events_max
            )
            moved += watcher.pending_events - before
            if not_fitting is not None:
                watcher._next_revision = not_fitting
            else:
                watcher._next_revision = max(watcher._next_revision, read_through + 1)
                if watcher._next_revision > current:
                    self._resync(watcher)
            if not was_pending and watcher.has_pending():
                woken.append(watcher)
        return moved

    def _resync(self, watcher: Watcher) -> None:
        del self._unsynced[watcher]
        watcher._synced = True
        self._synced.add(watcher)

    def _fall_behind(self, watcher: Watcher, next_revision: int) -> None:
        """Unsync a synced watcher: it catches up from ``next_revision`` later."""
        self._synced.remove(watcher)
        watcher._synced = False
        watcher._next_revision = next_revision
        self._unsynced[watcher] = None

    def _cancel_compacted(self, watcher: Watcher, compacted: int, woken: list[Watcher]) -> None:
        was_pending = watcher.has_pending()
        del self._unsynced[watcher]
        watcher._cancel(compact_revision=compacted)
        if not was_pending:
            woken.append(watcher)

    def _detach(self, watcher: Watcher) -> None:
        if watcher.is_synced:
            self._synced.remove(watcher)
        else:
            self._unsynced.pop(watcher, None)

    # --- Store listeners ---------------------------------------------------------

    def _on_changes(self, changes: list[KeyValue]) -> None:
        """A batch committed: buffer its events in the synced watchers."""
        last = changes[-1].mod_revision
        assert self._revision < changes[0].mod_revision <= last, "changes out of order"
        if not len(self._synced):
            self._revision = last
            return
        matched = self._match(changes, self._synced)
        woken: list[Watcher] = []
        for watcher, revisions in matched.items():
            was_pending = watcher.has_pending()
            not_fitting = watcher._buffer_revisions(revisions, self.buffer_events_max)
            if not_fitting is not None:
                self._fall_behind(watcher, not_fitting)
            if not was_pending and watcher.has_pending():
                woken.append(watcher)
        self._revision = last
        _wake_all(woken)

    def _on_restore(self) -> None:
        """The store's contents were replaced (a snapshot): every synced watcher
        catches up from the new history (etcd's watchableStore.Restore)."""
        for watcher in list(self._synced):
            self._fall_behind(watcher, watcher.next_revision)
        self._revision = self._kv.current_revision

    # --- Events ------------------------------------------------------------------

    def _match(
        self, changes: list[KeyValue], group: _WatcherGroup
    ) -> dict[Watcher, list[_RevisionEvents]]:
        """Each watcher's events among ``changes`` (those at or past its next
        revision that its filters let through), grouped by revision."""
        matched: dict[Watcher, list[_RevisionEvents]] = {}
        for kv in changes:
            revision = kv.mod_revision
            # This change's event without and with prev_kv, made once for all watchers.
            made: list[WatchEvent | None] = [None, None]
            for watcher in group.matching(kv.key):
                spec = watcher.spec
                if revision < watcher._next_revision:
                    continue
                if spec.filter_delete if kv.version == 0 else spec.filter_put:
                    continue
                event = made[spec.prev_kv]
                if event is None:
                    event = made[spec.prev_kv] = self._event(kv, spec.prev_kv)
                revisions = matched.setdefault(watcher, [])
                if revisions and revisions[-1][0] == revision:
                    revisions[-1][1].append(event)
                else:
                    revisions.append((revision, [event]))
        return matched

    def _event(self, kv: KeyValue, with_prev_kv: bool) -> WatchEvent:
        kind = EventType.DELETE if kv.version == 0 else EventType.PUT
        return WatchEvent(kind, kv, self._prev_kv(kv) if with_prev_kv else None)

    def _prev_kv(self, kv: KeyValue) -> KeyValue | None:
        """The key as of the revision before the change (None if it did not
        exist then or that revision is compacted). A create event (a put of version 1)
        has none, as in etcd, even when one txn deleted the key and put it again."""
        if kv.version == 1:
            return None
        try:
            response = self._kv.range(RangeRequest(kv.key, revision=kv.mod_revision - 1))
        except CompactedError:
            return None
        return response.kvs[0] if response.kvs else None


def _revision_count(changes: list[KeyValue]) -> int:
    count = 0
    last = 0
    for kv in changes:
        if kv.mod_revision != last:
            count += 1
            last = kv.mod_revision
    return count


def _wake_all(watchers: list[Watcher]) -> None:
    """Wake after the hub's state is final, so a wake that calls back in is safe."""
    for watcher in watchers:
        watcher._wake()
