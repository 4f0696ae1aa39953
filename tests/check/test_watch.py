"""The watch checker: one hand-made violation per guarantee, and random correct streams
that pass until one mutation breaks them."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pytest

from raftkv.check.watch import (
    AGREES,
    ATOMIC,
    BOOKMARKABLE,
    CANCELED,
    CREATED,
    FILTERS,
    ORDERED,
    RELIABLE,
    RESUMABLE,
    UNIQUE,
    InvalidHistoryError,
    InvalidWatchObservationError,
    ObservedEvent,
    ObservedResponse,
    RevisionChange,
    WatchFilter,
    WatchObservation,
    WatchReport,
    check_watches,
    key_in_range,
)

# --- An oracle: the correct event for a history change -------------------------------


def correct_event(
    history: Sequence[RevisionChange], revision: int, key: bytes, prev_kv: bool
) -> ObservedEvent:
    """Replays the history for the key's create_revision and version."""
    create_revision, version = 0, 0
    for change in history:
        if change.key != key or change.revision > revision:
            continue
        if change.kind == "delete":
            create_revision, version = 0, 0
        else:
            create_revision = create_revision or change.revision
            version += 1
        if change.revision == revision:
            return ObservedEvent(
                kind=change.kind,
                key=key,
                value=change.value,
                mod_revision=revision,
                create_revision=create_revision,
                version=version,
                prev_value=change.prev_value if prev_kv else None,
            )
    raise AssertionError(f"no change to {key!r} at {revision}")


def guarantees(report: WatchReport) -> set[str]:
    return {violation.guarantee for violation in report.violations}


# --- Hand-made observations over one small history -----------------------------------

HISTORY = [
    RevisionChange(2, b"a", "put", b"a1", None),
    RevisionChange(3, b"b", "put", b"b1", None),  # one txn: b and c
    RevisionChange(3, b"c", "put", b"c1", None),
    RevisionChange(4, b"a", "put", b"a2", b"a1"),
    RevisionChange(5, b"b", "delete", None, b"b1"),
    RevisionChange(6, b"a", "put", b"a3", b"a2"),  # one txn: a and c
    RevisionChange(6, b"c", "delete", None, b"c1"),
]


def ev(revision: int, key: bytes, prev_kv: bool = False) -> ObservedEvent:
    return correct_event(HISTORY, revision, key, prev_kv)


def resp(*events: ObservedEvent, header: int | None = None) -> ObservedResponse:
    assert events or header is not None
    return ObservedResponse(header if header is not None else events[-1].mod_revision, events)


def progress(revision: int) -> ObservedResponse:
    return ObservedResponse(revision, progress_notify=True)


def created(revision: int) -> ObservedResponse:
    return ObservedResponse(revision, created=True)


def all_keys(*responses: ObservedResponse, start: int = 2, watch_id: int = 1) -> WatchObservation:
    return WatchObservation(watch_id, b"", b"\0", start_revision=start, responses=responses)


def check_one(watch: WatchObservation) -> WatchReport:
    return check_watches(HISTORY, [watch])


CLEAN_RESPONSES = (
    created(1),
    resp(ev(2, b"a")),
    resp(ev(3, b"b"), ev(3, b"c")),
    progress(3),
    resp(ev(4, b"a"), ev(5, b"b")),
    resp(ev(6, b"a"), ev(6, b"c")),
    progress(7),
)


def test_the_oracle_derives_create_revision_and_version() -> None:
    assert (ev(6, b"a").create_revision, ev(6, b"a").version) == (2, 3)
    assert (ev(5, b"b").create_revision, ev(5, b"b").version) == (0, 0)
    assert ev(6, b"a", prev_kv=True).prev_value == b"a2"


def test_a_correct_stream_passes() -> None:
    report = check_one(all_keys(*CLEAN_RESPONSES))
    assert report.ok, report.violations
    assert report.events_checked == 7


