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
# A member's write batches go into one open LMDB transaction, committed (and synced) at most
# this often or after this many batches (etcd's --backend-batch-interval and
# --backend-batch-limit defaults). What a crash loses of it, the WAL replays.
BACKEND_BATCH_INTERVAL_MS = 100
BACKEND_BATCH_LIMIT_WRITES = 10_000
# etcd's --quota-backend-bytes default (2 GiB).
BACKEND_QUOTA_BYTES_DEFAULT = 2 * 1024 * MIB
# etcd's MaxTxnOps default.
MVCC_MAX_TXN_OPS = 128
# etcd's --max-request-bytes default (1.5 MiB).
MAX_REQUEST_BYTES = 3 * MIB // 2
# The largest --max-request-bytes raftkv accepts (etcd warns above 10 MiB); the WAL's
# record bound follows from it.
MAX_REQUEST_BYTES_CEILING = 10 * MIB
# WAL segments are cut at this size (etcd: 64 MB).
WAL_SEGMENT_BYTES = 64 * 1000 * 1000
# The open segment's length is kept this far ahead of its data (fallocate), so an append's
# fdatasync has no file length to commit. etcd preallocates the whole 64 MB segment; this
# gets the same fsync (docs/performance.md, change 9) and reserves 4 MiB per member, not 64.
WAL_PREALLOCATE_BYTES = 4 * MIB
# A single WAL record (one entry, hard state, snapshot marker) is at most this.
WAL_MAX_RECORD_BYTES = MAX_REQUEST_BYTES_CEILING + 64 * KIB
# Snapshot images stream to followers in chunks of this size.
SNAPSHOT_CHUNK_BYTES = 1 * MIB

assert BACKEND_QUOTA_BYTES_DEFAULT < BACKEND_MAP_SIZE_BYTES
assert WAL_MAX_RECORD_BYTES < WAL_SEGMENT_BYTES
assert MVCC_MAX_TXN_OPS >= 1

# --- WAL and snapshot files (storage/wal/, storage/snap/) --------------------

# The WAL record header stores the payload length in 32 bits.
assert WAL_MAX_RECORD_BYTES < 2**32
# One entry is one record, so a request that fits the request limit fits a record.
assert WAL_MAX_RECORD_BYTES > MAX_REQUEST_BYTES_CEILING + RAFT_ENTRY_OVERHEAD_BYTES
assert MAX_REQUEST_BYTES <= MAX_REQUEST_BYTES_CEILING
# A snapshot file or stream holds at most this many voters plus learners.
SNAPSHOT_MAX_CONF_NODES = 1024
# A snapshot image is at most the whole backend, plus room for its framing; a
# received stream that announces or delivers more is rejected.
SNAPSHOT_MAX_BYTES = BACKEND_MAP_SIZE_BYTES + 1 * MIB
# Snapshot files kept on disk by purge (etcd's --max-snapshots default).
SNAPSHOT_KEEP_FILES = 5

assert SIM_MAX_NODES <= SNAPSHOT_MAX_CONF_NODES
assert BACKEND_QUOTA_BYTES_DEFAULT < SNAPSHOT_MAX_BYTES
assert SNAPSHOT_CHUNK_BYTES <= SNAPSHOT_MAX_BYTES
assert SNAPSHOT_KEEP_FILES >= 1

# --- Leases (etcd server/lease/lessor.go) and quota (server/storage/quota.go) -------------

# etcd's MaxLeaseTTL: a grant asking for more fails with "too large lease TTL".
LEASE_MAX_TTL_SECONDS = 9_000_000_000
# The primary hands out at most this many expired leases per second for revocation
# (etcd's leaseRevokeRate), and at most this many per call of Lessor.expired().
LEASE_REVOKE_PER_SECOND = 1000
LEASE_EXPIRED_PER_CALL_MAX = LEASE_REVOKE_PER_SECOND
# Revocations of expired leases proposed but not yet applied (etcd's expiredC buffer).
LEASE_MAX_PENDING_REVOKES = 16
# An expired lease whose revocation has not been applied is handed out again after
# this long: the proposal may have been lost (etcd's expiredLeaseRetryInterval).
LEASE_EXPIRED_RETRY_SECONDS = 3
# The primary records each long lease's remaining TTL through Raft this often, so a
# leader change does not restart the lease at its full TTL (etcd: 5 minutes).
LEASE_CHECKPOINT_INTERVAL_SECONDS = 5 * 60
# At most this many checkpoints per call of Lessor.checkpoints(), i.e. per proposal
# (etcd's maxLeaseCheckpointBatchSize and leaseCheckpointRate).
LEASE_CHECKPOINT_BATCH_MAX = 1000
# Lease ids are random positive int64 values; a collision with an existing lease
# (odds about n / 2**63) is retried at most this many times.
LEASE_ID_ATTEMPTS_MAX = 64
# Cost estimates the quota adds to a request's raw bytes (etcd's kvOverhead and
# leaseOverhead): a put costs KV overhead + key + value, a lease grant the lease overhead.
QUOTA_KV_OVERHEAD_BYTES = 256
QUOTA_LEASE_OVERHEAD_BYTES = 64

