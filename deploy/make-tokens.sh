#!/usr/bin/env bash
# Make the tokens of a secured coordinator, for deploy/compose.yaml and for Kubernetes Secrets:
#   DIR/tokens      ROLE sha256:DIGEST lines for --auth-tokens (digests only: no secret in it)
#   DIR/worker.env  PARCELO_TOKEN=... with the worker token (for workers)
#   DIR/admin.env   PARCELO_TOKEN=... with the admin token (for the admin CLI)
# DIR defaults to deploy/secrets (ignored by git and by the image build). Existing files are kept:
# rotating tokens is a decision, not a side effect of running this again.
set -euo pipefail
dir=${1:-"$(dirname "$0")/secrets"}
for name in tokens worker.env admin.env; do
    if [ -e "$dir/$name" ]; then
        echo "error: $dir/$name exists; remove the files to make new tokens" >&2
        exit 1
    fi
done
umask 077
mkdir -p "$dir"

token() {
    # 32 random bytes, URL-safe base64 without padding: coreutils only.
    head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_'
}

digest() {
    printf %s "$1" | sha256sum | cut -d' ' -f1
}

worker=$(token)
admin=$(token)
{
    echo '# ROLE TOKEN; a token written as its digest: printf %s "$TOKEN" | sha256sum'
    echo "worker sha256:$(digest "$worker")"
    echo "admin sha256:$(digest "$admin")"
} >"$dir/tokens"
# Digests only: readable by the coordinator's container user (10001) through compose's bind mount.
chmod 644 "$dir/tokens"
echo "PARCELO_TOKEN=$worker" >"$dir/worker.env"
echo "PARCELO_TOKEN=$admin" >"$dir/admin.env"
echo "tokens written to $dir (tokens, worker.env, admin.env)"
