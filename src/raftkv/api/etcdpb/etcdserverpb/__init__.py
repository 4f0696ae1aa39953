"""Generated from proto/etcdserverpb/ by scripts/gen_protos.sh; do not edit."""