assert 0 < LEASE_EXPIRED_PER_CALL_MAX <= LEASE_REVOKE_PER_SECOND
assert LEASE_MAX_PENDING_REVOKES >= 1
assert LEASE_EXPIRED_RETRY_SECONDS >= 1
assert LEASE_CHECKPOINT_INTERVAL_SECONDS > LEASE_EXPIRED_RETRY_SECONDS
assert LEASE_CHECKPOINT_BATCH_MAX >= 1
assert LEASE_ID_ATTEMPTS_MAX >= 1
assert QUOTA_KV_OVERHEAD_BYTES + QUOTA_LEASE_OVERHEAD_BYTES < BACKEND_QUOTA_BYTES_DEFAULT

# --- MVCC (storage/mvcc/) ---------------------------------------------------

# A revision is packed into one int as main << SUB_BITS | sub, and stored as 8
# big-endian bytes, so one main revision (one request) may make at most
# 2**20 changes (a delete range of more keys is refused before it writes), and
# main revisions fit in 64 - 20 = 44 bits (17 trillion requests).
MVCC_REVISION_SUB_BITS = 20
MVCC_MAX_CHANGES_PER_REVISION = 1 << MVCC_REVISION_SUB_BITS
MVCC_MAX_MAIN_REVISION = (1 << (64 - MVCC_REVISION_SUB_BITS)) - 1

assert MVCC_MAX_CHANGES_PER_REVISION > MVCC_MAX_TXN_OPS
assert MVCC_MAX_MAIN_REVISION >= 2**40

# --- Peer transport (server/codec.py, server/transport.py) ------------------

# A Raft message on the wire: an APP holds entries within RAFT_MAX_SIZE_PER_MSG_BYTES (the
# per-entry overhead counted there covers the encoded entry header), except that one larger
# entry (one request, up to the highest --max-request-bytes) goes alone; the rest is the
# header, context and conf state.
PEER_MAX_MESSAGE_BYTES = RAFT_MAX_SIZE_PER_MSG_BYTES + MAX_REQUEST_BYTES_CEILING + 64 * KIB
# Entries in one message: an APP's entries each count at least the overhead, and a
# forwarded PROP holds at most one proposal batch.
PEER_MAX_ENTRIES_PER_MESSAGE = RAFT_MAX_SIZE_PER_MSG_BYTES // RAFT_ENTRY_OVERHEAD_BYTES
# Payload of one generic peer request (e.g. a forwarded lease keepalive), and of its reply.
PEER_REQUEST_MAX_BYTES = 1 * MIB
# One frame's payload: a message (plus a snapshot's 8-byte size), a snapshot chunk, or a
# request (plus its 8-byte id).
PEER_MAX_FRAME_BYTES = PEER_MAX_MESSAGE_BYTES + 64
# Messages waiting for one peer's connection; beyond either bound a message is dropped
# (Raft retransmits). The byte bound holds everything Raft's flow control lets out.
PEER_SEND_QUEUE_MAX = 4096
PEER_SEND_QUEUE_MAX_BYTES = 64 * MIB
# One write to a peer's connection carries at most this many bytes of queued frames (a
# single larger frame goes alone).
PEER_SEND_BATCH_MAX_BYTES = 4 * MIB
# Frames written straight from send() while a stream's socket buffer holds less than this;
# above it the stream task waits for the buffer to drain (with PEER_IO_TIMEOUT_MS).
PEER_WRITE_BUFFER_HIGH_BYTES = 1 * MIB
# Reconnecting to a peer: exponential backoff with jitter between these delays.
PEER_RECONNECT_BACKOFF_MIN_MS = 50
PEER_RECONNECT_BACKOFF_MAX_MS = 1000
# Connecting, and the handshake (a connection that says nothing is closed after this).
PEER_DIAL_TIMEOUT_MS = 1000
PEER_HANDSHAKE_TIMEOUT_MS = 5000
# A write that makes no progress, or a snapshot frame that does not arrive, within this.
PEER_IO_TIMEOUT_MS = 10_000
# The receiver of a snapshot confirms it after writing and fsyncing the whole file.
PEER_SNAPSHOT_ACK_TIMEOUT_MS = 60_000
# Requests one peer has outstanding on one connection, in either direction.
PEER_MAX_PENDING_REQUESTS = 256
# Accepted connections at once, and incoming snapshots at once.
PEER_MAX_INBOUND_CONNECTIONS = 256
PEER_MAX_INBOUND_SNAPSHOTS = 2
# A connection's reader buffers up to about twice this before it stops reading the socket.
PEER_READ_BUFFER_BYTES = 1 * MIB
# The error text a failed peer request sends back is cut to this.
PEER_REQUEST_ERROR_TEXT_MAX_BYTES = 1 * KIB

assert PEER_MAX_MESSAGE_BYTES > RAFT_MAX_SIZE_PER_MSG_BYTES + MAX_REQUEST_BYTES_CEILING
assert PEER_MAX_ENTRIES_PER_MESSAGE >= RAFT_MAX_ENTRIES_PER_PROPOSAL
assert PEER_MAX_FRAME_BYTES >= SNAPSHOT_CHUNK_BYTES
assert PEER_MAX_FRAME_BYTES >= PEER_REQUEST_MAX_BYTES + 8
assert PEER_MAX_FRAME_BYTES < 2**32  # the frame header stores the length in 32 bits
assert PEER_SEND_QUEUE_MAX > RAFT_MAX_INFLIGHT_MSGS
assert PEER_SEND_QUEUE_MAX_BYTES > RAFT_MAX_INFLIGHT_BYTES + PEER_MAX_FRAME_BYTES
assert PEER_SEND_BATCH_MAX_BYTES >= SNAPSHOT_CHUNK_BYTES
assert 0 < PEER_RECONNECT_BACKOFF_MIN_MS <= PEER_RECONNECT_BACKOFF_MAX_MS
assert PEER_MAX_PENDING_REQUESTS >= 1
assert PEER_MAX_INBOUND_CONNECTIONS >= 3  # a peer's stream, request and snapshot connections
assert PEER_MAX_INBOUND_SNAPSHOTS >= 1
assert PEER_REQUEST_ERROR_TEXT_MAX_BYTES + 8 <= PEER_MAX_FRAME_BYTES

