"""The Python client library and higher-level recipes built on it."""
