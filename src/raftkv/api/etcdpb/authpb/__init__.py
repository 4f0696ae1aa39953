"""Generated from proto/authpb/ by scripts/gen_protos.sh; do not edit."""