# --- Watch (storage/mvcc/watchable.py) ----------------------------------------

# Events one watcher may hold that its stream has not taken. A watcher that would
# go past it falls behind ("unsynced") and catches up from the stored history
# later, so a slow stream costs bounded memory and never stalls the others. One
# revision's events are never split, so a single larger revision is held whole.
WATCH_BUFFER_EVENTS_MAX = 1024
# Revisions of history one catch-up pass reads (etcd's watch batch, 1000).
WATCH_SYNC_MAX_REVISIONS = 1000

assert WATCH_BUFFER_EVENTS_MAX >= 1
assert WATCH_SYNC_MAX_REVISIONS >= 1

# --- Server configuration (server/config.py) and `raftkv up` (up.py) ----------

# etcd's maxElectionMs: --election-timeout may be at most this.
SERVER_ELECTION_TIMEOUT_MAX_MS = 50_000
# etcd: --election-timeout must be at least this many --heartbeat-interval.
SERVER_ELECTION_HEARTBEAT_RATIO_MIN = 5
# --quota-backend-bytes above etcd's recommended maximum (8 GiB) draws a warning; it may
# be at most half the LMDB map size (the hard ceiling of the backend), leaving room for
# the copy-on-write pages of open transactions.
SERVER_QUOTA_BACKEND_BYTES_WARN = 8 * 1024 * MIB
SERVER_QUOTA_BACKEND_BYTES_MAX = BACKEND_MAP_SIZE_BYTES // 2
# --max-txn-ops is at most this: every op of a txn may be a change in one revision.
SERVER_MAX_TXN_OPS_CEILING = 64 * KIB
# A --config-file larger than this is refused (etcd's files are a few KiB).
SERVER_CONFIG_FILE_MAX_BYTES = 1 * MIB
# `raftkv up` runs at most this many members, spaced this many ports apart.
UP_MAX_MEMBERS = 7
UP_PORT_STRIDE = 10
# `raftkv up` waits this long for members to exit after SIGTERM before SIGKILL.
UP_STOP_GRACE_SECONDS = 10

assert SERVER_ELECTION_HEARTBEAT_RATIO_MIN >= 1
assert BACKEND_QUOTA_BYTES_DEFAULT <= SERVER_QUOTA_BACKEND_BYTES_WARN
assert SERVER_QUOTA_BACKEND_BYTES_WARN < SERVER_QUOTA_BACKEND_BYTES_MAX < BACKEND_MAP_SIZE_BYTES
assert MVCC_MAX_TXN_OPS <= SERVER_MAX_TXN_OPS_CEILING < MVCC_MAX_CHANGES_PER_REVISION
assert UP_MAX_MEMBERS <= SNAPSHOT_MAX_CONF_NODES
# Each member of `raftkv up` uses three ports (client, peer, gateway) inside its stride.
assert UP_PORT_STRIDE >= 3

# --- Python client (client/) -------------------------------------------------

# One call is tried at most this many times (across endpoints) before its last error is raised.
CLIENT_MAX_ATTEMPTS = 8
# Pause before a retry: doubles from the initial value up to the maximum.
CLIENT_BACKOFF_INITIAL_S = 0.05
CLIENT_BACKOFF_MAX_S = 1.0
# etcd's clientv3 defaults: requests up to 2 MiB, responses up to 2 GiB - 1.
CLIENT_MAX_SEND_MESSAGE_BYTES = 2 * MIB
CLIENT_MAX_RECEIVE_MESSAGE_BYTES = 2**31 - 1
# gRPC keepalive pings on open streams, so a silent endpoint is noticed; etcd refuses pings
# more frequent than every 5 s (its keepalive enforcement policy).
CLIENT_KEEPALIVE_INTERVAL_MS = 10_000
CLIENT_KEEPALIVE_TIMEOUT_MS = 5_000
# A kept-alive lease is renewed every ttl / this, and at least this often in seconds.
CLIENT_LEASE_RENEWALS_PER_TTL = 3
CLIENT_LEASE_RENEW_MIN_INTERVAL_S = 0.2

assert CLIENT_MAX_ATTEMPTS >= 1
assert 0 < CLIENT_BACKOFF_INITIAL_S <= CLIENT_BACKOFF_MAX_S
assert CLIENT_MAX_SEND_MESSAGE_BYTES > MAX_REQUEST_BYTES
assert CLIENT_KEEPALIVE_INTERVAL_MS >= 5_000
assert CLIENT_LEASE_RENEWALS_PER_TTL >= 2

# --- JSON gateway (api/gateway.py) and the Lock/Election services (api/concurrency.py) --

