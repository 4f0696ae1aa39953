"""etcd's MVCC key space: revisions, the in-memory index, and the KV store.

``KVStore`` is the entry point; ``txn`` has the request and response types,
``validation`` the checks the API layer makes before proposing.
"""

from raftkv.storage.mvcc.hash import KeyValueHash
from raftkv.storage.mvcc.kvstore import KVStore
from raftkv.storage.mvcc.kvstore_txn import LeaseAttachments, LeaseChecker
from raftkv.storage.mvcc.quota import request_cost_bytes
from raftkv.storage.mvcc.txn import (
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from raftkv.storage.mvcc.validation import (
    validate_delete_range,
    validate_put,
    validate_range,
    validate_txn,
)

__all__ = [
    "Compare",
    "CompareResult",
    "CompareTarget",
    "CompactionRequest",
    "CompactionResponse",
    "DeleteRangeRequest",
    "DeleteRangeResponse",
    "KVStore",
    "KeyValue",
    "KeyValueHash",
    "LeaseAttachments",
    "LeaseChecker",
    "PutRequest",
    "PutResponse",
    "RangeRequest",
    "RangeResponse",
    "RequestOp",
    "ResponseOp",
    "SortOrder",
    "SortTarget",
    "TxnRequest",
    "TxnResponse",
    "request_cost_bytes",
    "validate_delete_range",
    "validate_put",
    "validate_range",
    "validate_txn",
]