def test_revisions_going_backwards_are_unordered() -> None:
    report = check_one(
        all_keys(resp(ev(2, b"a")), resp(ev(4, b"a")), resp(ev(3, b"b"), ev(3, b"c")))
    )
    assert guarantees(report) == {ORDERED}
    assert any("put b'b'@3" in v.detail for v in report.violations)


def test_a_txns_changes_out_of_history_order_are_unordered() -> None:
    report = check_one(all_keys(resp(ev(2, b"a")), resp(ev(3, b"c"), ev(3, b"b"))))
    assert guarantees(report) == {ORDERED}


def test_an_event_twice_is_not_unique() -> None:
    report = check_one(all_keys(resp(ev(2, b"a"), ev(2, b"a")), resp(ev(3, b"b"), ev(3, b"c"))))
    assert guarantees(report) == {UNIQUE}


def test_a_gap_is_unreliable() -> None:
    report = check_one(all_keys(resp(ev(2, b"a")), resp(ev(4, b"a"))))
    assert guarantees(report) == {RELIABLE}
    assert {v.detail.split(" at ")[0] for v in report.violations} == {
        "missing put of b'b'",
        "missing put of b'c'",
    }


def test_a_gap_from_the_start_revision_is_unreliable() -> None:
    report = check_one(all_keys(resp(ev(3, b"b"), ev(3, b"c")), start=2))
    assert guarantees(report) == {RELIABLE}


def test_from_now_starts_after_the_created_header() -> None:
    clean = all_keys(created(3), resp(ev(4, b"a")), resp(ev(5, b"b")), start=0)
    assert check_one(clean).ok
    skipped = all_keys(created(3), resp(ev(5, b"b")), start=0)
    assert guarantees(check_one(skipped)) == {RELIABLE}


def test_a_watch_canceled_by_compaction_owes_nothing_before_the_compaction() -> None:
    canceled = ObservedResponse(6, compact_revision=4, canceled=True)
    assert check_one(all_keys(canceled)).ok
    after_compaction = all_keys(resp(ev(4, b"a"), ev(5, b"b")), canceled)
    assert check_one(after_compaction).ok
    assert guarantees(check_one(all_keys(resp(ev(5, b"b")), canceled))) == {RELIABLE}


def test_a_response_after_cancel_is_reported() -> None:
    canceled = ObservedResponse(6, compact_revision=2, canceled=True)
    report = check_one(all_keys(canceled, resp(ev(2, b"a"))))
    assert CANCELED in guarantees(report)


def test_a_revision_split_across_responses_is_not_atomic() -> None:
    report = check_one(all_keys(resp(ev(2, b"a")), resp(ev(3, b"b")), resp(ev(3, b"c"))))
    assert guarantees(report) == {ATOMIC}
    assert "revision 3" in report.violations[0].detail


@pytest.mark.parametrize(
    ("wrong", "mentioned"),
    [
        (replace(ev(4, b"a"), value=b"zz"), "value: expected b'a2', got b'zz'"),
        (replace(ev(4, b"a"), kind="delete"), "kind: expected put, got delete"),
        (replace(ev(4, b"a"), version=1), "version: expected 2, got 1"),
        (replace(ev(4, b"a"), create_revision=4), "create_revision: expected 2, got 4"),
        (replace(ev(4, b"a"), key=b"b"), "no change to this key at revision 4"),
    ],
)
def test_an_event_unlike_the_history_disagrees(wrong: ObservedEvent, mentioned: str) -> None:
    report = check_one(all_keys(resp(ev(2, b"a")), resp(ev(3, b"b"), ev(3, b"c")), resp(wrong)))
    assert AGREES in guarantees(report)
    assert any(mentioned in v.detail for v in report.violations), report.violations


