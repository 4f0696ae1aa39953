"""Generated from proto/v3lockpb/ by scripts/gen_protos.sh; do not edit."""
