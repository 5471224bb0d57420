#!/usr/bin/env bash
# benches/rollout.sh — rollscript against a bare shell loop, on a real local
# fleet behind HAProxy, under load (issues 8 and 17).
#
#   benches/rollout.sh                      N = 3, 10, 30; 5/3/3 repetitions
#   benches/rollout.sh --sizes 3 --runs 3   one size, 3 repetitions
#
# For each fleet size N it starts, on loopback only, N app instances
# (demo/app.py, FIXED boot delay 0.5 s), each with its own sshd, and HAProxy
# in front (runtime API socket at admin level, checks inter 200 ms, retries 0,
# no redispatch) — the set-up of tools/demo — then, per repetition, FOUR
# methods on that same fleet, each deploying the next version:
#
#   floor             a bare bash loop of raw commands, per instance: `set
#                     server BE/S state drain` (socat), poll `show stat` every
#                     10 ms until scur+qcur == 0, `state maint`, a fresh ssh
#                     (ControlMaster=auto, ControlPersist: the first command
#                     per host pays the handshake) running deploy.sh vK, curl
#                     /health every 10 ms until 2 consecutive 200s, `state
#                     ready`, poll every 10 ms until UP
#   floor-preopened   the same loop, but every host's ssh master is opened
#                     (ssh -fN -o ControlMaster=yes -o ControlPersist=...)
#                     BEFORE its clock starts: the loop pays no handshake
#   rollscript-fine   target/release/rollscript run scripts/rolling.rhai
#                     -i INV --yes --var version=vK with health.interval =
#                     "10ms" and lb.poll_interval = "10ms": polling as fine as
#                     the floor's
#   rollscript        the same with the defaults the README documents:
#                     health.interval = "100ms", lb.poll_interval unset (the
#                     provider's adaptive backoff, 50 ms growing to 1 s)
#
# The order of the methods rotates from one repetition to the next (a
# Williams Latin square: each method runs in each position, and after each
# other method, equally often), so a drift in machine load hits all alike.
#
# Under load: during every measured run, demo/loadgen.py sends 200 requests/s
# (one per connection) to the HAProxy frontend. It starts just before the
# method's clock (the run begins once HAProxy has seen its first request) and
# is stopped by its --stop-file right after the method exits (--duration 600
# bounds it; teardown stops it by PID too). A request fails unless it gets 200
# "version=<any>". ok and failed per (N, repetition, method) go to load.tsv;
# the report prints the failed requests per method and N, and the bench exits
# 1, after printing the whole report, if any request failed.
#
# Wall time is from the method's start to its end (rollscript's includes its
# own start-up, inventory and script compilation, lock and journal; the
# pre-opened floor's excludes opening the masters). Every figure is the median
# of the repetitions, printed with min and max. The ratios are paired: the
# median over repetitions of (method / floor) within the same repetition.
# Issue 17's targets, each "met" or "NOT met" per N:
#   rollscript-fine     <= 0.90 x floor
#   rollscript-fine     <= 1.02 x floor-preopened
#   rollscript          <= 1.00 x floor
# Per-step times come from rollscript's journal (.rollscript/runs/*.jsonl:
# duration_ms of each effect) and from the floor loop's own clock.
#
# Options: --sizes LIST (default 3,10,30), --runs R (repetitions for every
# size), --runs-large R (repetitions for N >= 30, default 3), --out FILE
# (append the report there too), --report-only (print the report of the last
# measurement again, from the bench directory; it exits 1 too if a request
# failed). Environment: ROLLSCRIPT_BENCH_DIR (default /tmp/rollscript-bench),
# ROLLSCRIPT_BENCH_NET (default 127.0.88: instance i is 127.0.88.i, sshd on
# :2222, app on :18080; HAProxy on 127.0.88.250:18000), ROLLSCRIPT_BENCH_BIN
# (the rollscript binary to measure), ROLLSCRIPT_BENCH_METHODS (a comma list
# of the methods to run, default floor,floor-preopened,rollscript-fine,
# rollscript; the report shows the others as "-").
#
# The binary: $ROLLSCRIPT_BENCH_BIN if set, else target/release/rollscript if
# it exists, else target/debug/rollscript (the report says which); it is
# never built here (`cargo build --release` first) and not needed when no
# rollscript method is selected. It is copied into the bench directory before
# the first run so a concurrent rebuild cannot swap it mid-measurement. Every
# process started is recorded and stopped by PID on exit (also on Ctrl-C or a
# failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${ROLLSCRIPT_BENCH_DIR:-/tmp/rollscript-bench}
NET=${ROLLSCRIPT_BENCH_NET:-127.0.88}
ALL_METHODS=floor,floor-preopened,rollscript-fine,rollscript
METHODS=${ROLLSCRIPT_BENCH_METHODS:-$ALL_METHODS}
SSH_PORT=2222
APP_PORT=18080
LB_ADDR=$NET.250
LB_PORT=18000
FRONTEND=web
BACKEND=bench
SIZES=3,10,30
RUNS=
RUNS_LARGE=3
OUT=
REPORT_ONLY=0
FLOOR_POLL=0.01            # the floors' LB and health poll interval (s)
HEALTH_FINE_MS=10          # health.interval of rollscript-fine
HEALTH_DEFAULT_MS=100      # health.interval of rollscript (defaults)
BOOT_DELAY=0.5             # the apps' fixed boot delay (s)
LOAD_RATE=200              # requests/s through HAProxy during every run
LOAD_DURATION=600          # the load generator's bound (s); the stop file ends it

