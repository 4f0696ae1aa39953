"""Load generator and benchmark comparison against etcd."""
