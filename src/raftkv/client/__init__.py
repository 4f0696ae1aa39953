"""The Python client library for etcd's v3 API (raftkv speaks it), and recipes on it.

    async with Client(["127.0.0.1:2379"]) as client:
        await client.put("k", "v")
        result = await client.get("k")

See docs/client.md.
"""

from raftkv.client._transport import ClientTLS
from raftkv.client.client import Client, KeptLease
from raftkv.client.errors import (
    ClientError,
    CompactedError,
    LeaseNotFoundError,
    NoSpaceError,
    UnavailableError,
    WatchCompactedError,
)
from raftkv.client.models import (
    Compare,
    Event,
    EventType,
    KeyValue,
    Op,
    RangeResult,
    SortOrder,
    SortTarget,
    WatchResponse,
)
from raftkv.client.recipes import Election, Lock, Ownership
from raftkv.client.sync import SyncClient
from raftkv.client.watch import Watch

__all__ = [
    "Client",
    "ClientError",
    "ClientTLS",
    "CompactedError",
    "Compare",
    "Election",
    "Event",
    "EventType",
    "KeptLease",
    "KeyValue",
    "LeaseNotFoundError",
    "Lock",
    "NoSpaceError",
    "Op",
    "Ownership",
    "RangeResult",
    "SortOrder",
    "SortTarget",
    "SyncClient",
    "UnavailableError",
    "Watch",
    "WatchCompactedError",
    "WatchResponse",
]
