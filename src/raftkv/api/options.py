"""Settings of the client API (re-exported by ``raftkv.api.server``)."""

from __future__ import annotations

from dataclasses import dataclass

from raftkv import limits

GRPC_FRONTENDS = ("h2", "grpcio")


@dataclass(frozen=True)
class ApiOptions:
    # etcd's --max-request-bytes: a larger Put/Txn/DeleteRange is "request is too large".
    max_request_bytes: int = limits.MAX_REQUEST_BYTES
    # etcd's --max-txn-ops.
    max_txn_ops: int = limits.MVCC_MAX_TXN_OPS
    # etcd's --watch-progress-notify-interval (10 minutes); etcd adds up to 10 % jitter.
    watch_progress_notify_interval_s: float = 600.0
    # The gRPC front end: "h2", raftkv's own HTTP/2 server (api/h2/), or "grpcio", grpcio's
    # asyncio server (--grpc-frontend).
    grpc_frontend: str = "h2"

    def __post_init__(self) -> None:
        assert self.max_request_bytes >= 1, "max_request_bytes must be positive"
        assert (
            self.max_request_bytes + limits.API_GRPC_OVERHEAD_BYTES
            <= limits.API_GRPC_MAX_SEND_MESSAGE_BYTES
        ), "max_request_bytes does not fit a gRPC message"
        assert self.max_txn_ops >= 1, "max_txn_ops must be positive"
        assert self.watch_progress_notify_interval_s > 0, "the progress interval must be > 0"
        assert self.grpc_frontend in GRPC_FRONTENDS, f"unknown front end {self.grpc_frontend!r}"

    @property
    def max_receive_message_bytes(self) -> int:
        """The gRPC receive limit: a request a little over ``max_request_bytes`` still
        arrives, so it gets etcd's "request is too large" rather than a gRPC error."""
        return self.max_request_bytes + limits.API_GRPC_OVERHEAD_BYTES
