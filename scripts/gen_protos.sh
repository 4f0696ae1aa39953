#!/usr/bin/env bash
# Regenerates the Python modules for the etcd v3 wire schema in proto/ into
# src/raftkv/api/etcdpb/, or into the absolute directory given as the only argument
# (the freshness test generates into a temporary one and compares).
# Needs grpcio-tools and mypy-protobuf (its protoc-gen-mypy_grpc plugin writes the
# *_pb2_grpc.pyi stubs that type the stubs, servicers and add_*_to_server functions).
#
# Two post-processing steps make the generated code importable as a package:
#  - protoc writes sibling imports by proto path (`from mvccpb import kv_pb2`);
#    they are rewritten to `from raftkv.api.etcdpb.mvccpb import kv_pb2`.
#    The module name protobuf records on the message classes gets the same prefix.
#  - the modules register into a private descriptor pool (etcdpb/_pool.py) instead of
#    protobuf's process-wide default pool, because third-party etcd clients (aetcd,
#    etcd3) register the same etcdserverpb.* symbols there under other file names, and
#    the default pool rejects such duplicates at import time.
set -euo pipefail
OUT_ARG=${1:-}
cd "$(dirname "$0")/.."

PROTO_ROOT=proto
OUT=${OUT_ARG:-src/raftkv/api/etcdpb}
PACKAGES=(mvccpb authpb etcdserverpb v3electionpb v3lockpb)

for pkg in "${PACKAGES[@]}"; do
    rm -rf "${OUT:?}/${pkg}"
    mkdir -p "${OUT}/${pkg}"
    echo "\"\"\"Generated from proto/${pkg}/ by scripts/gen_protos.sh; do not edit.\"\"\"" \
        > "${OUT}/${pkg}/__init__.py"
done

# Sorted input list so the output does not depend on directory listing order.
mapfile -t PROTO_FILES < <(cd "${PROTO_ROOT}" && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)

python -m grpc_tools.protoc \
    -I "${PROTO_ROOT}" \
    --python_out="${OUT}" \
    --pyi_out="${OUT}" \
    --grpc_python_out="${OUT}" \
    --plugin=protoc-gen-mypy_grpc="$(command -v protoc-gen-mypy_grpc)" \
    --mypy_grpc_out="${OUT}" \
    "${PROTO_FILES[@]}"

PKG_ALTERNATION=$(IFS='|'; echo "${PACKAGES[*]}")
for generated in "${OUT}"/*/*_pb2*.py "${OUT}"/*/*_pb2*.pyi; do
    sed -E -i \
        -e "s/^from (${PKG_ALTERNATION}) import /from raftkv.api.etcdpb.\\1 import /" \
        -e "s/^import (${PKG_ALTERNATION})\\./import raftkv.api.etcdpb.\\1./" \
        -e "s/_descriptor_pool\\.Default\\(\\)/_etcdpb_pool.POOL/" \
        -e "s/(BuildTopDescriptorsAndMessages\\(DESCRIPTOR, ')(${PKG_ALTERNATION})\\./\\1raftkv.api.etcdpb.\\2./" \
        "${generated}"
    if grep -q '_etcdpb_pool.POOL' "${generated}"; then
        sed -i -e '0,/^from google.protobuf import descriptor_pool as _descriptor_pool$/s//&\nfrom raftkv.api.etcdpb import _pool as _etcdpb_pool/' "${generated}"
    fi
done

# Fail loudly if a sibling import or the default pool survived the rewrite.
if grep -nE "^(from|import) (${PKG_ALTERNATION})[ .]|_descriptor_pool\\.Default\\(\\)" \
        "${OUT}"/*/*_pb2*.py "${OUT}"/*/*_pb2*.pyi; then
    echo "gen_protos.sh: unrewritten import or default pool left in generated code" >&2
    exit 1
fi
echo "generated: $(ls "${OUT}"/*/*_pb2*.py* | wc -l) files under ${OUT}"