def test_a_wrong_prev_kv_disagrees_only_when_asked_for() -> None:
    wrong_prev = replace(ev(4, b"a", prev_kv=True), prev_value=b"a0")
    single = WatchObservation(1, b"a", start_revision=4, prev_kv=True, responses=[resp(wrong_prev)])
    assert guarantees(check_one(single)) == {AGREES}
    assert check_one(replace(single, prev_kv=False)).ok
    created_prev = WatchObservation(
        2, b"a", start_revision=2, prev_kv=True, responses=[resp(ev(2, b"a", prev_kv=True))]
    )
    assert check_one(created_prev).ok


def test_an_event_after_its_header_disagrees() -> None:
    report = check_one(all_keys(resp(ev(2, b"a"), header=1)))
    assert guarantees(report) == {AGREES}


def test_a_filtered_kind_or_a_key_outside_the_range_breaks_filters() -> None:
    no_delete: frozenset[WatchFilter] = frozenset({"nodelete"})
    clean = WatchObservation(
        1, b"b", b"c", start_revision=2, filters=no_delete, responses=[resp(ev(3, b"b"))]
    )
    assert check_one(clean).ok
    deleted = replace(clean, responses=[resp(ev(3, b"b")), resp(ev(5, b"b"))])
    assert guarantees(check_one(deleted)) == {FILTERS}
    outside = replace(clean, responses=[resp(ev(3, b"b"), ev(3, b"c"))])
    assert guarantees(check_one(outside)) == {FILTERS}


def test_a_created_response_not_first_is_reported() -> None:
    report = check_one(all_keys(resp(ev(2, b"a")), created(2)))
    assert guarantees(report) == {CREATED}


def resumed_pair(second_start: int, *second: ObservedResponse) -> list[WatchObservation]:
    first = all_keys(resp(ev(2, b"a")), resp(ev(3, b"b"), ev(3, b"c")), watch_id=1)
    resumed = all_keys(*second, start=second_start, watch_id=2)
    return [first, replace(resumed, resumed_from=1)]


def test_a_watch_resumed_at_the_next_revision_continues() -> None:
    report = check_watches(HISTORY, resumed_pair(4, resp(ev(4, b"a")), resp(ev(5, b"b"))))
    assert report.ok, report.violations


def test_a_resume_that_skips_a_revision_loses_it() -> None:
    report = check_watches(HISTORY, resumed_pair(5, resp(ev(5, b"b"))))
    assert guarantees(report) == {RESUMABLE}
    assert "revision 4" in report.violations[0].detail


def test_a_resume_that_repeats_a_revision_duplicates_it() -> None:
    report = check_watches(HISTORY, resumed_pair(3, resp(ev(3, b"b"), ev(3, b"c"))))
    assert guarantees(report) == {RESUMABLE}


def test_a_resume_may_continue_after_a_progress_notification() -> None:
    first = WatchObservation(1, b"c", start_revision=2, responses=[resp(ev(3, b"c")), progress(5)])
    resumed = WatchObservation(2, b"c", start_revision=6, responses=[resp(ev(6, b"c"))])
    resumed = replace(resumed, resumed_from=1)
    assert check_watches(HISTORY, [first, resumed]).ok
    too_late = replace(resumed, start_revision=7, responses=[])
    assert guarantees(check_watches(HISTORY, [first, too_late])) == {RESUMABLE}  # c@6 lost
    other_key = replace(resumed, key=b"a", responses=[resp(ev(6, b"a"))])
    assert guarantees(check_watches(HISTORY, [first, other_key])) == {RESUMABLE}


def test_a_progress_notification_ahead_of_delivery_is_not_bookmarkable() -> None:
    report = check_one(all_keys(resp(ev(2, b"a")), progress(3), resp(ev(3, b"b"), ev(3, b"c"))))
    assert guarantees(report) == {BOOKMARKABLE}
    details = " ".join(v.detail for v in report.violations)
    assert "before the put of b'b' at revision 3" in details
    assert "after a progress notification at revision 3" in details


