#!/usr/bin/env bash
# benches/alb_drain.sh — the seed's own ALB settings (issue 20): what the
# runbook's sleeps, rollscript with lb.drain_detect = "lb" and rollscript
# with "auto" (on-host connection counts) cost for a rolling deploy.
#
#   benches/alb_drain.sh                  N = 3, scale 0.1 (12 s delay, 3 s checks)
#   benches/alb_drain.sh --scale 1        the real timers (≈ 12 minutes for N = 3)
#   benches/alb_drain.sh --size 5 --out FILE
#
# The seed's target group: deregistration_delay 120 s, health checks every
# 30 s, healthy threshold 2 — so a deregistered target stays `draining` for
# 120 s, and a registered one `initial` for about 2 × 30 s. moto plays the
# ALB (tests/it/harness/moto_server.py: `draining` for the delay, `initial`
# for --initial-seconds), with every timer multiplied by --scale so the
# bench finishes in minutes; the report gives the measured numbers at that
# scale and the same runs with the LB's timers put back at full size.
#
# On loopback only: N app instances (demo/app.py, boot delay 0.5 s), each
# with its own sshd on NET.i, app on port 18080+i; moto on 127.0.0.1. No
# request load: "no long requests", the case the issue's numbers are about.
# Every process started is stopped by PID on exit.
#
# Rows:
#   runbook         the seed's loop: deregister, sleep 60, deploy, health,
#                   register, sleep 60 — 120 s of sleeps per instance
#                   (not run: its sleeps are fixed; deploy+health time
#                   taken from rollscript's own runs)
#   drain_detect=lb rollscript run scripts/rolling.rhai, drains follow
#                   ELBv2 alone (the whole deregistration delay)
#   auto            the same with the default: drained once the target is
#                   draining and its host has had no connection for 1 s
#
# Environment: ROLLSCRIPT_MOTO_PYTHON (a Python with moto[server], default
# python3), ROLLSCRIPT_BENCH_DIR (default /tmp/rollscript-albbench),
# ROLLSCRIPT_BENCH_NET (default 127.0.89). The binary: target/release/
# rollscript if present, else target/debug/rollscript.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${ROLLSCRIPT_BENCH_DIR:-/tmp/rollscript-albbench}
NET=${ROLLSCRIPT_BENCH_NET:-127.0.89}
PY=${ROLLSCRIPT_MOTO_PYTHON:-python3}
APP_PY=/usr/bin/python3
[ -x "$APP_PY" ] || APP_PY=$(command -v python3)
SSH_PORT=2222
BASE_PORT=18080
N=3
SCALE=0.1
OUT=
# The seed's ALB settings.
DELAY=120
INTERVAL=30
THRESHOLD=2
RUNBOOK_SLEEPS=120 # sleep 60 after deregister, sleep 60 after register

while [ $# -gt 0 ]; do
    case "$1" in
        --size) N=${2:?}; shift ;;
        --scale) SCALE=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        -h|--help) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "benches/alb_drain.sh: unknown argument ${1@Q}" >&2; exit 2 ;;
    esac
    shift
