"""Generated from proto/v3electionpb/ by scripts/gen_protos.sh; do not edit."""
