#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf code under proto/ from the .proto files: *_pb2.py/.pyi and
# *_pb2_grpc.py/.pyi (protoc), and the pure-Python *_lite.py the CLI uses (scripts/gen_proto_lite.py).
# Usage: scripts/gen-proto.sh [OUTDIR]   (OUTDIR defaults to the repo; tests use a temp dir to check staleness)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here}
py=${PYTHON:-python3}
# protoc finds the mypy plugins next to the interpreter (a venv's bin/).
export PATH="$(dirname "$(command -v "$py")"):$PATH"
cd "$here"
mapfile -t protos < <(find proto -name '*.proto' | sort)
descriptors=$(mktemp)
trap 'rm -f "$descriptors"' EXIT
"$py" -m grpc_tools.protoc -I . --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" \
  --mypy_grpc_out="$out" --descriptor_set_out="$descriptors" --include_imports "${protos[@]}"
"$py" scripts/gen_proto_lite.py "$descriptors" "$out" "${protos[@]}"