# The request line and headers of one HTTP request; a larger head is refused (431).
GATEWAY_MAX_HEADER_BYTES = 64 * KIB
# A request body may hold the largest gRPC request as JSON: base64 makes its bytes 4/3
# as many, and field names, quotes and numbers add this much (etcd's gRPC layer allows
# --max-request-bytes plus 512 KiB of overhead for the same reason).
GATEWAY_BODY_OVERHEAD_BYTES = 512 * KIB
# A response message from the member's own gRPC server (etcd's gateway client: 2 GiB - 1).
GATEWAY_MAX_RESPONSE_BYTES = 2**31 - 1
# Open connections at once; beyond it a new connection is closed at once.
GATEWAY_MAX_CONNECTIONS = 1024
# A kept-alive connection with no request for this long is closed; a request whose
# head and body take longer than the read timeout to arrive is refused (408).
GATEWAY_IDLE_TIMEOUT_SECONDS = 120
GATEWAY_READ_TIMEOUT_SECONDS = 30
# /health answers "false" when its linearizable read takes longer than this.
GATEWAY_HEALTH_TIMEOUT_SECONDS = 3
# A Lock or Election waiter takes at most this many events from its watcher at a time.
CONCURRENCY_WATCH_BATCH_EVENTS = 128

assert GATEWAY_MAX_HEADER_BYTES >= 4 * KIB
assert GATEWAY_BODY_OVERHEAD_BYTES >= 64 * KIB
assert GATEWAY_MAX_RESPONSE_BYTES > MAX_REQUEST_BYTES_CEILING
assert GATEWAY_MAX_CONNECTIONS >= 1
assert 0 < GATEWAY_READ_TIMEOUT_SECONDS <= GATEWAY_IDLE_TIMEOUT_SECONDS
assert GATEWAY_HEALTH_TIMEOUT_SECONDS > 0
assert CONCURRENCY_WATCH_BATCH_EVENTS >= 1

# --- Client API: etcd v3 gRPC services (api/) ---------------------------------

# etcd's grpcOverheadBytes: the gRPC receive limit is --max-request-bytes plus this, so a
# request a little over the limit still arrives and gets "request is too large".
API_GRPC_OVERHEAD_BYTES = 512 * KIB
# What one response may be: etcd's server sends up to math.MaxInt32 (big ranges, watch
# batches of large values); clientv3 receives as much.
API_GRPC_MAX_SEND_MESSAGE_BYTES = 2**31 - 1
# RPCs running at once on one server (watch and keepalive streams included); beyond it
# gRPC answers RESOURCE_EXHAUSTED. etcd has no such bound.
API_MAX_CONCURRENT_RPCS = 64 * KIB
# Watches open on one Watch stream at once; a create beyond it is refused (canceled).
WATCH_MAX_WATCHERS_PER_STREAM = 4096
# Control responses (created, canceled, progress) a Watch stream holds for its sender;
# when full the stream stops reading requests (etcd's ctrlStreamBufLen).
WATCH_CONTROL_QUEUE_MAX = 128
# Events taken from one watcher for one response (whole revisions; a single larger
# revision is sent whole, fragmented if the watch asked for it).
WATCH_RESPONSE_EVENTS_MAX = 1000
# Bytes of one watch response made of several revisions: a larger batch is split at
# revision boundaries (a single larger revision still goes whole), so a catching-up
# watcher fits gRPC's default 4 MiB receive limit. etcd sends the batch in one response.
WATCH_RESPONSE_MAX_BYTES = 1 * MIB
# Watch events converted to protobuf, kept for the other watchers of the same change: the
# hub makes one event per change for all its watchers, and the API converts it once.
WATCH_EVENT_CACHE_ENTRIES = 4096

# The HTTP/2 front end (api/h2/, the default). Streams open at once on one connection
# (beyond it a new stream is refused with REFUSED_STREAM); the receive windows it grants
# per stream and per connection (so a client may have this much in flight unread); the
# largest frame it accepts (HTTP/2's default, never raised in its SETTINGS) and the largest
# header block (grpc-go's default metadata limit is 16 KiB).
API_H2_MAX_CONCURRENT_STREAMS = 4096
API_H2_STREAM_WINDOW_BYTES = 1 * MIB
API_H2_CONNECTION_WINDOW_BYTES = 16 * MIB
API_H2_MAX_FRAME_BYTES = 16 * KIB
API_H2_MAX_HEADER_LIST_BYTES = 16 * KIB
# Response bytes one streaming call may have queued unsent (waiting for the client's window
# or the socket) before its writer waits: a slow watcher holds at most this much.
API_H2_MAX_PENDING_BYTES_PER_CALL = 4 * MIB
# How often a stopping server checks whether its connections have ended.
API_H2_STOP_POLL_S = 0.01
# Header blocks a connection's decoder remembers (while its HPACK table is unchanged) with
# the request head parsed from them (when full, it forgets them all and starts again), and
# the largest block it remembers: a repeating client's blocks are tens of bytes, so this
# holds at most 64 KiB per connection.
API_H2_MAX_CACHED_HEADER_BLOCKS = 64
API_H2_MAX_CACHED_HEADER_BLOCK_BYTES = 1 * KIB
# Calls' grpc-timeout deadlines share one timer, in buckets this wide (a deadline fires at
# most this late); deadlines further off than the horizon are re-filed when it passes, so
# there are at most horizon / width buckets.
API_H2_DEADLINE_BUCKET_S = 0.01
API_H2_DEADLINE_HORIZON_S = 60.0

