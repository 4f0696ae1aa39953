"""The blocking SyncClient: forwarded calls, typed errors, a blocking watch iterator."""

from __future__ import annotations

import threading

import pytest

from raftkv.client import Compare, Event, EventType, Op
from raftkv.client.errors import EmptyKeyError
from raftkv.client.sync import SyncClient
from tests.etcd_process import EtcdProcess


def test_sync_calls_and_errors(etcd: EtcdProcess, prefix: str) -> None:
    with SyncClient([etcd.endpoint]) as client:
        put = client.put(prefix + "k", "v")
        got = client.get(prefix + "k")
        assert got.kvs[0].value == b"v" and got.kvs[0].mod_revision == put.header.revision
        swapped = client.txn(
            compare=[Compare.value(prefix + "k") == "v"], success=[Op.put(prefix + "k", "w")]
        )
        assert swapped.succeeded and client.get(prefix + "k").kvs[0].value == b"w"
        lease = client.lease_grant(30)
        assert lease.id in client.leases()
        client.lease_revoke(lease.id)
        with pytest.raises(EmptyKeyError):
            client.put("", "v")
        with pytest.raises(AttributeError):
            client.no_such_method()
        # The event loop runs in its own thread, not in the caller's.
        assert client.run(_loop_thread_name()) != threading.current_thread().name


async def _loop_thread_name() -> str:
    return threading.current_thread().name


def test_sync_watch_is_a_blocking_iterator(etcd: EtcdProcess, prefix: str) -> None:
    with SyncClient([etcd.endpoint]) as client:
        with client.watch(prefix, prefix=True) as watch:
            client.put(prefix + "a", "1")
            client.delete(prefix + "a")
            events: list[Event] = []
            for response in watch:
                events.extend(response.events)
                if len(events) == 2:
                    break
        assert [event.type for event in events] == [EventType.PUT, EventType.DELETE]
        assert list(watch) == []  # canceled: iteration ends at once
