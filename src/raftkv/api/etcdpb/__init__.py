"""etcd v3 wire schema (generated protobuf and gRPC modules).

Everything below this package except this file and `_pool.py` is generated from
`proto/` by `scripts/gen_protos.sh`; regenerate instead of editing. Import as e.g.
`from raftkv.api.etcdpb.etcdserverpb import rpc_pb2, rpc_pb2_grpc`.
"""