assert API_GRPC_MAX_SEND_MESSAGE_BYTES > MAX_REQUEST_BYTES + API_GRPC_OVERHEAD_BYTES
assert API_H2_CONNECTION_WINDOW_BYTES >= API_H2_STREAM_WINDOW_BYTES >= API_H2_MAX_FRAME_BYTES
assert API_H2_CONNECTION_WINDOW_BYTES < 2**31
assert API_GRPC_MAX_SEND_MESSAGE_BYTES >= SNAPSHOT_CHUNK_BYTES + API_GRPC_OVERHEAD_BYTES
assert WATCH_MAX_WATCHERS_PER_STREAM >= 1
assert WATCH_CONTROL_QUEUE_MAX >= 1
assert WATCH_RESPONSE_EVENTS_MAX >= 1
assert WATCH_RESPONSE_MAX_BYTES < 4 * MIB  # gRPC's default receive limit

# --- Server (server/node.py) -------------------------------------------------

# Proposals are refused with "too many requests" while more committed entries than this
# wait to be applied (etcd's maxGapBetweenApplyAndCommitIndex).
SERVER_MAX_APPLY_BACKLOG_ENTRIES = 5000
# Proposals waiting for their result, and linearizable reads waiting for a read index, on
# one member; beyond either, requests are refused with "too many requests" (never proposed).
SERVER_MAX_PENDING_PROPOSALS = 64 * KIB
SERVER_MAX_PENDING_READS = 64 * KIB
# The queue that times those two out (server/timeouts.py) keeps answered entries behind an
# unanswered one at its front; it drops them all when it reaches this length (or twice its
# length after the last drop), so it holds at most about twice what is really pending.
SERVER_TIMEOUT_QUEUE_COMPACT_LENGTH = 1 * KIB
# Queued proposals handed to Raft in one propose_batch call.
SERVER_MAX_PROPOSALS_PER_BATCH = 1024
# A Ready of at most this many entries, and as many to apply, syncs the WAL on the loop
# thread; a larger one syncs in the WAL thread while the loop goes on (server/node.py).
SERVER_INLINE_SYNC_MAX_ENTRIES = 1
# ... unless the last sync took longer than this: a slow disk then stalls writes, not the
# member's whole loop (health, metrics, serializable reads).
SERVER_INLINE_SYNC_MAX_MS = 5
# A leader holds a commit notice (an empty MsgApp) this long, unless a later MsgApp to the
# same follower carries its commit index first (server/commit_notices.py): the most a
# follower learns of a commit later than it would otherwise.
SERVER_COMMIT_NOTICE_HOLD_MS = 2
# Learners a cluster may have at once (etcd's default --max-learners).
SERVER_MAX_LEARNERS = 1
# How often the member publishes attributes, syncs lagging watchers and checks compaction.
SERVER_HOUSEKEEPING_INTERVAL_MS = 100
# Peer messages received while the Ready loop holds the core (during a WAL fsync) wait here;
# beyond this many, messages are dropped (Raft resends) rather than buffered without bound.
SERVER_MAX_INBOX_MESSAGES = 64 * KIB
# A peer heard from within this long counts as connected for the reconfiguration guard
# (etcd's HealthInterval): no voter is added while a voter is silent, and none is removed
# if the connected rest would not be a quorum.
SERVER_MEMBER_HEALTH_INTERVAL_S = 5.0
# etcd's --initial-election-tick-advance: a starting member waits up to this long for
# enough peer connections to win an election, polling at this interval, then advances its
# election clock so the first election comes a couple of ticks later, not a full timeout.
SERVER_TICK_ADVANCE_WAIT_S = 5.0
SERVER_TICK_ADVANCE_POLL_S = 0.05
# Entries kept in the log after a snapshot, so a slightly lagging follower catches up
# from the log rather than a snapshot (etcd's SnapshotCatchUpEntries).
SNAPSHOT_CATCHUP_ENTRIES = 5000

assert SERVER_MAX_PROPOSALS_PER_BATCH <= RAFT_MAX_ENTRIES_PER_PROPOSAL

# Python's cycle collector in `raftkv serve` (server/main.py; a member run as a library
# leaves the host's settings alone). With the default (700, 10, 10) a loaded member
# collected about 100 times a second, and its full collections, which walk the whole key
# index, took 60-90 ms each: 15-20% of its CPU (docs/performance.md, change 11). Reference
# counting frees nearly all garbage at once; the collector is for cycles only, so it runs
# every this many net new container objects (its older generations in proportion).
SERVER_GC_THRESHOLDS = (20_000, 10, 10)

# --- Linearizability checker (check/linearizability.py) ---------------------------

# (linearized-ops, state) pairs the check may visit in one partition; beyond it the
# verdict is UNKNOWN (the search is exponential in concurrency, the cache is its memory).
CHECK_MAX_VISITED_STATES = 2_000_000
# Search steps between two looks at the clock (time.monotonic is not free in a hot loop).
CHECK_CLOCK_EVERY_STEPS = 1024
# A violation's witness: at most this many direct candidates (stale reads) are tried before
# the checker falls back to shrinking the failing history.
CHECK_WITNESS_CANDIDATES = 20

