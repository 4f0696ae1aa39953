"""Leases: the pure, tick-driven lessor. The leader proposes revocations and checkpoints."""

from raftkv.storage.lease.lessor import (
    NO_LEASE,
    Checkpoint,
    Lease,
    LeaseExpiredError,
    Lessor,
    NotPrimaryError,
    Renewal,
    TimeToLive,
    next_lease_id,
)

__all__ = [
    "NO_LEASE",
    "Checkpoint",
    "Lease",
    "LeaseExpiredError",
    "Lessor",
    "NotPrimaryError",
    "Renewal",
    "TimeToLive",
    "next_lease_id",
]
