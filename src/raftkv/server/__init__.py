"""The server process; the only owner of the event loop (I/O, timers, Raft driving)."""