assert CHECK_MAX_VISITED_STATES >= 1
assert CHECK_CLOCK_EVERY_STEPS >= 1
assert CHECK_WITNESS_CANDIDATES >= 1

# --- Verify report (verify/report.py) -----------------------------------------------

# Points in the latency scatter of timeline.png (and unknown-op marks); beyond it every k-th
# op is drawn, so a 200k-op run still renders in seconds.
REPORT_SCATTER_MAX_POINTS = 20_000
# Throughput buckets across the run; a longer run gets buckets wider than 1 s.
REPORT_MAX_THROUGHPUT_BUCKETS = 10_000
# Ops drawn in one anomaly's SVG timeline (and listed under it); a witness is small.
REPORT_SVG_MAX_OPS = 200
# Characters of an op's "input → output" label on its bar, and of its tooltip.
REPORT_SVG_LABEL_MAX_CHARS = 60
REPORT_SVG_TOOLTIP_MAX_CHARS = 2000

assert REPORT_SCATTER_MAX_POINTS >= 1
assert REPORT_MAX_THROUGHPUT_BUCKETS >= 1
assert REPORT_SVG_MAX_OPS >= 1
assert REPORT_SVG_TOOLTIP_MAX_CHARS >= REPORT_SVG_LABEL_MAX_CHARS >= 2

# --- Verify network (verify/network.py) ---------------------------------------------

# Hosts (server namespaces) one verify network may have; addresses .1 .. .N of its /24.
NETWORK_MAX_HOSTS = 64
# One `ip`/`tc` invocation (a whole batch) must finish within this.
NETWORK_COMMAND_TIMEOUT_MS = 10_000
# Random run tags / 10.X.Y.0/24 subnets tried before giving up (collisions are rare).
NETWORK_PICK_ATTEMPTS = 256
# A run tag is at most this long: "raftkv-" + tag names the root-side veth (<= 15 chars).
NETWORK_RUN_TAG_MAX_CHARS = 8
# Packets queued on a slow link before it tail-drops (the queue is what delays them).
NETWORK_SLOW_QUEUE_PACKETS = 100
# Rate of the htb classes that must not shape (traffic to the runner, unfaulted peers).
NETWORK_UNLIMITED_RATE_GBIT = 10
# Bytes an htb class sends per round; explicit, so tc does not warn at very low or high rates.
NETWORK_HTB_QUANTUM_BYTES = 1514

assert NETWORK_MAX_HOSTS < 254  # .254 is the runner's own address
assert NETWORK_SLOW_QUEUE_PACKETS >= 1

# --- Verify proxy (verify/proxy.py) -------------------------------------------------

# Hosts one proxy network may have (each has its fronts; NetnsNetwork's limit, kept apart).
PROXY_MAX_HOSTS = 64
# Connections proxied at once, over all fronts; one more is closed at accept (peers redial).
PROXY_MAX_CONNECTIONS = 1024
# Bytes read from a new connection to learn its sender (a raftkv handshake or one HTTP
# header block); past it, or after PROXY_SNIFF_TIMEOUT_MS of silence, the sender is unknown.
PROXY_SNIFF_MAX_BYTES = 8 * 1024
PROXY_SNIFF_TIMEOUT_MS = 2000
# Characters of an X-Server-From value scanned for on an unidentified HTTP connection.
PROXY_HEADER_VALUE_MAX_BYTES = 64
# One read from a socket; and the unit a fault is applied to (throttled, loss-stalled).
PROXY_CHUNK_BYTES = 64 * 1024
PROXY_PIECE_BYTES = 16 * 1024
# Bytes waiting in the proxy's write buffer towards one side before it stops reading.
PROXY_WRITE_BUFFER_BYTES = 128 * 1024
# Bound on the bytes the proxy holds for one direction of one connection: the reader's
# buffer (at most 2 chunks before asyncio pauses reading), the chunk in hand, the write
# buffer and the piece just written past its high-water mark. Beyond it: TCP backpressure.
PROXY_MAX_HELD_BYTES_PER_DIRECTION = 512 * 1024
# Connecting to the member behind a front.
PROXY_CONNECT_TIMEOUT_MS = 1000
# A "lost" piece is delivered after this stall, as TCP's retransmission would deliver it.
PROXY_LOSS_STALL_MS = 200
# A slow host may send this many bytes at once after a pause (the token bucket's depth).
PROXY_SLOW_BURST_BYTES = 16 * 1024
# A public method waits this long for the proxy's event loop to carry it out.
PROXY_CALL_TIMEOUT_MS = 10_000
# Pending connections a front's listening socket queues.
PROXY_LISTEN_BACKLOG = 128

assert PROXY_SNIFF_MAX_BYTES >= 64
assert PROXY_PIECE_BYTES <= PROXY_CHUNK_BYTES
assert PROXY_PIECE_BYTES <= PROXY_SLOW_BURST_BYTES
assert (
    3 * PROXY_CHUNK_BYTES + PROXY_WRITE_BUFFER_BYTES + PROXY_PIECE_BYTES + PROXY_SNIFF_MAX_BYTES
    <= PROXY_MAX_HELD_BYTES_PER_DIRECTION
)

# --- Bench (bench/) -------------------------------------------------------------------

