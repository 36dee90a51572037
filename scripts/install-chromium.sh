#!/usr/bin/env bash
# Install the browser the dashboard's test drives (tests/test_dashboard.py): Debian's chromium,
# run headless over its DevTools protocol. No browser is downloaded from anywhere else.
# Idempotent: does nothing when chromium is installed. Used by CI (make toolchains) and by hand.
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  echo "chromium: installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-chromium.sh: chromium is missing and this is not root: run it as root," \
    "or: sudo apt-get install -y chromium" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install-chromium.sh: chromium is missing and there is no apt-get: a Debian-based machine is needed" >&2
  exit 1
fi
echo "chromium: installing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium
echo "chromium: installed"
