#!/usr/bin/env bash
# deploy.sh VERSION — switch this demo instance to VERSION (what `app.deploy`
# runs on the instance over ssh; rollscript appends the quoted version).
#
#   1. records the running version in PREVIOUS_VERSION, writes VERSION
#   2. SIGTERMs the running app and waits for it to exit (it finishes its
#      in-flight requests first); SIGKILL after $STOP_TIMEOUT seconds
#   3. starts the new one fully detached (own session, no fd of the ssh
#      session kept open) with its output appended to app.log
#   4. returns once the new process is listening. Whether it is HEALTHY is
#      for rollscript to find out (health(inst)), not for this script.
#
# Which instance: $DEMO_INSTANCE_DIR (the instance's sshd sets it with
# `SetEnv`), else the instance whose address is the server address of this
# ssh connection ($SSH_CONNECTION). The directory holds instance.env (NAME,
# ADDR, PORT, PYTHON, APP, BOOT_DELAY), written by tools/demo.
set -euo pipefail

STOP_TIMEOUT=${STOP_TIMEOUT:-30}

die() { echo "deploy.sh: $*" >&2; exit 1; }

version=${1:-}
[ -n "$version" ] || die "usage: deploy.sh VERSION (e.g. --var version=v2)"
[[ "$version" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "invalid version ${version@Q}: letters, digits, '.', '_', '-' only"

bin_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
demo_dir=$(dirname "$bin_dir")

instance_dir() {
    if [ -n "${DEMO_INSTANCE_DIR:-}" ]; then
        echo "$DEMO_INSTANCE_DIR"
        return
    fi
    local addr
    addr=$(set -- ${SSH_CONNECTION:-}; echo "${3:-}")
    [ -n "$addr" ] || die "cannot tell which instance this is: set DEMO_INSTANCE_DIR or run over ssh"
    local f
    for f in "$demo_dir"/*/instance.env; do
        [ -e "$f" ] || continue
        if grep -qx "ADDR=$addr" "$f"; then
            dirname "$f"
            return
        fi
    done
    die "no instance under $demo_dir listens on $addr"
}

dir=$(instance_dir)
[ -f "$dir/instance.env" ] || die "$dir/instance.env is missing (was the fleet set up by tools/demo?)"
# shellcheck source=/dev/null
. "$dir/instance.env"
: "${NAME:?}" "${ADDR:?}" "${PORT:?}" "${PYTHON:?}" "${APP:?}"
BOOT_DELAY=${BOOT_DELAY:-0.5}

# One deploy per instance at a time. fd 9 is closed for the app below, or the
# app would hold the lock for its whole life.
exec 9>"$dir/deploy.lock"
flock -w 60 9 || die "$NAME: another deploy holds $dir/deploy.lock"

# Is pid $1 still running? A zombie is not: the app is reparented to pid 1
# once this script exits, and pid 1 may take seconds to reap it.
alive() {
    local stat
    if [ -d /proc/self ]; then
        stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
        stat=${stat##*) }
        [ "${stat%% *}" != Z ]
    else
        kill -0 "$1" 2>/dev/null
    fi
}

# The pid in app.pid, if that process is alive and is this instance's app.
running_pid() {
    local pid
    pid=$(cat "$dir/app.pid" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--dir $dir " || return 1
    echo "$pid"
}

old_version=$(cat "$dir/VERSION" 2>/dev/null || true)
if [ -n "$old_version" ] && [ "$old_version" != "$version" ]; then
    echo "$old_version" >"$dir/PREVIOUS_VERSION"
fi
echo "$version" >"$dir/VERSION.tmp"
mv -f "$dir/VERSION.tmp" "$dir/VERSION"

if old=$(running_pid); then
    kill -TERM "$old" 2>/dev/null || true
    waited=0
    while alive "$old"; do
        if [ "$waited" -ge $((STOP_TIMEOUT * 10)) ]; then
            echo "$NAME: pid $old still running after ${STOP_TIMEOUT}s; SIGKILL" >&2
            kill -KILL "$old" 2>/dev/null || true
            sleep 0.1
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
fi
rm -f "$dir/app.pid"

# Detached: own session (setsid), stdin from /dev/null, stdout/stderr to the
# log, the lock fd closed — so the ssh channel closes as soon as this script
# exits and a stop of this command's process group never reaches the app.
setsid "$PYTHON" "$APP" --dir "$dir" --host "$ADDR" --port "$PORT" --boot-delay "$BOOT_DELAY" \
    </dev/null >>"$dir/app.log" 2>&1 9>&- &
new=$!

# Started = the app wrote its pid file (it does so once it is listening).
for _ in $(seq 1 100); do
    if [ "$(cat "$dir/app.pid" 2>/dev/null)" = "$new" ]; then
        echo "$NAME: ${old_version:-none} -> $version (pid $new, $ADDR:$PORT)"
        exit 0
    fi
    alive "$new" || break
    sleep 0.05
done
echo "$NAME: the app did not start; last lines of $dir/app.log:" >&2
tail -n 5 "$dir/app.log" >&2 || true
kill -TERM "$new" 2>/dev/null || true
exit 1