# Load generator settings accepted by `raftkv bench` (etcd's benchmark tool has no caps;
# these keep one run within what one machine's processes and file descriptors can hold).
BENCH_MAX_CLIENTS = 10_000
BENCH_MAX_CONNECTIONS = 1_000
BENCH_MAX_WORKERS = 64
BENCH_MAX_WATCHERS = 10_000
BENCH_MAX_KEY_BYTES = 1024
# A put's value stays under the server's request limit with room for the key and framing.
BENCH_MAX_VALUE_BYTES = MAX_REQUEST_BYTES - 64 * KIB
BENCH_MAX_KEY_SPACE = 10**12
BENCH_MAX_RATE_OPS_S = 10_000_000
# Latency histogram: values in ns, clamped to [lowest, highest]; 2**SUB_BUCKET_BITS linear
# buckets per power of two, so a bucket is at most 1/128 of its value wide and its midpoint
# is within 0.4% of any value in it (the stated error is 1%).
BENCH_HISTOGRAM_LOWEST_NS = 1_000
BENCH_HISTOGRAM_HIGHEST_NS = 60 * 10**9
BENCH_HISTOGRAM_SUB_BUCKET_BITS = 7
BENCH_HISTOGRAM_RELATIVE_ERROR = 0.01
# Rate limit: the token bucket holds at most this many seconds' worth of a worker's share
# (and at least one token), so a stalled client cannot release a burst.
BENCH_RATE_BURST_S = 0.01
# Workers report their counts this often; the progress line is redrawn as often.
BENCH_PROGRESS_INTERVAL_S = 0.5
# One RPC of the load may take this long before it counts as an error.
BENCH_RPC_TIMEOUT_S = 30.0
# Worker processes must connect (and open their watches) within this.
BENCH_WORKER_START_TIMEOUT_S = 120.0
# After the writes of the watch workload, watchers get this long to receive every event,
# and give up sooner when no event arrived for the stall timeout.
BENCH_WATCH_DRAIN_TIMEOUT_S = 600.0
BENCH_WATCH_STALL_TIMEOUT_S = 10.0
# Distinct error messages kept per worker (the rest are counted under "other").
BENCH_MAX_ERROR_KINDS = 20
BENCH_ERROR_MESSAGE_MAX_CHARS = 200
# Puts per Txn when preloading keys (etcd's --max-txn-ops default is 128).
BENCH_LOAD_TXN_OPS = 100
# Preload Txns in flight at once.
BENCH_LOAD_CONCURRENCY = 32
# A preload Txn is tried this often (no leader, timeout) before the load fails.
BENCH_LOAD_ATTEMPTS = 50
BENCH_LOAD_RETRY_PAUSE_S = 0.2
# Keys a workload may preload before it starts (range keys, mixed objects; --compare-scale).
BENCH_MAX_PRELOAD_KEYS = 10_000_000
# --compare: a cluster must serve again within this after a full restart.
BENCH_RESTART_TIMEOUT_S = 600.0

assert BENCH_MAX_CONNECTIONS <= BENCH_MAX_CLIENTS
assert BENCH_HISTOGRAM_LOWEST_NS >= 1
assert BENCH_HISTOGRAM_HIGHEST_NS > BENCH_HISTOGRAM_LOWEST_NS
assert 2.0 ** -(BENCH_HISTOGRAM_SUB_BUCKET_BITS + 1) < BENCH_HISTOGRAM_RELATIVE_ERROR
assert BENCH_LOAD_TXN_OPS <= MVCC_MAX_TXN_OPS

# --- TLS (certs.py, server/tls.py) ------------------------------------------------------

# A TLS handshake (and the first bytes that tell TLS from plaintext) must finish within this.
TLS_HANDSHAKE_TIMEOUT_MS = 5000
# Accepted connections still in their TLS handshake; more are closed at once.
TLS_MAX_PENDING_HANDSHAKES = 256
TLS_LISTEN_BACKLOG = 128
# Refused handshakes are logged at most once per remote host and reason in this interval.
TLS_REFUSAL_LOG_INTERVAL_S = 30.0
TLS_REFUSAL_LOG_MAX_KEYS = 1024
# A certificate, key or CA bundle file larger than this is refused when read.
TLS_PEM_FILE_MAX_BYTES = 1 * MIB
# `raftkv certs`: a development CA and the certificates it signs.
CERTS_CA_VALIDITY_DAYS = 3650
CERTS_LEAF_VALIDITY_DAYS = 825
CERTS_MAX_HOSTS = 64

assert TLS_HANDSHAKE_TIMEOUT_MS > 0 and TLS_MAX_PENDING_HANDSHAKES >= 1
assert CERTS_LEAF_VALIDITY_DAYS <= CERTS_CA_VALIDITY_DAYS

# --- etcd snapshot format (storage/etcdsnap/) -----------------------------------------

