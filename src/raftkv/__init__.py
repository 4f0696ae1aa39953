"""raftkv: an etcd-compatible replicated key-value store built on a pure Raft core."""

__version__ = "0.1.0"
