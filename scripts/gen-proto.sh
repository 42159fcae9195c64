#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf code under proto/ from the .proto files.
# Usage: scripts/gen-proto.sh [OUTDIR]   (OUTDIR defaults to the repo; tests use a temp dir to check staleness)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here}
py=${PYTHON:-python3}
# protoc finds the mypy plugins next to the interpreter (a venv's bin/).
export PATH="$(dirname "$(command -v "$py")"):$PATH"
cd "$here"
mapfile -t protos < <(find proto -name '*.proto' | sort)
"$py" -m grpc_tools.protoc -I . --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" \
  --mypy_grpc_out="$out" "${protos[@]}"
