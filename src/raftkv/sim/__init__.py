"""Deterministic simulator: a Raft cluster in one thread on simulated time, with seeded faults."""
