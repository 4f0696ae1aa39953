"""Fault injection against real raftkv server processes."""
