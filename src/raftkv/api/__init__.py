"""The client-facing API: etcd v3 gRPC services and the JSON gateway.

``server.start_grpc_server`` serves KV, Watch, Lease, Cluster, Maintenance and Auth
(``kv``, ``watch``, ``lease``, ``cluster``, ``maintenance``, ``auth``) over a member's
``NodeAPI``; ``convert`` maps etcd's protobufs, ``errors`` is the one error path.
See docs/api.md and docs/compatibility.md.
"""