# The header comment above, up to the first line that is not a comment.
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) SIZES=${2:?}; shift ;;
        --sizes=*) SIZES=${1#*=} ;;
        --runs) RUNS=${2:?}; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --runs-large) RUNS_LARGE=${2:?}; shift ;;
        --runs-large=*) RUNS_LARGE=${1#*=} ;;
        --report-only) REPORT_ONLY=1 ;;
        --out) OUT=${2:?}; shift ;;
        --out=*) OUT=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "benches/rollout.sh: unknown argument ${1@Q}" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 2; }

[[ "$DIR" =~ ^/[A-Za-z0-9/._-]+$ && ${#DIR} -le 50 ]] || die "ROLLSCRIPT_BENCH_DIR must be a short absolute path (unix socket paths)"
[[ "$NET" =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "ROLLSCRIPT_BENCH_NET must be loopback, like 127.0.88"
[[ "$SIZES" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes: a comma-separated list of numbers"
for n in ${SIZES//,/ }; do [[ "$n" -ge 1 && "$n" -le 200 ]] || die "--sizes: each 1-200"; done
[ -z "$RUNS" ] || [[ "$RUNS" =~ ^[1-9][0-9]?$ ]] || die "--runs: 1-99"
[[ "$RUNS_LARGE" =~ ^[1-9][0-9]?$ ]] || die "--runs-large: 1-99"
[[ "$METHODS" =~ ^[a-z-]+(,[a-z-]+)*$ ]] || die "ROLLSCRIPT_BENCH_METHODS: a comma list out of $ALL_METHODS"
read -r -a METHOD_LIST <<<"${METHODS//,/ }"
NEED_BIN=0
for m in "${METHOD_LIST[@]}"; do
    [[ ",$ALL_METHODS," == *",$m,"* ]] || die "ROLLSCRIPT_BENCH_METHODS: unknown method ${m@Q} (methods: $ALL_METHODS)"
    [ "$(printf '%s\n' "${METHOD_LIST[@]}" | grep -cx -- "$m")" = 1 ] || die "ROLLSCRIPT_BENCH_METHODS: $m twice"
    [[ "$m" == rollscript* ]] && NEED_BIN=1
done

PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
SOCK=$DIR/haproxy.sock
PIDS=$DIR/pids
RESULTS=$DIR/results.tsv     # N rep method wall_ms
STEPS=$DIR/steps.tsv         # N rep method step total_ms count
LOAD=$DIR/load.tsv           # N rep method ok failed sent errors(json) first_errors(json)
MASTERS=$DIR/masters.tsv     # N rep ms to open the pre-opened floor's masters (not timed)

# ---------------------------------------------------------------- processes --

ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$DIR/"; }
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}
children() {
    local f stat
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        stat=${stat##*) }
        # shellcheck disable=SC2086 # split the stat fields on purpose
        set -- "$1" $stat
        [ "${3:-}" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}
stop_pids() {
    local grace=$1 pid i
    shift
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        local any=0
        for pid in "$@"; do alive "$pid" && any=1; done
        [ $any = 0 ] && return 0
        sleep 0.1
    done
    for pid in "$@"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
    return 0
}
track() { echo "$1 $2" >>"$PIDS"; }

# Stops what the bench started: load generators, ssh masters, HAProxy, apps,
# sshd's (and their connection children), each by PID and only if its command
# line names $DIR.
teardown() {
    set +e
    [ -d "$DIR" ] || return 0
    local kind pid f c front=() apps=() sshds=() conns=()
    [ -f "$PIDS" ] && while read -r kind pid; do
        [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" || continue
        case "$kind" in sshd) sshds+=("$pid") ;; *) front+=("$pid") ;; esac
    done <"$PIDS"
    for f in "$DIR"/fleet/web-*/app.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null)
        [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && apps+=("$pid")
    done
    stop_masters
    stop_pids 5 "${front[@]}"
    stop_pids 10 "${apps[@]}"
    for pid in "${sshds[@]}"; do for c in $(children "$pid"); do conns+=("$c"); done; done
    stop_pids 3 "${conns[@]}" "${sshds[@]}"
    rm -f "$PIDS" "$SOCK"
    set -e
}

# ------------------------------------------------------------------ helpers --

hap() { printf '%s\n' "$1" | socat -t 2 - "UNIX-CONNECT:$SOCK"; }
# "server status scur qcur" for every server of the backend.
hap_rows() {
    hap "show stat $BACKEND 4 -1" | awk -F, '$1 != "" && substr($1,1,1) != "#" && $2 != "BACKEND" { print $2, $18, $5, $3 }'
}
# Sessions the frontend has accepted so far (stot).
lb_sessions() { hap "show stat $FRONTEND 1 -1" | awk -F, '$2 == "FRONTEND" { print $8 }'; }
lb_sessions_above() { local s; s=$(lb_sessions) && [ -n "$s" ] && [ "$s" -gt "$1" ]; }
listening() { (: <"/dev/tcp/$1/$2") 2>/dev/null; }
wait_until() { # SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 20; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "$what did not happen within ${secs}s"
}
addr() { echo "$NET.$1"; }
now() { echo "$EPOCHREALTIME"; }
elapsed_ms() { "$PY" -c 'import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000, 1))' "$1" "$2"; }

# ------------------------------------------------------------------- fleet --

fleet_up() { # N
    local n=$1 i d
    teardown
    rm -rf "$DIR/fleet" "$DIR/.rollscript" "$DIR"/inv-*.toml
    mkdir -p "$DIR/fleet" "$DIR/bin"
    : >"$PIDS"
    for ((i = 1; i <= n; i++)); do
        listening "$(addr "$i")" "$SSH_PORT" && die "$(addr "$i"):$SSH_PORT in use (set ROLLSCRIPT_BENCH_NET)"
        listening "$(addr "$i")" "$APP_PORT" && die "$(addr "$i"):$APP_PORT in use (set ROLLSCRIPT_BENCH_NET)"
    done
    listening "$LB_ADDR" "$LB_PORT" && die "$LB_ADDR:$LB_PORT in use"
    cp "$ROOT/demo/app.py" "$ROOT/demo/deploy.sh" "$ROOT/demo/rollback.sh" "$ROOT/demo/loadgen.py" "$DIR/bin/"
    chmod +x "$DIR/bin/"*
    [ -f "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C rollscript-bench -f "$DIR/id_ed25519"
    echo "restrict $(cat "$DIR/id_ed25519.pub")" >"$DIR/authorized_keys"
    : >"$DIR/known_hosts"
    cat >"$DIR/ssh_config" <<EOF
Host $NET.*
    User $(id -un)
    Port $SSH_PORT
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    KexAlgorithms curve25519-sha256
    BatchMode yes
    LogLevel ERROR
EOF
    mkdir -p /run/sshd 2>/dev/null || true
    for ((i = 1; i <= n; i++)); do
        d=$DIR/fleet/web-$i
        mkdir -p "$d"
        cat >"$d/instance.env" <<EOF
NAME=web-$i
ADDR=$(addr "$i")
PORT=$APP_PORT
PYTHON=$PY
APP=$DIR/bin/app.py
BOOT_DELAY=$BOOT_DELAY
EOF
        ssh-keygen -q -t ed25519 -N '' -C "web-$i" -f "$d/ssh_host_ed25519_key"
        echo "[$(addr "$i")]:$SSH_PORT $(cut -d' ' -f1,2 "$d/ssh_host_ed25519_key.pub")" >>"$DIR/known_hosts"
        cat >"$d/sshd_config" <<EOF
ListenAddress $(addr "$i"):$SSH_PORT
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
AllowUsers $(id -un)
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
KexAlgorithms curve25519-sha256
PrintMotd no
MaxStartups 100:30:200
SetEnv DEMO_INSTANCE_DIR=$d SHLVL=1
EOF
        setsid "$SSHD" -f "$d/sshd_config" -D -e </dev/null >>"$d/sshd.log" 2>&1 &
        track sshd $!
    done
    for ((i = 1; i <= n; i++)); do
        wait_until 10 "sshd on $(addr "$i"):$SSH_PORT" listening "$(addr "$i")" "$SSH_PORT"
    done
    for ((i = 1; i <= n; i++)); do
        ssh -F "$DIR/ssh_config" "$(addr "$i")" "$DIR/bin/deploy.sh" v0 >/dev/null ||
            die "could not start web-$i over ssh (see $DIR/fleet/web-$i/sshd.log)"
    done
    {
        cat <<EOF
global
    stats socket $SOCK mode 600 level admin
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 0
frontend $FRONTEND
    bind $LB_ADDR:$LB_PORT
    default_backend $BACKEND
backend $BACKEND
    balance roundrobin
    retries 0
    http-reuse never
    option httpchk GET /health
    default-server check inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1
EOF
        for ((i = 1; i <= n; i++)); do echo "    server web-$i $(addr "$i"):$APP_PORT"; done
    } >"$DIR/haproxy.cfg"
    "$HAPROXY" -c -q -f "$DIR/haproxy.cfg" || die "HAProxy rejected $DIR/haproxy.cfg"
    setsid "$HAPROXY" -db -f "$DIR/haproxy.cfg" </dev/null >>"$DIR/haproxy.log" 2>&1 &
    track haproxy $!
    wait_until 5 "HAProxy's runtime API" hap "show info"
    all_up() { [ "$(hap_rows | awk '$2 == "UP"' | wc -l)" = "$n" ]; }
    wait_until 20 "all $n servers UP" all_up
    write_inventory "$n" default "$HEALTH_DEFAULT_MS" ""
    write_inventory "$n" fine "$HEALTH_FINE_MS" 'poll_interval = "10ms"'
}

# health.retries: ~10 s of polling whatever the interval (only a failing
# instance ever uses them up, so they do not change the timings).
write_inventory() { # N VARIANT HEALTH_INTERVAL_MS EXTRA_LB_LINE
    local n=$1 inv=$DIR/inv-$2.toml interval_ms=$3 i
    cat >"$inv" <<EOF
[app]
name = "bench"
deploy = "$DIR/bin/deploy.sh"
rollback = "$DIR/bin/rollback.sh"

[ssh]
user = "$(id -un)"
identity = "$DIR/id_ed25519"
known_hosts = "$DIR/known_hosts"
config = "$DIR/ssh_config"
connect_timeout = "5s"
command_timeout = "2m"

[health]
path = "/health"
interval = "${interval_ms}ms"
timeout = "1s"
retries = $((10000 / interval_ms))
healthy_threshold = 2

[lb]
kind = "haproxy"
socket = "$SOCK"
backend = "$BACKEND"
drain_timeout = "30s"
min_in_service = $((n > 1 ? n - 1 : 0))
$4
EOF
    for ((i = 1; i <= n; i++)); do
        printf '\n[[instances]]\nname = "web-%d"\nhost = "%s"\nssh_port = %d\nport = %d\n' \
            "$i" "$(addr "$i")" "$SSH_PORT" "$APP_PORT" >>"$inv"
    done
}

# All servers UP and every app healthy on $1: the state each run starts from.
fleet_ready() { # N VERSION
    local n=$1 v=$2 i
    [ "$(hap_rows | awk '$2 == "UP"' | wc -l)" = "$n" ] || return 1
    for ((i = 1; i <= n; i++)); do
        [ "$(curl -s --max-time 1 "http://$(addr "$i"):$APP_PORT/")" = "version=$v" ] || return 1
    done
}

# -------------------------------------------------------------------- load --

# The load generator runs during each measured run: started just before the
# method's clock (once HAProxy has counted its first session), stopped by its
# stop file right after; its JSON line gives ok/failed for load.tsv.
LOAD_PID=
load_start() {
    local before
    rm -f "$DIR/load.stop" "$DIR/load.json"
    before=$(lb_sessions)
    [[ "$before" =~ ^[0-9]+$ ]] || die "cannot read the frontend's session count from HAProxy"
    setsid "$PY" "$DIR/bin/loadgen.py" --url "http://$LB_ADDR:$LB_PORT/" --rate "$LOAD_RATE" \
        --duration "$LOAD_DURATION" --timeout 5 --progress 0 \
        --stop-file "$DIR/load.stop" --out "$DIR/load.json" </dev/null >/dev/null 2>>"$DIR/load.log" &
    LOAD_PID=$!
    track loadgen "$LOAD_PID"
    wait_until 5 "the load generator's first request through HAProxy" lb_sessions_above "$before"
}

load_stop() { # N REP METHOD
    local n=$1 rep=$2 method=$3 i rc=0 row
    touch "$DIR/load.stop"
    # It stops sending at once, then waits for its requests in flight (each
    # bounded by --timeout 5).
    for ((i = 0; i < 200; i++)); do alive "$LOAD_PID" || break; sleep 0.05; done
    alive "$LOAD_PID" && { stop_pids 2 "$LOAD_PID"; die "the load generator (pid $LOAD_PID) did not stop within 10 s of its stop file"; }
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    [ -s "$DIR/load.json" ] || die "the load generator left no result (exit $rc; see $DIR/load.log)"
    row=$("$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("%d\t%d\t%d\t%s\t%s" % (r["ok"], r["failed"], r["sent"], json.dumps(r["errors"], separators=(",", ":")),
                             json.dumps(r["first_errors"], separators=(",", ":"))))' "$DIR/load.json")
    printf '%s\t%s\t%s\t%s\n' "$n" "$rep" "$method" "$row" >>"$LOAD"
    [ "$(cut -f1 <<<"$row")" -gt 0 ] || die "the load generator got no good answer at all during $method (N=$n rep $rep): $row"
}

# ---------------------------------------------------------------- measured --

run_rollscript() { # N REP METHOD VERSION
    local n=$1 rep=$2 method=$3 v=$4 before after t0 t1 rc journal variant=default
    [ "$method" = rollscript ] || variant=fine
    before=$(find "$DIR/.rollscript/runs" -maxdepth 1 -type f -printf '%f\n' 2>/dev/null | sort | tail -1 || true)
    load_start
    t0=$(now)
    set +e
    (cd "$ROOT" && "$BIN" run scripts/rolling.rhai -i "$DIR/inv-$variant.toml" --yes --var version="$v") \
        >"$DIR/last-run.log" 2>&1
    rc=$?
    set -e
    t1=$(now)
    load_stop "$n" "$rep" "$method"
    [ $rc = 0 ] || { tail -n 30 "$DIR/last-run.log" >&2; die "rollscript run failed (exit $rc) at N=$n ($method, $v); log: $DIR/last-run.log"; }
    after=$(find "$DIR/.rollscript/runs" -maxdepth 1 -type f -printf '%f\n' 2>/dev/null | sort | tail -1 || true)
    [[ -n "$after" && "$after" != "$before" ]] || die "no new journal under $DIR/.rollscript/runs"
    journal=$DIR/.rollscript/runs/$after
    echo -e "$n\t$rep\t$method\t$(elapsed_ms "$t0" "$t1")" >>"$RESULTS"
    "$PY" - "$journal" "$n" "$rep" "$method" "$t0" "$t1" >>"$STEPS" <<'EOF'
# Per effect: result.at - intent.at; _startup: exec -> first intent;
# _between: from each result to the next intent (journal fsyncs, tracing,
# the script itself, the capacity guard's queries); _exit: last result -> exit.
import calendar, collections, json, re, sys
path, n, rep, method, t0, t1 = sys.argv[1:]
def ts(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", s)
    sec = calendar.timegm(tuple(int(x) for x in re.split(r"[-T:]", m.group(1))) + (0, 0, 0))
    return sec + float("0." + (m.group(2) or "0"))
intents, tot, cnt = {}, collections.Counter(), collections.Counter()
first = last = None
between = 0.0
for line in open(path):
    r = json.loads(line)
    if r.get("type") == "intent":
        at = ts(r["at"])
        intents[r["seq"]] = (r["op"], at)
        if first is None:
            first = at
        elif last is not None:
            between += at - last
    elif r.get("type") == "result" and r["seq"] in intents:
        op, at0 = intents[r["seq"]]
        last = ts(r["at"])
        tot[op] += last - at0
        cnt[op] += 1
for op in tot:
    print("%s\t%s\t%s\t%s\t%.1f\t%d" % (n, rep, method, op, 1000 * tot[op], cnt[op]))
print("%s\t%s\t%s\t_startup\t%.1f\t1" % (n, rep, method, 1000 * (first - float(t0))))
print("%s\t%s\t%s\t_between\t%.1f\t1" % (n, rep, method, 1000 * between))
print("%s\t%s\t%s\t_exit\t%.1f\t1" % (n, rep, method, 1000 * (float(t1) - last)))
EOF
}

# The floors: the same six steps per instance, one instance at a time, every
# poll (LB and health) every 10 ms.
declare -A FSTEP
fstep() { FSTEP[$1]=$(( ${FSTEP[$1]:-0} + $2 )); }
us_since() { # start (EPOCHREALTIME) -> microseconds
    local a=${1/./} b=${EPOCHREALTIME/./}
    echo $(( 10#$b - 10#$a ))
}
floor_one() { # i VERSION CTL
    local i=$1 v=$2 ctl=$3 srv=web-$1 t row ok code host
    host=$(addr "$i")
    t=$EPOCHREALTIME
    hap "set server $BACKEND/$srv state drain" >/dev/null
    fstep deregister "$(us_since "$t")"
    t=$EPOCHREALTIME
    while :; do
        row=$(hap "show stat $BACKEND 4 -1" | awk -F, -v s="$srv" '$2 == s { print $5 + $3 }')
        [ "$row" = 0 ] && break
        sleep "$FLOOR_POLL"
    done
    hap "set server $BACKEND/$srv state maint" >/dev/null
    fstep wait_drained "$(us_since "$t")"
    t=$EPOCHREALTIME
    ssh -F "$DIR/ssh_config" -o ControlMaster=auto -o "ControlPath=$ctl/%h" -o ControlPersist=60 \
        "$host" "$DIR/bin/deploy.sh" "$v" >/dev/null
    fstep ssh "$(us_since "$t")"
    t=$EPOCHREALTIME
    ok=0
    while :; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$host:$APP_PORT/health" || true)
        if [ "$code" = 200 ]; then ok=$((ok + 1)); else ok=0; fi
        [ $ok -ge 2 ] && break
        sleep "$FLOOR_POLL"
    done
    fstep health "$(us_since "$t")"
    t=$EPOCHREALTIME
    hap "set server $BACKEND/$srv state ready" >/dev/null
    fstep register "$(us_since "$t")"
    t=$EPOCHREALTIME
    while :; do
        row=$(hap "show stat $BACKEND 4 -1" | awk -F, -v s="$srv" '$2 == s { print $18 }')
        [ "$row" = UP ] && break
        sleep "$FLOOR_POLL"
    done
    fstep wait_in_service "$(us_since "$t")"
}

# floor-preopened: every host's master, opened before the clock (in parallel,
# as a tool that connects ahead would); their PIDs are checked after the run,
# so a master that went away mid-run (the loop would then have connected on
# its own, silently) fails the bench instead of skewing it. ControlPersist
# outlasts the run: 60 s, or 3 s per instance for big fleets.
MASTER_PIDS=()
open_masters() { # N REP CTL
    local n=$1 rep=$2 ctl=$3 i t pid persist=$(( $1 * 3 > 60 ? $1 * 3 : 60 )) openers=()
    MASTER_PIDS=()
    t=$EPOCHREALTIME
    for ((i = 1; i <= n; i++)); do
        ssh -F "$DIR/ssh_config" -fN -o ControlMaster=yes -o ControlPersist="$persist" -o "ControlPath=$ctl/%h" \
            "$(addr "$i")" </dev/null >/dev/null 2>>"$DIR/masters.log" &
        openers+=($!)
    done
    for pid in "${openers[@]}"; do wait "$pid" || die "could not open the ssh master of an instance (see $DIR/masters.log)"; done
    for ((i = 1; i <= n; i++)); do
        pid=$(master_pid "$ctl/$(addr "$i")")
        [[ "$pid" =~ ^[0-9]+$ ]] || die "no ssh master for $(addr "$i") after opening it (see $DIR/masters.log)"
        MASTER_PIDS+=("$pid")
    done
    echo -e "$n\t$rep\t$(( $(us_since "$t") / 1000 ))" >>"$MASTERS"
}

run_floor() { # N REP METHOD VERSION
    local n=$1 rep=$2 method=$3 v=$4 t0 t1 i ctl=$DIR/cm s pid
    rm -rf "$ctl"
    mkdir -p "$ctl"
    FSTEP=()
    [ "$method" = floor-preopened ] && open_masters "$n" "$rep" "$ctl"
    load_start
    t0=$(now)
    for ((i = 1; i <= n; i++)); do floor_one "$i" "$v" "$ctl"; done
    t1=$(now)
    load_stop "$n" "$rep" "$method"
    if [ "$method" = floor-preopened ]; then
        for pid in "${MASTER_PIDS[@]}"; do
            alive "$pid" || die "a pre-opened ssh master (pid $pid) exited during the run: the loop connected again"
        done
    fi
    echo -e "$n\t$rep\t$method\t$(elapsed_ms "$t0" "$t1")" >>"$RESULTS"
    local sum=0
    for s in "${!FSTEP[@]}"; do
        echo -e "$n\t$rep\t$method\t$s\t$((FSTEP[$s] / 1000))\t$n" >>"$STEPS"
        sum=$((sum + FSTEP[$s]))
    done
    printf '%s\t%s\t%s\t_startup\t0\t1\n%s\t%s\t%s\t_exit\t0\t1\n' "$n" "$rep" "$method" "$n" "$rep" "$method" >>"$STEPS"
    echo -e "$n\t$rep\t$method\t_between\t$(( (10#${t1/./} - 10#${t0/./} - sum) / 1000 ))\t1" >>"$STEPS"
    stop_masters
}

# The pid of the master on control socket $1 (`ssh -O check` names it).
master_pid() {
    ssh -F "$DIR/ssh_config" -o "ControlPath=$1" -O check "${1##*/}" 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p'
}

# The floors' ControlPersist masters, each stopped by PID; they would exit on
# their own after ControlPersist's idle time.
stop_masters() {
    local s pid
    for s in "$DIR"/cm/*; do
        [ -S "$s" ] || continue
        pid=$(master_pid "$s")
        [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    return 0
}

# Each repetition's order: row REP of a Williams square over the selected
# methods (for 4: A B D C / B C A D / C D B A / D A C B): every method takes
# every position, and follows every other method, once per 4 repetitions.
rotation() { # REP
    local k=${#METHOD_LIST[@]} r=$(( ($1 - 1) % ${#METHOD_LIST[@]} )) lo=1 hi seq=(0) j out=()
    hi=$((k - 1))
    while [ ${#seq[@]} -lt "$k" ]; do
        seq+=("$lo"); lo=$((lo + 1))
        [ ${#seq[@]} -lt "$k" ] && { seq+=("$hi"); hi=$((hi - 1)); }
    done
    for j in "${seq[@]}"; do out+=("${METHOD_LIST[(j + r) % k]}"); done
    echo "${out[*]}"
}

# ------------------------------------------------------------------ report --

report() {
    "$PY" - "$RESULTS" "$STEPS" "$LOAD" "$MASTERS" "$BIN_NOTE" "$LOAD_RATE" <<'EOF'
import collections, json, os, statistics, sys
res, steps, load, masters, binnote, rate = sys.argv[1:]
def rows(path):
    if not os.path.exists(path):
        return
    for line in open(path):
        line = line.rstrip("\n")
        if line:
            yield line.split("\t")
METHODS = ["floor", "floor-preopened", "rollscript-fine", "rollscript"]
LABEL = {"floor": "floor (fresh ssh)", "floor-preopened": "floor (pre-opened masters)",
         "rollscript-fine": "rollscript 10 ms", "rollscript": "rollscript defaults"}
SHORT = {"floor": "floor", "floor-preopened": "pre-opened", "rollscript-fine": "10 ms", "rollscript": "defaults"}
med = statistics.median
walls = collections.defaultdict(list)          # (n, method) -> [s]
reps = collections.defaultdict(dict)           # (n, rep) -> method -> s
for n, rep, m, ms in rows(res):
    walls[(int(n), m)].append(float(ms) / 1000)
    reps[(int(n), rep)][m] = float(ms) / 1000
st = collections.defaultdict(list)             # (n, method, step) -> per-rep ms per instance
for n, rep, m, step, total, count in rows(steps):
    st[(int(n), m, step)].append(float(total) / int(n))
ld = collections.defaultdict(list)             # (n, method) -> [(rep, ok, failed, sent, errors, first)]
for r in rows(load):
    n, rep, m, ok, failed, sent = r[:6]
    ld[(int(n), m)].append((rep, int(ok), int(failed), int(sent), r[6] if len(r) > 6 else "{}", r[7] if len(r) > 7 else "[]"))
mo = collections.defaultdict(list)             # n -> [ms to open the masters]
for n, rep, ms in rows(masters):
    mo[int(n)].append(float(ms))
sizes = sorted({n for n, _ in walls} | {n for n, _ in ld})
present = [m for m in METHODS if any(walls[(n, m)] for n in sizes)]

def fmt(v):
    return "%.2f s (%.2f–%.2f)" % (med(v), min(v), max(v)) if v else "-"
def failed_total(n, m=None):
    return sum(f for mm in METHODS if m in (None, mm) for _, _, f, _, _, _ in ld[(n, mm)])
def sent_total(n, m=None):
    return sum(s for mm in METHODS if m in (None, mm) for _, _, _, s, _, _ in ld[(n, mm)])

print("Rolling deploy under load (%s req/s through HAProxy), wall time per run: median (min–max) over repetitions; %s" % (rate, binnote))
print()
print("| N | runs | floor (fresh ssh) | floor (pre-opened masters) | rollscript 10 ms | rollscript defaults | failed requests |")
print("|---|---|---|---|---|---|---|")
for n in sizes:
    runs = max((len(walls[(n, m)]) for m in METHODS), default=0)
    failed = "%d of %d" % (failed_total(n), sent_total(n)) if any(ld[(n, m)] for m in METHODS) else "-"
    print("| " + " | ".join(["%d" % n, "%d" % runs] + [fmt(walls[(n, m)]) for m in METHODS] + [failed]) + " |")
print()
print("Requests during the runs (demo/loadgen.py, one per connection; a failure is anything but 200 \"version=<any>\"): failed of sent, summed over the repetitions:")
print()
print("| N | " + " | ".join(LABEL[m] for m in METHODS) + " | all |")
print("|---|" + "---|" * (len(METHODS) + 1))
for n in sizes:
    cells = ["%d of %d" % (failed_total(n, m), sent_total(n, m)) if ld[(n, m)] else "-" for m in METHODS]
    print("| %d | %s | %d of %d |" % (n, " | ".join(cells), failed_total(n), sent_total(n)))
bad = [(n, rep, m, f, e, fe) for n in sizes for m in METHODS for rep, _, f, _, e, fe in ld[(n, m)] if f]
if bad:
    print()
    print("Failed requests, per run:")
    print()
    for n, rep, m, f, e, fe in bad:
        print("- N=%d rep %s %s: %d failed %s; first: %s" % (n, rep, m, f, e, fe))
print()

# Paired: within each repetition the methods ran back to back on the same
# fleet, so the median of per-repetition ratios is less sensitive to drift.
RATIOS = [("rollscript-fine", "floor", 0.90), ("rollscript-fine", "floor-preopened", 1.02), ("rollscript", "floor", 1.00)]
def ratios(n, a, b):
    return [r[a] / r[b] for (k, _), r in sorted(reps.items()) if k == n and a in r and b in r and r[b] > 0]
print("Paired ratios: median of the per-repetition ratios of wall times (min–max; pairs):")
print()
print("| N | " + " | ".join("%s / %s" % (LABEL[a], LABEL[b]) for a, b, _ in RATIOS) + " |")
print("|---|" + "---|" * len(RATIOS))
for n in sizes:
    cells = []
    for a, b, _ in RATIOS:
        q = ratios(n, a, b)
        cells.append("%.3f (%.3f–%.3f; %d)" % (med(q), min(q), max(q), len(q)) if q else "-")
    print("| %d | %s |" % (n, " | ".join(cells)))
print()
print("Issue 17's targets (median paired ratio):")
print()
for n in sizes:
    parts = []
    for a, b, limit in RATIOS:
        q = ratios(n, a, b)
        what = "%s <= %.2f x %s" % (LABEL[a], limit, LABEL[b])
        parts.append("%s: %s" % (what, ("met (%.3f)" if med(q) <= limit else "NOT met (%.3f)") % med(q) if q else "not measured"))
    print("- N=%d: %s" % (n, "; ".join(parts)))
print()
if any(mo.values()):
    print("floor (pre-opened masters): opening the N ssh masters, in parallel, before its clock started (not in its wall time): " + ", ".join(
        "N=%d: %.0f ms" % (n, med(mo[n])) for n in sizes if mo[n]))
    print()
print("Polled waits, ms per instance (wait_drained + health + wait_in_service; the floors poll every 10 ms):")
print()
for n in sizes:
    w = lambda m: sum(med(st[(n, m, s)]) for s in ("wait_drained", "health", "wait_in_service") if st[(n, m, s)])
    print("- N=%d: %s" % (n, ", ".join("%s %.0f" % (SHORT[m], w(m)) if any(st[(n, m, s)] for s in ("health",)) else "%s -" % SHORT[m] for m in METHODS)))
print()
print("Per step, ms per instance: median over repetitions of (the run's total for the step) / N, so the rows add up to wall / N:")
print()
order = ["deregister", "wait_drained", "ssh", "health", "register", "wait_in_service"]
DIFFS = [(a, b) for a, b, _ in RATIOS]
def val(n, m, s):
    return med(st[(n, m, s)]) if st[(n, m, s)] else None
def cell(v, f):
    return f % v if v is not None else "-"
def diff(a, b, f):
    return f % (a - b) if a is not None and b is not None else "-"
for n in sizes:
    print("N = %d" % n)
    print()
    print("| step | " + " | ".join(SHORT[m] for m in METHODS) + " | " + " | ".join("%s - %s" % (SHORT[a], SHORT[b]) for a, b in DIFFS) + " |")
    print("|---|" + "---|" * (len(METHODS) + len(DIFFS)))
    for s, label, f, fd in [(s, s, "%.0f", "%+.0f") for s in order] + [
            ("_startup", "start-up: exec to first effect (binary load, inventory, compile, lock, journal open)", "%.1f", "%+.1f"),
            ("_between", "between effects: journal fsyncs, log, script, capacity guard (floors: bash bookkeeping)", "%.1f", "%+.1f"),
            ("_exit", "exit: last effect to process exit (summary, lock release)", "%.1f", "%+.1f")]:
        v = {m: val(n, m, s) for m in METHODS}
        print("| %s | %s | %s |" % (label, " | ".join(cell(v[m], f) for m in METHODS), " | ".join(diff(v[a], v[b], fd) for a, b in DIFFS)))
    wn = {m: 1000 * med(walls[(n, m)]) / n if walls[(n, m)] else None for m in METHODS}
    print("| **wall / N** | %s | %s |" % (" | ".join(cell(wn[m], "%.0f") for m in METHODS), " | ".join(diff(wn[a], wn[b], "%+.0f") for a, b in DIFFS)))
    print()
runbook = 120.0
ref = next((m for m in ("rollscript", "rollscript-fine") if m in present), None)
line = "The runbook's fixed sleeps alone (2 x 60 s per instance): "
if ref:
    line += ", ".join("N=%d: %.0f s (%s median %.1f s, %.0fx less)" % (n, runbook * n, LABEL[ref], med(walls[(n, ref)]), runbook * n / med(walls[(n, ref)]))
                      for n in sizes if walls[(n, ref)])
else:
    line += ", ".join("N=%d: %.0f s" % (n, runbook * n) for n in sizes) + " (no rollscript run measured)"
print(line)
EOF
}

# Failed requests over the whole measurement (load.tsv), for the exit status.
failed_requests() { [ -f "$LOAD" ] && awk -F'\t' '{ s += $5 } END { print s + 0 }' "$LOAD" || echo 0; }

# -------------------------------------------------------------------- main --

for t in ssh ssh-keygen socat curl flock setsid awk; do
    command -v "$t" >/dev/null 2>&1 || { say "installing what is missing (tools/setup)"; ROLLSCRIPT_MOTO_PYTHON=unused "$ROOT/tools/setup" >/dev/null; break; }
done
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
for t in "$SSHD" "$HAPROXY" ssh socat curl "$PY"; do command -v "$t" >/dev/null 2>&1 || die "$t is not installed"; done

if [ "$REPORT_ONLY" = 1 ]; then
    [[ -s "$RESULTS" && -s "$STEPS" ]] || die "--report-only: no results in $DIR"
    BIN_NOTE=$(cat "$DIR/binary.txt" 2>/dev/null || echo "binary: unknown")
    report | tee ${OUT:+-a "$OUT"}
    failed=$(failed_requests)
    [ "$failed" = 0 ] || { say "$failed request(s) failed during the runs (see the report)"; exit 1; }
    exit 0
fi

PROFILE=
if [ "$NEED_BIN" = 0 ]; then
    SRC_BIN=
elif [ -n "${ROLLSCRIPT_BENCH_BIN:-}" ]; then
    [[ -f "$ROLLSCRIPT_BENCH_BIN" && -x "$ROLLSCRIPT_BENCH_BIN" ]] || die "ROLLSCRIPT_BENCH_BIN=$ROLLSCRIPT_BENCH_BIN is not an executable file"
    SRC_BIN=$(cd "$(dirname "$ROLLSCRIPT_BENCH_BIN")" && pwd)/$(basename "$ROLLSCRIPT_BENCH_BIN"); PROFILE=ROLLSCRIPT_BENCH_BIN
elif [ -x "$ROOT/target/release/rollscript" ]; then
    SRC_BIN=$ROOT/target/release/rollscript; PROFILE=release
elif [ -x "$ROOT/target/debug/rollscript" ]; then
    SRC_BIN=$ROOT/target/debug/rollscript; PROFILE=debug
else
    die "no target/release/rollscript nor target/debug/rollscript: run \`cargo build --release\` first (or set ROLLSCRIPT_BENCH_BIN)"
fi

if [ -e "$DIR" ] && [ ! -e "$DIR/.rollscript-bench" ]; then
    die "$DIR exists and was not made by benches/rollout.sh"
fi
mkdir -p "$DIR"
touch "$DIR/.rollscript-bench"
chmod 700 "$DIR"
teardown
trap 'teardown' EXIT
trap 'say "interrupted"; exit 130' INT TERM

BIN=$DIR/rollscript
rm -f "$BIN"
if [ -n "$SRC_BIN" ]; then
    cp "$SRC_BIN" "$BIN"
    case $PROFILE in
        release) kind="release build" ;;
        debug) kind="debug build, NOT release: no target/release/rollscript" ;;
        *) kind="from ROLLSCRIPT_BENCH_BIN" ;;
    esac
    BIN_NOTE="binary: ${SRC_BIN#"$ROOT"/} ($kind, built $(date -r "$SRC_BIN" '+%F %T'), $("$BIN" --version))"
else
    BIN_NOTE="binary: none (no rollscript method selected)"
fi
BIN_NOTE="$BIN_NOTE; methods: ${METHODS//,/, }"
say "$BIN_NOTE"
echo "$BIN_NOTE" >"$DIR/binary.txt"
if [ -n "$SRC_BIN" ]; then
    (cd "$ROOT" && "$BIN" check scripts/rolling.rhai >/dev/null) || die "scripts/rolling.rhai does not pass rollscript check"
fi
: >"$RESULTS"
: >"$STEPS"
: >"$LOAD"
: >"$MASTERS"
load_note="load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
say "$load_note"

version=0
for n in ${SIZES//,/ }; do
    runs=${RUNS:-$([ "$n" -ge 30 ] && echo "$RUNS_LARGE" || { [ "$n" -le 3 ] && echo 5 || echo 3; })}
    say "N=$n: starting the fleet ($n apps + sshd's, HAProxy)"
    fleet_up "$n"
    cur=v0
    for ((rep = 1; rep <= runs; rep++)); do
        for m in $(rotation "$rep"); do
            wait_until 20 "fleet ready at $cur" fleet_ready "$n" "$cur"
            version=$((version + 1))
            v=v$version
            case $m in
                rollscript|rollscript-fine) run_rollscript "$n" "$rep" "$m" "$v" ;;
                floor|floor-preopened) run_floor "$n" "$rep" "$m" "$v" ;;
            esac
            say "N=$n rep $rep/$runs $m: $(tail -n 1 "$RESULTS" | cut -f4) ms, requests $(tail -n 1 "$LOAD" | cut -f4) ok / $(tail -n 1 "$LOAD" | cut -f5) failed"
            cur=$v
        done
    done
    teardown
done
load_note="$load_note; at end: $(cut -d' ' -f1-3 /proc/loadavg)"

{
    report
    echo
    echo "$load_note (2 cores shared with other builds/tests; nproc $(nproc))"
    echo "raw data: $RESULTS, $STEPS, $LOAD"
} | tee ${OUT:+-a "$OUT"}
failed=$(failed_requests)
[ "$failed" = 0 ] || { say "$failed request(s) failed during the runs (see the report)"; exit 1; }