def test_malformed_input_raises_typed_errors() -> None:
    with pytest.raises(InvalidHistoryError):
        check_watches(list(reversed(HISTORY)), [])
    with pytest.raises(InvalidHistoryError):
        check_watches([*HISTORY, replace(HISTORY[-1], kind="put", value=b"x")], [])
    with pytest.raises(InvalidWatchObservationError):
        check_watches(HISTORY, [all_keys(), all_keys()])
    with pytest.raises(InvalidWatchObservationError):
        check_watches(HISTORY, [replace(all_keys(), resumed_from=9)])


def test_a_key_created_before_the_history_is_checked_without_metadata() -> None:
    partial = [RevisionChange(10, b"k", "put", b"v2", b"v1")]
    event = ObservedEvent("put", b"k", b"v2", 10, create_revision=3, version=7)
    watch = WatchObservation(1, b"k", start_revision=10, responses=[resp(event)])
    assert check_watches(partial, [watch]).ok
    bad = replace(watch, responses=[resp(replace(event, value=b"v1"))])
    assert guarantees(check_watches(partial, [bad])) == {AGREES}


def test_key_ranges_follow_etcd() -> None:
    assert key_in_range(b"a", b"a", b"") and not key_in_range(b"ab", b"a", b"")
    assert key_in_range(b"zz", b"b", b"\0") and not key_in_range(b"a", b"b", b"\0")
    assert key_in_range(b"b", b"b", b"c") and not key_in_range(b"c", b"b", b"c")


# --- Random histories, correct streams, one mutation ---------------------------------

KEYS = [b"a", b"b", b"c", b"d"]
REVISIONS_PER_HISTORY = 25
WATCHES_PER_CASE = 4
SEEDS = range(300)


def random_history(rng: random.Random) -> list[RevisionChange]:
    live: dict[bytes, bytes] = {}
    history: list[RevisionChange] = []
    for revision in range(2, REVISIONS_PER_HISTORY + 2):
        for key in rng.sample(KEYS, rng.choice([1, 1, 1, 2, 3])):
            if key in live and rng.random() < 0.3:
                history.append(RevisionChange(revision, key, "delete", None, live.pop(key)))
            else:
                value = rng.randbytes(3)
                history.append(RevisionChange(revision, key, "put", value, live.get(key)))
                live[key] = value
    return history


@dataclass(frozen=True)
class WatchParams:
    key: bytes
    range_end: bytes
    filters: frozenset[WatchFilter]
    prev_kv: bool


def random_params(rng: random.Random) -> WatchParams:
    shape = rng.randrange(3)
    if shape == 0:
        key, range_end = rng.choice(KEYS), b""
    elif shape == 1:
        key, range_end = rng.choice(KEYS), b"\0"
    else:
        key, range_end = sorted(rng.sample([b"", *KEYS, b"e"], 2))
    filter_choices: list[frozenset[WatchFilter]] = [
        frozenset(),
        frozenset(),
        frozenset({"noput"}),
        frozenset({"nodelete"}),
    ]
    return WatchParams(key, range_end, rng.choice(filter_choices), rng.random() < 0.5)


def derive_watch(
    rng: random.Random,
    history: list[RevisionChange],
    watch_id: int,
    params: WatchParams,
    start_revision: int,
    to_the_end: bool = False,
) -> WatchObservation:
    """A correct stream: start_revision 0 means from now, at a random creation revision.
    It delivers up to a random revision, or the last one when to_the_end."""
    last_revision = history[-1].revision
    created_header = rng.randint(1, last_revision)
    first = start_revision or created_header + 1
    end = rng.randint(min(first - 1, last_revision), last_revision)
    if to_the_end:
        end = last_revision
    groups: dict[int, list[ObservedEvent]] = {}
    for change in history:
        wanted = "noput" if change.kind == "put" else "nodelete"
        if (
            first <= change.revision <= end
            and key_in_range(change.key, params.key, params.range_end)
            and wanted not in params.filters
        ):
            event = correct_event(history, change.revision, change.key, params.prev_kv)
            groups.setdefault(change.revision, []).append(event)
    responses = [created(created_header)]
    header = created_header
    pending: list[ObservedEvent] = []
    revisions = sorted(groups)
    for index, revision in enumerate(revisions):
        pending.extend(groups[revision])
        next_revision = revisions[index + 1] if index + 1 < len(revisions) else end + 1
        if next_revision <= end and rng.random() < 0.5:
            continue  # the next revision joins this response
        header = max(header, revision)
        responses.append(ObservedResponse(header, tuple(pending)))
        pending = []
        if rng.random() < 0.4 and header <= next_revision - 1:
            header = rng.randint(header, next_revision - 1)
            responses.append(progress(header))
    if not revisions and rng.random() < 0.5 and header <= end:
        responses.append(progress(rng.randint(header, end)))
    return WatchObservation(
        watch_id,
        params.key,
        params.range_end,
        start_revision=start_revision,
        prev_kv=params.prev_kv,
        filters=params.filters,
        responses=responses,
    )


