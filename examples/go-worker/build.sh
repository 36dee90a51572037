#!/usr/bin/env bash
# Build the Go worker offline, in GOPATH mode against Debian's Go libraries (/usr/share/gocode):
#
#   ./build.sh OUT_DIR     build OUT_DIR/parcelo-go-worker
#   ./build.sh --check     go vet, gofmt and go test of the SDK package and the command
#
# The sources are copied into a GOPATH in a temp folder under their import paths
# (parcelo.dev/worker/... for this folder, parcelo.dev/gen/parcelo/v1 for gen/parcelo/v1), so what
# is built is exactly what is in this folder. Needs scripts/install-go-toolchain.sh (Go 1.19,
# grpc-go 1.33, protobuf-go 1.28 with the 1.5 shim). Go's build cache makes rebuilds quick.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() { echo "usage: $0 OUT_DIR | --check" >&2; exit 2; }
[ $# -eq 1 ] || usage
command -v go >/dev/null || { echo "build.sh: go not found: run scripts/install-go-toolchain.sh" >&2; exit 1; }
[ -d /usr/share/gocode/src/google.golang.org/grpc ] ||
  { echo "build.sh: grpc-go not in /usr/share/gocode: run scripts/install-go-toolchain.sh" >&2; exit 1; }

gopath=$(mktemp -d)
trap 'chmod -R u+w "$gopath" 2>/dev/null; rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src/parcelo.dev/worker" "$gopath/src/parcelo.dev/gen/parcelo"
cp -R "$here/parcelo" "$here/cmd" "$gopath/src/parcelo.dev/worker/"
cp -R "$here/gen/parcelo/v1" "$gopath/src/parcelo.dev/gen/parcelo/"

export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS= GOPROXY=off CGO_ENABLED=0
# Go keeps its build cache under $HOME; a CI step may have no HOME.
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
  export GOCACHE="${TMPDIR:-/tmp}/parcelo-go-build-cache"
fi
cd "$gopath/src/parcelo.dev/worker"
packages=(parcelo.dev/worker/parcelo parcelo.dev/worker/cmd/parcelo-go-worker)

if [ "$1" = --check ]; then
  unformatted=$(gofmt -l parcelo cmd)
  if [ -n "$unformatted" ]; then
    echo "build.sh: not gofmt-formatted (run gofmt -w): $unformatted" >&2
    exit 1
  fi
  go vet "${packages[@]}"
  go test -count=1 "${packages[@]}"
  exit 0
fi
case $1 in -*) usage ;; esac
mkdir -p "$1"
out=$(cd "$1" && pwd)
go build -trimpath -o "$out/parcelo-go-worker" parcelo.dev/worker/cmd/parcelo-go-worker
echo "built $out/parcelo-go-worker"
