"""The client-facing API: etcd v3 gRPC services and the JSON gateway."""