def covered_revision(watch: WatchObservation) -> int:
    revisions = [e.mod_revision for r in watch.responses for e in r.events]
    revisions += [r.header_revision for r in watch.responses if r.progress_notify]
    if revisions:
        return max(revisions)
    return (watch.start_revision or watch.responses[0].header_revision + 1) - 1


def random_case(seed: int) -> tuple[random.Random, list[RevisionChange], list[WatchObservation]]:
    rng = random.Random(seed)
    history = random_history(rng)
    last_revision = history[-1].revision
    # One watch sees everything, so every mutation has something to work on.
    everything = WatchParams(b"", b"\0", frozenset(), rng.random() < 0.5)
    watches = [derive_watch(rng, history, 0, everything, 1, to_the_end=True)]
    for watch_id in range(1, WATCHES_PER_CASE - 1):
        start = 0 if rng.random() < 0.3 else rng.randint(1, last_revision + 1)
        watches.append(derive_watch(rng, history, watch_id, random_params(rng), start))
    earlier = watches[-1]
    params = WatchParams(earlier.key, earlier.range_end, earlier.filters, earlier.prev_kv)
    resumed = derive_watch(rng, history, WATCHES_PER_CASE, params, covered_revision(earlier) + 1)
    watches.append(replace(resumed, resumed_from=earlier.watch_id))
    return rng, history, watches


@pytest.mark.parametrize("seed", SEEDS)
def test_correct_random_streams_pass(seed: int) -> None:
    _, history, watches = random_case(seed)
    report = check_watches(history, watches)
    assert report.ok, report.violations
    assert report.events_checked == sum(len(r.events) for w in watches for r in w.responses)


Responses = list[ObservedResponse]
Mutation = Callable[[random.Random, Responses], Responses | None]


def event_positions(responses: Responses) -> list[tuple[int, int]]:
    return [(r, e) for r, response in enumerate(responses) for e in range(len(response.events))]


def with_events(responses: Responses, index: int, events: Sequence[ObservedEvent]) -> Responses:
    changed = list(responses)
    if events:
        changed[index] = replace(responses[index], events=tuple(events))
    else:
        del changed[index]
    return changed


def drop_event(rng: random.Random, responses: Responses) -> Responses | None:
    last = max((e.mod_revision for r in responses for e in r.events), default=0)
    candidates = [
        (r, e) for r, e in event_positions(responses) if responses[r].events[e].mod_revision < last
    ]
    if not candidates:
        return None
    r, e = rng.choice(candidates)
    events = list(responses[r].events)
    del events[e]
    return with_events(responses, r, events)


def duplicate_event(rng: random.Random, responses: Responses) -> Responses | None:
    candidates = event_positions(responses)
    if not candidates:
        return None
    r, e = rng.choice(candidates)
    events = list(responses[r].events)
    events.insert(e, events[e])
    return with_events(responses, r, events)


