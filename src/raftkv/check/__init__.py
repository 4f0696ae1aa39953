"""Checkers for linearizability, watch semantics and Raft invariants."""
