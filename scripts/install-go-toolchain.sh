#!/usr/bin/env bash
# Install the Go toolchain the Go worker (examples/go-worker/) builds with, from Debian's packages:
# Go, grpc-go, protobuf-go (both APIs: the 1.5 shim keeps grpc-go's codec and the generated
# messages in agreement), the two protoc plugins and protoc. Builds are offline, in GOPATH mode
# against /usr/share/gocode. Idempotent: does nothing when every package is installed.
# Used by CI (through tests/test_go_worker.py) and by hand.
set -euo pipefail

PACKAGES=(
  golang-go
  golang-google-grpc-dev
  golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev
  protoc-gen-go
  protoc-gen-go-grpc
  protobuf-compiler
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "go toolchain: all ${#PACKAGES[@]} packages installed"
  exit 0
fi

echo "go toolchain: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-go-toolchain.sh: packages missing (${missing[*]}) and not root: run it as root," \
    "or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install-go-toolchain.sh: packages missing (${missing[*]}) and no apt-get: a Debian-based machine is needed" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "go toolchain: installed"
