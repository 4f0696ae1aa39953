"""Drive the PyPI ``etcd3`` client (0.12) through one scenario; print what it saw as JSON.

Usage: python etcd3_scenarios.py HOST PORT SCENARIO KEY_PREFIX

etcd3's generated protobuf code predates protobuf 4's C++/upb runtime, so it only loads with
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python; test_clients.py runs this script in a child
process with that set, and asserts on the printed observations. The script reports what the
library returned, not verdicts, so the assertions stay in the test.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import etcd3
import tenacity

CALL_TIMEOUT_S = 10
WATCH_EVENT_TIMEOUT_S = 10.0
WRITE_DELAY_S = 0.3  # the other thread writes after the reader is already waiting
LOCK_TTL_S = 10
LOCK_BLOCKED_TIMEOUT_S = 1
LOCK_RELEASE_DELAY_S = 0.5

Observations = dict[str, Any]


def adapt_two_argument_waits() -> None:
    """Let etcd3 0.12's Lock.acquire wait with today's tenacity.

    Its retry loop passes tenacity a ``wait(previous_attempt_number,
    delay_since_first_attempt)`` callback, a form tenacity no longer supports (it passes one
    RetryCallState), so a contended ``acquire`` raises TypeError before it talks to any
    server, etcd included. This adapts such callbacks; nothing else changes."""
    original_retry = tenacity.retry

    def retry(*args: Any, **kwargs: Any) -> Any:
        wait = kwargs.get("wait")
        if callable(wait) and len(inspect.signature(wait).parameters) == 2:
            two_argument_wait = wait
            kwargs["wait"] = lambda state: two_argument_wait(
                state.attempt_number, state.seconds_since_start
            )
        return original_retry(*args, **kwargs)

    setattr(tenacity, "retry", retry)  # noqa: B010  (etcd3 looks it up on every acquire)


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def kv(client: Any, prefix: str) -> Observations:
    client.put(f"{prefix}k1", "v1")
    client.put(f"{prefix}p/a", "1")
    client.put(f"{prefix}p/b", "2")
    value, meta = client.get(f"{prefix}k1")
    listed = [(text(meta.key), text(value)) for value, meta in client.get_prefix(f"{prefix}p/")]
    previous = client.put(f"{prefix}k1", "v2", prev_kv=True)
    deleted = client.delete(f"{prefix}k1")
    missing_delete = client.delete(f"{prefix}k1")
    prefix_deleted = client.delete_prefix(f"{prefix}p/")
    return {
        "get": [text(value), meta.version, meta.create_revision == meta.mod_revision],
        "prefix": listed,
        "prev_kv": [text(previous.prev_kv.key), text(previous.prev_kv.value)],
        "deleted": deleted,
        "missing_delete": missing_delete,
        "prefix_deleted": prefix_deleted.deleted,
        "after": [text(client.get(f"{prefix}k1")[0]), len(list(client.get_prefix(prefix)))],
    }


def txn(client: Any, prefix: str) -> Observations:
    key = f"{prefix}k"
    client.put(key, "a")
    ops = client.transactions

    def swap(expected: str) -> tuple[bool, Any]:
        succeeded, responses = client.transaction(
            compare=[ops.value(key) == expected, ops.version(key) > 0],
            success=[ops.put(key, "b"), ops.get(key)],
            failure=[ops.get(key)],
        )
        return succeeded, responses

    first, first_responses = swap("a")
    second, second_responses = swap("a")
    return {
        "first": first,
        # success: [PutResponse, [(value, meta)]] ; failure: [[(value, meta)]]
        "first_get": [text(value) for value, _ in first_responses[1]],
        "second": second,
        "second_get": [text(value) for value, _ in second_responses[0]],
        "value": text(client.get(key)[0]),
    }


def watch(client: Any, prefix: str) -> Observations:
    key = f"{prefix}w"
    events, cancel = client.watch(key)

    def writes() -> None:
        time.sleep(WRITE_DELAY_S)
        client.put(key, "1")
        client.put(f"{prefix}unwatched", "x")
        client.delete(key)

    writer = threading.Thread(target=writes)
    writer.start()
    seen = []
    deadline = time.monotonic() + WATCH_EVENT_TIMEOUT_S
    for event in events:
        seen.append([type(event).__name__, text(event.key), text(event.value)])
        if len(seen) == 2 or time.monotonic() > deadline:
            break
    cancel()
    writer.join()
    return {"events": seen}


def lease(client: Any, prefix: str) -> Observations:
    key = f"{prefix}leased"
    granted = client.lease(30)
    client.put(key, "v", lease=granted)
    _, meta = client.get(key)
    observed = {
        "granted_ttl": granted.granted_ttl,
        "remaining_ttl": granted.remaining_ttl,
        "keys": [text(k) for k in granted.keys],
        "key_lease_matches": meta.lease_id == granted.id,
        "refreshed_ttl": [response.TTL for response in granted.refresh()],
    }
    granted.revoke()
    observed["after_revoke"] = text(client.get(key)[0])
    observed["ttl_after_revoke"] = client.get_lease_info(granted.id).TTL
    return observed


def lock(client: Any, prefix: str) -> Observations:
    name = f"{prefix}lock"
    holder = client.lock(name, ttl=LOCK_TTL_S)
    waiter = client.lock(name, ttl=LOCK_TTL_S)
    acquired = holder.acquire(timeout=5)
    started = time.monotonic()
    blocked = waiter.acquire(timeout=LOCK_BLOCKED_TIMEOUT_S)
    blocked_s = time.monotonic() - started

    releaser = threading.Timer(LOCK_RELEASE_DELAY_S, holder.release)
    started = time.monotonic()
    releaser.start()
    after_release = waiter.acquire(timeout=CALL_TIMEOUT_S)
    waited_s = time.monotonic() - started
    releaser.join()
    observed = {
        "acquired": acquired,
        "blocked": blocked,
        "blocked_s": blocked_s,
        "after_release": after_release,
        "waited_s": waited_s,
        "holder_has_it": holder.is_acquired(),
        "waiter_has_it": waiter.is_acquired(),
    }
    observed["released"] = waiter.release()
    return observed


SCENARIOS: dict[str, Callable[[Any, str], Observations]] = {
    "kv": kv,
    "txn": txn,
    "watch": watch,
    "lease": lease,
    "lock": lock,
}


def main(argv: list[str]) -> None:
    host, port, scenario, prefix = argv
    adapt_two_argument_waits()
    client = etcd3.client(host=host, port=int(port), timeout=CALL_TIMEOUT_S)
    try:
        print(json.dumps(SCENARIOS[scenario](client, prefix)))
    finally:
        client.close()


if __name__ == "__main__":
    main(sys.argv[1:])
