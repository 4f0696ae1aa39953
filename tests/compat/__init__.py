"""Compatibility tests: raftkv compared with a real etcd."""
