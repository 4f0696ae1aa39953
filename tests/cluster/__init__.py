"""Tests against real raftkv member processes (``tests/procs.py``)."""
