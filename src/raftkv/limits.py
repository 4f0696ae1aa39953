"""Every bound in raftkv, in one place.

Principle: there is a limit on everything. Each queue, batch, message and
buffer in the system names its bound here, and the asserts at the bottom
keep the bounds consistent with each other.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

# --- Raft core -------------------------------------------------------------

# Upper bound on the encoded size of the entries in one append message. A
# single entry larger than this is still sent alone (it must make progress).
RAFT_MAX_SIZE_PER_MSG_BYTES = 1 * MIB

# Flow control towards one follower in the replicate state: at most this many
# append messages, and at most this many entry bytes, may be unacknowledged.
RAFT_MAX_INFLIGHT_MSGS = 256
RAFT_MAX_INFLIGHT_BYTES = 32 * MIB

# The leader refuses new proposals while this many payload bytes are appended
# but not yet committed. The refused proposal gets ProposalDropped.
RAFT_MAX_UNCOMMITTED_ENTRIES_BYTES = 64 * MIB

# At most this many entries may be proposed in one call.
RAFT_MAX_ENTRIES_PER_PROPOSAL = 16 * KIB

# One Ready hands at most this many committed-entry bytes to the application.
RAFT_MAX_COMMITTED_SIZE_PER_READY_BYTES = 16 * MIB

# ReadIndex requests waiting at the leader (either for a quorum heartbeat or
# for the first commit of the term). Beyond this, read_index is refused.
RAFT_MAX_PENDING_READ_INDEX = 16 * KIB

# Size of the read_index request context (the caller's request id).
RAFT_MAX_READ_CONTEXT_BYTES = 64

# A follower that has been sent a snapshot and has not confirmed it within
# this many election timeouts is probed again (the snapshot is assumed lost).
RAFT_SNAPSHOT_TIMEOUT_ELECTIONS = 4

# Fixed per-entry overhead (term, index, type, framing) used when sizing
# messages; payload bytes are counted exactly.
RAFT_ENTRY_OVERHEAD_BYTES = 24

# --- Simulator -------------------------------------------------------------

SIM_MAX_NODES = 7
SIM_MAX_MESSAGES_IN_FLIGHT = 100_000
SIM_MAX_TICKS = 1_000_000

# --- Relations between bounds ----------------------------------------------

assert RAFT_MAX_INFLIGHT_MSGS >= 1
assert RAFT_MAX_INFLIGHT_BYTES >= RAFT_MAX_SIZE_PER_MSG_BYTES
assert RAFT_MAX_UNCOMMITTED_ENTRIES_BYTES >= RAFT_MAX_SIZE_PER_MSG_BYTES
assert RAFT_MAX_COMMITTED_SIZE_PER_READY_BYTES >= RAFT_MAX_SIZE_PER_MSG_BYTES
assert RAFT_ENTRY_OVERHEAD_BYTES > 0
assert SIM_MAX_NODES >= 1

# --- Storage ----------------------------------------------------------------

# LMDB's address-space reservation; the quota below is what is enforced.
BACKEND_MAP_SIZE_BYTES = 64 * 1024 * MIB
# etcd's --quota-backend-bytes default (2 GiB).
BACKEND_QUOTA_BYTES_DEFAULT = 2 * 1024 * MIB
# etcd's MaxTxnOps default.
MVCC_MAX_TXN_OPS = 128
# etcd's --max-request-bytes default (1.5 MiB).
MAX_REQUEST_BYTES = 3 * MIB // 2
# WAL segments are cut at this size (etcd: 64 MB).
WAL_SEGMENT_BYTES = 64 * 1000 * 1000
# A single WAL record (one entry, hard state, snapshot marker) is at most this.
WAL_MAX_RECORD_BYTES = MAX_REQUEST_BYTES + 64 * KIB
# Snapshot images stream to followers in chunks of this size.
SNAPSHOT_CHUNK_BYTES = 1 * MIB

assert BACKEND_QUOTA_BYTES_DEFAULT < BACKEND_MAP_SIZE_BYTES
assert WAL_MAX_RECORD_BYTES < WAL_SEGMENT_BYTES
assert MVCC_MAX_TXN_OPS >= 1
