#!/usr/bin/env bash
# Generate the Go stubs of ../../proto/parcelo/v1 (messages and the gRPC client) into gen/, or into
# the folder given as $1 (tests/test_go_worker.py generates into a temp folder and compares, so
# committed stubs that drifted from the .proto files fail the test).
#
# Needs protoc (>= 3.15 for proto3 `optional` without a flag; Debian 12 has 3.21) and Debian's
# protoc-gen-go (1.28) and protoc-gen-go-grpc (grpc-go 1.33's, "1.0"): scripts/install-go-toolchain.sh.
# Both plugins declare proto3-optional support, so no --experimental_allow_proto3_optional here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto=$(cd "$here/../../proto" && pwd)
out=${1:-$here/gen}

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || {
    echo "generate.sh: $tool not found: run scripts/install-go-toolchain.sh" >&2
    exit 1
  }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# paths=source_relative would lay files out by .proto path; the go_package import path
# (parcelo.dev/gen/parcelo/v1) is what GOPATH mode needs, so keep the default (import) layout.
(cd "$proto" && protoc -I. --go_out="$tmp" --go-grpc_out="$tmp" parcelo/v1/*.proto)
mkdir -p "$out/parcelo/v1"
rm -f "$out"/parcelo/v1/*.pb.go
cp "$tmp"/parcelo.dev/gen/parcelo/v1/*.pb.go "$out/parcelo/v1/"
