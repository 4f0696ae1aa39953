"""Durable state: write-ahead log, snapshots, MVCC key-value store and leases."""
