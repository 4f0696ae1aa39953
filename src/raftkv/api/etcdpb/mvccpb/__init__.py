"""Generated from proto/mvccpb/ by scripts/gen_protos.sh; do not edit."""