# Pages of the bbolt files raftkv writes (etcd uses the OS page size, 4 KiB on Linux; a
# reader takes the size a file's meta page names). Pages are packed full: a snapshot is
# read or restored, and bbolt splits a full page on its first write anyway.
ETCD_SNAPSHOT_PAGE_BYTES = 4 * KIB
# Page sizes a reader accepts from a file's meta page.
ETCD_SNAPSHOT_MIN_PAGE_BYTES = 512
ETCD_SNAPSHOT_MAX_PAGE_BYTES = 64 * KIB
# bbolt's MaxKeySize and MaxValueSize.
ETCD_SNAPSHOT_MAX_KEY_BYTES = 32 * KIB
ETCD_SNAPSHOT_MAX_VALUE_BYTES = (1 << 31) - 2
# B+tree depth a reader follows before calling the file corrupt (a page cycle would
# otherwise recurse forever; 4 KiB pages of 17-byte keys reach ~10^20 keys by depth 10).
ETCD_SNAPSHOT_MAX_TREE_DEPTH = 32
# Records a restore writes per LMDB commit (bounded memory for the dirty pages).
ETCD_SNAPSHOT_RESTORE_BATCH_RECORDS = 10_000
# Read size when hashing or copying snapshot files.
ETCD_SNAPSHOT_IO_BYTES = 1 * MIB
# `raftkv snapshot save`: connecting to the endpoint, and receiving the whole stream.
ETCD_SNAPSHOT_SAVE_CONNECT_TIMEOUT_S = 5.0
ETCD_SNAPSHOT_SAVE_TIMEOUT_S = 3600.0

assert ETCD_SNAPSHOT_MIN_PAGE_BYTES <= ETCD_SNAPSHOT_PAGE_BYTES <= ETCD_SNAPSHOT_MAX_PAGE_BYTES
assert ETCD_SNAPSHOT_RESTORE_BATCH_RECORDS >= 1

# --- Auth (api/auth*.py, server/auth*) ---

# bcrypt's cost for new password hashes: etcd's --bcrypt-cost default, and bcrypt's range.
AUTH_BCRYPT_COST_DEFAULT = 10
AUTH_BCRYPT_COST_MIN = 4
AUTH_BCRYPT_COST_MAX = 31
# bcrypt reads at most this many bytes of a password; longer ones are refused.
AUTH_MAX_PASSWORD_BYTES = 72
# Password hashes and checks running at once, each in a thread (bcrypt is slow on purpose).
AUTH_MAX_CONCURRENT_BCRYPT = 2
# etcd's --auth-token-ttl default: a simple token unused this long expires.
AUTH_TOKEN_TTL_DEFAULT_S = 300
# Random bytes in a simple token's secret (etcd draws 16 letters, about 91 bits).
AUTH_SIMPLE_TOKEN_SECRET_BYTES = 24
# A longer token is not one of ours and is refused without a look-up.
AUTH_MAX_TOKEN_CHARS = 256
# Live simple tokens one member keeps; past it the least recently used one is dropped.
AUTH_MAX_SIMPLE_TOKENS = 100_000
# Authenticate proposes again when the store changed while the password was checked
# (etcd loops); after this many attempts it gives up with "revision of auth store is old".
AUTH_AUTHENTICATE_MAX_ATTEMPTS = 3

assert AUTH_BCRYPT_COST_MIN <= AUTH_BCRYPT_COST_DEFAULT <= AUTH_BCRYPT_COST_MAX
assert AUTH_MAX_SIMPLE_TOKENS >= 1 and AUTH_MAX_CONCURRENT_BCRYPT >= 1

# --- Joining an existing cluster (server/identity.py) -----------------------------------

# A member started with --initial-cluster-state existing and no data asks the members in
# --initial-cluster for the member list (to learn its ID) for at most this long: they may
# be starting too (StatefulSet pods), so it retries every interval; one request's bound.
MEMBER_DISCOVERY_TIMEOUT_S = 15.0
MEMBER_DISCOVERY_RETRY_INTERVAL_S = 0.5
MEMBER_DISCOVERY_REQUEST_TIMEOUT_S = 2.0
# A member list without this member is final after this long: the member that answered may
# not have applied the add yet when the joiner starts right after `member add`.
MEMBER_DISCOVERY_UNLISTED_GRACE_S = 2.0

assert 0 < MEMBER_DISCOVERY_RETRY_INTERVAL_S < MEMBER_DISCOVERY_UNLISTED_GRACE_S
assert MEMBER_DISCOVERY_UNLISTED_GRACE_S < MEMBER_DISCOVERY_TIMEOUT_S

# --- Metrics and logs (server/metrics.py, server/logs.py, api/monitoring.py) -----------

# Label combinations one metric family keeps; new ones past it are not recorded, so odd
# label values (many peers, a method flood) cannot grow memory without bound.
METRICS_MAX_SERIES_PER_FAMILY = 4096
# The --listen-metrics-urls listener: connections at once, a request's header, how long a
# request may take to arrive and how long an idle connection stays open.
METRICS_HTTP_MAX_CONNECTIONS = 64
METRICS_HTTP_MAX_HEADER_BYTES = 16 * KIB
METRICS_HTTP_READ_TIMEOUT_S = 10.0
METRICS_HTTP_IDLE_TIMEOUT_S = 60.0
# /health and /readyz there: the linearizable read must finish within this.
METRICS_HEALTH_TIMEOUT_S = 3.0
# etcd warns "slow fdatasync" when one WAL sync takes longer than this.
WAL_SLOW_FSYNC_WARN_S = 1.0
# etcd's default --experimental-warning-apply-duration: "apply request took too long".
APPLY_WARN_DURATION_DEFAULT_MS = 100

assert METRICS_MAX_SERIES_PER_FAMILY >= 256 and METRICS_HTTP_MAX_CONNECTIONS >= 1
assert 0 < METRICS_HTTP_READ_TIMEOUT_S <= METRICS_HTTP_IDLE_TIMEOUT_S
