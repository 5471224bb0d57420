#!/usr/bin/env bash
# rollback.sh [VERSION] — put this demo instance back on the version it ran
# before the last deploy (PREVIOUS_VERSION), or on VERSION when given. What
# `app.rollback` runs on the instance over ssh; the switch itself is
# deploy.sh's (stop gracefully, start detached, return once listening).
set -euo pipefail

bin_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
demo_dir=$(dirname "$bin_dir")

die() { echo "rollback.sh: $*" >&2; exit 1; }

if [ -n "${1:-}" ]; then
    exec "$bin_dir/deploy.sh" "$1"
fi

if [ -n "${DEMO_INSTANCE_DIR:-}" ]; then
    dir=$DEMO_INSTANCE_DIR
else
    addr=$(set -- ${SSH_CONNECTION:-}; echo "${3:-}")
    [ -n "$addr" ] || die "cannot tell which instance this is: set DEMO_INSTANCE_DIR or run over ssh"
    dir=
    for f in "$demo_dir"/*/instance.env; do
        [ -e "$f" ] && grep -qx "ADDR=$addr" "$f" && { dir=$(dirname "$f"); break; }
    done
    [ -n "$dir" ] || die "no instance under $demo_dir listens on $addr"
fi

previous=$(cat "$dir/PREVIOUS_VERSION" 2>/dev/null || true)
[ -n "$previous" ] || die "$(basename "$dir"): no previous version recorded in $dir/PREVIOUS_VERSION"
echo "$(basename "$dir"): rolling back to $previous"
DEMO_INSTANCE_DIR=$dir exec "$bin_dir/deploy.sh" "$previous"