done
[[ "$N" =~ ^[1-9][0-9]?$ ]] || { echo "--size: 1-99" >&2; exit 2; }
[[ "$SCALE" =~ ^(0?\.[0-9]+|[0-9]+(\.[0-9]+)?)$ ]] || { echo "--scale: a number" >&2; exit 2; }
[[ "$NET" =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || { echo "ROLLSCRIPT_BENCH_NET must be loopback" >&2; exit 2; }

BIN=$ROOT/target/release/rollscript
[ -x "$BIN" ] || BIN=$ROOT/target/debug/rollscript
[ -x "$BIN" ] || { echo "build rollscript first (cargo build)" >&2; exit 2; }
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
say() { printf 'alb-bench: %s\n' "$*" >&2; }
calc() { "$APP_PY" -c "import sys; print(eval(sys.argv[1]))" "$1"; }

DELAY_S=$(calc "max(1, round($DELAY * $SCALE))")
INTERVAL_S=$(calc "max(0.5, $INTERVAL * $SCALE)")
INITIAL_S=$(calc "$INTERVAL_S * $THRESHOLD")

PIDS=()
cleanup() {
    set +e
    for f in "$DIR"/web-*/app.pid; do [ -f "$f" ] && PIDS+=("$(cat "$f")"); done
    for p in "${PIDS[@]}"; do
        tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$DIR/" && kill "$p" 2>/dev/null
    done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null; done
}
trap cleanup EXIT

rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/out"
cp "$ROOT/demo/app.py" "$ROOT/demo/deploy.sh" "$ROOT/demo/rollback.sh" "$DIR/bin/"
chmod +x "$DIR/bin/"*
ssh-keygen -q -t ed25519 -N '' -C rollscript-albbench -f "$DIR/id_ed25519"
echo "restrict $(cat "$DIR/id_ed25519.pub")" >"$DIR/authorized_keys"
: >"$DIR/known_hosts"
cat >"$DIR/ssh_config" <<EOF
Host $NET.*
    User $(id -un)
    Port $SSH_PORT
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $DIR/known_hosts
    StrictHostKeyChecking yes
    KexAlgorithms curve25519-sha256
    BatchMode yes
    LogLevel ERROR
EOF
mkdir -p /run/sshd 2>/dev/null || true
for ((i = 1; i <= N; i++)); do
    d=$DIR/web-$i
    mkdir -p "$d"
    printf 'NAME=web-%d\nADDR=%s\nPORT=%d\nPYTHON=%s\nAPP=%s\nBOOT_DELAY=0.5\n' \
        "$i" "$NET.$i" $((BASE_PORT + i)) "$APP_PY" "$DIR/bin/app.py" >"$d/instance.env"
    ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
    echo "[$NET.$i]:$SSH_PORT $(cut -d' ' -f1,2 "$d/hostkey.pub")" >>"$DIR/known_hosts"
    cat >"$d/sshd_config" <<EOF
ListenAddress $NET.$i:$SSH_PORT
HostKey $d/hostkey
PidFile $d/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
KexAlgorithms curve25519-sha256
SetEnv DEMO_INSTANCE_DIR=$d SHLVL=1
EOF
    setsid "$SSHD" -f "$d/sshd_config" -D -e </dev/null >>"$d/sshd.log" 2>&1 &
    PIDS+=($!)
done
for ((i = 1; i <= N; i++)); do
    for _ in $(seq 100); do (: <"/dev/tcp/$NET.$i/$SSH_PORT") 2>/dev/null && break; sleep 0.05; done
    ssh -F "$DIR/ssh_config" "$NET.$i" "$DIR/bin/deploy.sh" v1 >/dev/null
done

"$PY" "$ROOT/tests/it/harness/moto_server.py" --port 0 --initial-seconds "$INITIAL_S" \
    >"$DIR/moto.out" 2>"$DIR/moto.err" &
PIDS+=($!)
for _ in $(seq 200); do [ -s "$DIR/moto.out" ] && break; sleep 0.1; done
MOTO="http://127.0.0.1:$(head -1 "$DIR/moto.out")"
say "moto at $MOTO; delay ${DELAY_S}s, initial ${INITIAL_S}s (scale $SCALE); $N instances"
"$PY" "$ROOT/benches/alb_setup.py" "$MOTO" "$DELAY_S" "$INTERVAL_S" "$NET" "$N" "$BASE_PORT" >"$DIR/setup.out"
TG=$(head -1 "$DIR/setup.out")

write_inventory() { # FILE DRAIN_DETECT
    {
        cat <<EOF
[app]
name = "albbench"
deploy = "$DIR/bin/deploy.sh"
rollback = "$DIR/bin/rollback.sh"

[ssh]
identity = "$DIR/id_ed25519"
known_hosts = "$DIR/known_hosts"
config = "$DIR/ssh_config"

[health]
path = "/health"
interval = "100ms"
timeout = "1s"
retries = 100
healthy_threshold = 2

[lb]
kind = "aws"
target_group_arn = "$TG"
region = "us-east-1"
endpoint = "$MOTO"
drain_detect = "$2"
drain_timeout = "$((DELAY_S + 60))s"
register_timeout = "$(calc "int($INITIAL_S * 3 + 30)")s"
min_in_service = $((N > 1 ? N - 1 : 0))
EOF
        i=0
        tail -n +2 "$DIR/setup.out" | while read -r id port; do
            i=$((i + 1))
            printf '\n[[instances]]\nname = "web-%d"\nhost = "%s"\nid = "%s"\nport = %d\n' "$i" "$NET.$i" "$id" "$port"
        done
    } >"$1"
}

run() { # MODE VERSION -> wall seconds; journal in $DIR/out/MODE.jsonl
    local mode=$1 inv=$DIR/inv-$1.toml t0 t1
    write_inventory "$inv" "$mode"
    t0=$EPOCHREALTIME
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        "$BIN" run "$ROOT/scripts/rolling.rhai" -i "$inv" --yes --var "version=$2" \
        >"$DIR/out/$mode.stdout" 2>"$DIR/out/$mode.stderr" ||
        { say "rollscript ($mode) failed:"; tail -20 "$DIR/out/$mode.stderr" >&2; exit 1; }
    t1=$EPOCHREALTIME
    cp "$(ls -t "$DIR"/.rollscript/runs/*.jsonl | head -1)" "$DIR/out/$mode.jsonl"
    calc "$t1 - $t0"
}

say "rolling deploy, drain_detect = lb"
WALL_LB=$(run lb v2)
say "rolling deploy, drain_detect = auto"
WALL_AUTO=$(run auto v3)

"$APP_PY" - "$DIR/out" "$N" "$SCALE" "$DELAY" "$INTERVAL" "$THRESHOLD" "$RUNBOOK_SLEEPS" \
    "$WALL_LB" "$WALL_AUTO" "$DELAY_S" "$INITIAL_S" <<'EOF' | tee ${OUT:+"$OUT"}
import json, statistics, sys
out, n, scale, delay, interval, threshold, sleeps, wall_lb, wall_auto, delay_s, initial_s = sys.argv[1:]
n = int(n); scale = float(scale); delay = float(delay); sleeps = float(sleeps)
full_initial = float(interval) * int(threshold)

def steps(mode):
    recs = [json.loads(l) for l in open(f"{out}/{mode}.jsonl") if l.strip()]
    ops = {r["seq"]: r["op"] for r in recs if r["type"] == "intent"}
    per = {}
    for r in recs:
        if r["type"] == "result" and r["seq"] in ops:
            per.setdefault(ops[r["seq"]], []).append(r["duration_ms"] / 1000)
    drained = [r for r in recs if r["type"] == "drained"]
    return per, drained

rows = []
for mode, wall in (("lb", float(wall_lb)), ("auto", float(wall_auto))):
    per, drained = steps(mode)
    drain = statistics.median(per["wait_drained"])
    insvc = statistics.median(per["wait_in_service"])
    rest = wall / n - drain - insvc
    by = ",".join(sorted({d["ended_by"] for d in drained}))
    # The LB's own timers at full size: the drain too when ELBv2 ends it.
    full_drain = delay if mode == "lb" else drain
    full = n * (full_drain + full_initial + rest)
    rows.append((mode, wall, drain, insvc, rest, by, full))
rest = statistics.median(r[4] for r in rows)
runbook = n * (sleeps + rest)
print(f"## ALB drains at the seed's settings (`benches/alb_drain.sh`)\n")
print(f"Target group: deregistration_delay {delay:.0f} s, health checks every {interval} s, healthy threshold {threshold};")
print(f"measured with every LB timer × {scale} (delay {delay_s} s, `initial` {initial_s} s after a register), N = {n}, no long requests.")
print(f"\"full size\" puts the LB's timers back: drains that follow ELBv2 last {delay:.0f} s, a register waits {full_initial:.0f} s for 2 checks.\n")
print("| what | wall (measured) | drain per instance (median) | wait in service | rest per instance | drains ended by | wall at full size |")
print("|---|---|---|---|---|---|---|")
print(f"| runbook (`sleep 60` after deregister and after register) | - | 60 s sleep | 60 s sleep | {rest:.1f} s | a timer | {runbook:.0f} s ({runbook/60:.1f} min) |")
for mode, wall, drain, insvc, r, by, full in rows:
    name = "rollscript, drain_detect = \"lb\"" if mode == "lb" else "rollscript, drain_detect = \"auto\" (default)"
    print(f"| {name} | {wall:.1f} s | {drain:.2f} s | {insvc:.2f} s | {r:.1f} s | {by} | {full:.0f} s ({full/60:.1f} min) |")
lb_full, auto_full = rows[0][6], rows[1][6]
print(f"\nAt full size \"auto\" saves {lb_full - auto_full:.0f} s against \"lb\" ({n} drains of {delay:.0f} s become {rows[1][2]:.1f} s each); what is left is the ALB's own")
print(f"health checks after each register ({full_initial:.0f} s per instance), which rollscript waits for and the runbook's second sleep only guesses.")
EOF
