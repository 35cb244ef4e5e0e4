#!/usr/bin/env sh
# Regenerate the Python messages for atp.adapter.v1 from the .proto.
#
#   scripts/gen_proto.sh            # regenerate in place (commit the result)
#   scripts/gen_proto.sh OUTDIR     # generate into OUTDIR (CI diffs it)
#
# Needs: betterproto[compiler]==2.0.0b7 and grpcio-tools (dev dependencies).
# PYTHON defaults to the project's venv, then python3.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
src="$root/atp_proto/adapters/proto"
out=${1:-$src}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
# protoc finds the betterproto plugin (protoc-gen-python_betterproto) on PATH,
# next to the interpreter.
bindir=$(dirname "$PYTHON")
PATH="$bindir:$PATH"
export PATH
mkdir -p "$out"
"$PYTHON" -m grpc_tools.protoc -I"$src" --python_betterproto_out="$out" \
  "$src/atp/adapter/v1/adapter.proto" >/dev/null
echo "generated atp.adapter.v1 into $out"