def swap_revisions(rng: random.Random, responses: Responses) -> Responses | None:
    positions = event_positions(responses)
    pairs = [
        (a, b)
        for a in positions
        for b in positions
        if a < b
        and responses[a[0]].events[a[1]].mod_revision < responses[b[0]].events[b[1]].mod_revision
    ]
    if not pairs:
        return None
    (ra, ea), (rb, eb) = rng.choice(pairs)
    first, second = responses[ra].events[ea], responses[rb].events[eb]
    changed = with_events(
        responses, ra, [*responses[ra].events[:ea], second, *responses[ra].events[ea + 1 :]]
    )
    return with_events(
        changed, rb, [*changed[rb].events[:eb], first, *changed[rb].events[eb + 1 :]]
    )


def split_revision(rng: random.Random, responses: Responses) -> Responses | None:
    candidates = [
        (r, e)
        for r, e in event_positions(responses)
        if e > 0 and responses[r].events[e - 1].mod_revision == responses[r].events[e].mod_revision
    ]
    if not candidates:
        return None
    r, e = rng.choice(candidates)
    head, tail = responses[r].events[:e], responses[r].events[e:]
    split = [replace(responses[r], events=tuple(head)), replace(responses[r], events=tuple(tail))]
    return [*responses[:r], *split, *responses[r + 1 :]]


def corrupt_value(rng: random.Random, responses: Responses) -> Responses | None:
    candidates = event_positions(responses)
    if not candidates:
        return None
    r, e = rng.choice(candidates)
    events = list(responses[r].events)
    events[e] = replace(events[e], value=(events[e].value or b"") + b"!")
    return with_events(responses, r, events)


def bookmark_earlier(rng: random.Random, responses: Responses) -> Responses | None:
    candidates = [
        (bookmark, target)
        for bookmark, response in enumerate(responses)
        if response.progress_notify
        for target in range(bookmark)
        if responses[target].events
    ]
    if not candidates:
        return None
    bookmark, target = rng.choice(candidates)
    moved = list(responses)
    notification = moved.pop(bookmark)
    moved.insert(target, notification)
    return moved


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "drop": (drop_event, RELIABLE),
    "duplicate": (duplicate_event, UNIQUE),
    "swap": (swap_revisions, ORDERED),
    "split": (split_revision, ATOMIC),
    "corrupt": (corrupt_value, AGREES),
    "bookmark_earlier": (bookmark_earlier, BOOKMARKABLE),
}


def resume_later(watches: list[WatchObservation], history: list[RevisionChange]) -> bool:
    """Moves the resumed watch's start one revision on, losing a change there (if any)."""
    resumed = watches[-1]
    lost = [
        c
        for c in history
        if c.revision == resumed.start_revision
        and key_in_range(c.key, resumed.key, resumed.range_end)
        and ("noput" if c.kind == "put" else "nodelete") not in resumed.filters
    ]
    if not lost:
        return False
    responses = []
    for response in resumed.responses:
        kept = tuple(e for e in response.events if e.mod_revision != resumed.start_revision)
        if kept or not response.events:
            responses.append(replace(response, events=kept))
    watches[-1] = replace(resumed, start_revision=resumed.start_revision + 1, responses=responses)
    return True


@pytest.mark.parametrize("seed", SEEDS)
def test_one_mutation_of_a_correct_stream_is_caught(seed: int) -> None:
    rng, history, watches = random_case(seed)
    names = list(MUTATIONS)
    rng.shuffle(names)
    if rng.random() < 0.15 and resume_later(watches, history):
        assert RESUMABLE in guarantees(check_watches(history, watches))
        return
    for name in names:
        mutation, guarantee = MUTATIONS[name]
        for index in rng.sample(range(len(watches)), len(watches)):
            mutated = mutation(rng, list(watches[index].responses))
            if mutated is None:
                continue
            watches[index] = replace(watches[index], responses=mutated)
            report = check_watches(history, watches)
            assert guarantee in guarantees(report), (name, index, report.violations)
            return
    pytest.fail("no mutation applies to this case")  # the generator should never allow it
