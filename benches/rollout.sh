#!/usr/bin/env bash
# benches/rollout.sh — what rollscript costs over a bare shell loop, on a real
# local fleet behind HAProxy (issue 8).
#
#   benches/rollout.sh                      N = 3, 10, 30; 5/3/3 repetitions
#   benches/rollout.sh --sizes 3 --runs 3   one size, 3 repetitions
#
# For each fleet size N it starts, on loopback only, N app instances
# (demo/app.py, FIXED boot delay 0.5 s), each with its own sshd, and HAProxy
# in front (runtime API socket at admin level, checks every 200 ms) — the
# set-up of tools/demo — then, per repetition and in rotating order:
#
#   rollscript        target/{release,debug}/rollscript run scripts/rolling.rhai
#                     -i INV --yes --var version=vK   (lb.poll_interval unset:
#                     the provider's adaptive backoff, 50 ms growing to 1 s)
#   rollscript-10ms   the same with lb.poll_interval = "10ms" in the inventory:
#                     what is left once LB polling is as fine as the floor's
#   floor             the same steps by a bare bash loop of raw commands, per
#                     instance: `set server BE/S state drain` (socat), poll
#                     `show stat` every 10 ms until scur+qcur == 0, `state
#                     maint`, ssh (ControlMaster=auto, ControlPersist) running
#                     deploy.sh vK, curl /health every health.interval until 2
#                     consecutive 200s, `state ready`, poll every 10 ms until UP
#
# Wall time is from the command's start to its exit (rollscript's includes its
# own start-up, inventory and script compilation, lock and journal). Every
# figure is the median of the repetitions, printed with min and max; overhead
# = rollscript - floor (medians), also per instance and in % of the floor.
# Per-step times come from rollscript's journal (.rollscript/runs/*.jsonl:
# duration_ms of each effect) and from the floor loop's own clock.
#
# Options: --sizes LIST (default 3,10,30), --runs R (repetitions for every
# size), --runs-large R (repetitions for N >= 30, default 3), --out FILE
# (append the report there too), --report-only (print the report of the
# last measurement again, from the bench directory). Environment: ROLLSCRIPT_BENCH_DIR (default
# /tmp/rollscript-bench), ROLLSCRIPT_BENCH_NET (default 127.0.88: instance i
# is 127.0.88.i, sshd on :2222, app on :18080; HAProxy on 127.0.88.250:18000).
#
# The binary: target/release/rollscript if it exists, else target/debug/
# rollscript (the report says which); it is never built here (`cargo build`
# first). It is copied into the bench directory before the first run so a
# concurrent rebuild cannot swap it mid-measurement. Every process started is
# recorded and stopped by PID on exit (also on Ctrl-C or a failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${ROLLSCRIPT_BENCH_DIR:-/tmp/rollscript-bench}
NET=${ROLLSCRIPT_BENCH_NET:-127.0.88}
SSH_PORT=2222
APP_PORT=18080
LB_ADDR=$NET.250
LB_PORT=18000
BACKEND=bench
SIZES=3,10,30
RUNS=
RUNS_LARGE=3
OUT=
REPORT_ONLY=0
FLOOR_POLL=0.01            # the floor's LB poll interval (s)
HEALTH_INTERVAL_MS=100     # health.interval, for rollscript and the floor alike
BOOT_DELAY=0.5             # the apps' fixed boot delay (s)

usage() { sed -n '2,43p' "$0" | sed 's/^# \{0,1\}//'; }
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

[[ "$DIR" =~ ^/[A-Za-z0-9/._-]+$ ]] && [ ${#DIR} -le 50 ] || die "ROLLSCRIPT_BENCH_DIR must be a short absolute path (unix socket paths)"
[[ "$NET" =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "ROLLSCRIPT_BENCH_NET must be loopback, like 127.0.88"
[[ "$SIZES" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes: a comma-separated list of numbers"
for n in ${SIZES//,/ }; do [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "--sizes: each 1-200"; done
[ -z "$RUNS" ] || [[ "$RUNS" =~ ^[1-9][0-9]?$ ]] || die "--runs: 1-99"
[[ "$RUNS_LARGE" =~ ^[1-9][0-9]?$ ]] || die "--runs-large: 1-99"

PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
SOCK=$DIR/haproxy.sock
PIDS=$DIR/pids
RESULTS=$DIR/results.tsv     # N rep method wall_s
STEPS=$DIR/steps.tsv         # N rep method step total_ms count

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

# Stops what the bench started: ssh masters, HAProxy, apps, sshd's (and their
# connection children), each by PID and only if its command line names $DIR.
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
    cp "$ROOT/demo/app.py" "$ROOT/demo/deploy.sh" "$ROOT/demo/rollback.sh" "$DIR/bin/"
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
frontend web
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
    write_inventory "$n" default ""
    write_inventory "$n" 10ms 'poll_interval = "10ms"'
}

write_inventory() { # N VARIANT EXTRA_LB_LINE
    local n=$1 inv=$DIR/inv-$2.toml i
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
interval = "${HEALTH_INTERVAL_MS}ms"
timeout = "1s"
retries = 100
healthy_threshold = 2

[lb]
kind = "haproxy"
socket = "$SOCK"
backend = "$BACKEND"
drain_timeout = "30s"
min_in_service = $((n > 1 ? n - 1 : 0))
$3
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

# ---------------------------------------------------------------- measured --

run_rollscript() { # N REP VARIANT VERSION
    local n=$1 rep=$2 variant=$3 v=$4 before after t0 t1 rc journal method=rollscript
    [ "$variant" = default ] || method=rollscript-$variant
    before=$(ls "$DIR/.rollscript/runs" 2>/dev/null | sort | tail -1 || true)
    t0=$(now)
    set +e
    (cd "$ROOT" && "$BIN" run scripts/rolling.rhai -i "$DIR/inv-$variant.toml" --yes --var version="$v") \
        >"$DIR/last-run.log" 2>&1
    rc=$?
    set -e
    t1=$(now)
    [ $rc = 0 ] || { tail -n 30 "$DIR/last-run.log" >&2; die "rollscript run failed (exit $rc) at N=$n ($method, $v); log: $DIR/last-run.log"; }
    after=$(ls "$DIR/.rollscript/runs" 2>/dev/null | sort | tail -1 || true)
    [ -n "$after" ] && [ "$after" != "$before" ] || die "no new journal under $DIR/.rollscript/runs"
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

# The floor: the same six steps per instance, one instance at a time.
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
        sleep "0.$(printf '%03d' "$HEALTH_INTERVAL_MS")"
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

run_floor() { # N REP VERSION
    local n=$1 rep=$2 v=$3 t0 t1 i ctl=$DIR/cm s pid
    rm -rf "$ctl"
    mkdir -p "$ctl"
    FSTEP=()
    t0=$(now)
    for ((i = 1; i <= n; i++)); do floor_one "$i" "$v" "$ctl"; done
    t1=$(now)
    echo -e "$n\t$rep\tfloor\t$(elapsed_ms "$t0" "$t1")" >>"$RESULTS"
    local sum=0
    for s in "${!FSTEP[@]}"; do
        echo -e "$n\t$rep\tfloor\t$s\t$((FSTEP[$s] / 1000))\t$n" >>"$STEPS"
        sum=$((sum + FSTEP[$s]))
    done
    printf '%s\t%s\tfloor\t_startup\t0\t1\n%s\t%s\tfloor\t_exit\t0\t1\n' "$n" "$rep" "$n" "$rep" >>"$STEPS"
    echo -e "$n\t$rep\tfloor\t_between\t$(( (10#${t1/./} - 10#${t0/./} - sum) / 1000 ))\t1" >>"$STEPS"
    stop_masters
}

# The floor's ControlPersist masters, each stopped by PID (`ssh -O check`
# names it); they would exit on their own 60 s after their last use.
stop_masters() {
    local s pid
    for s in "$DIR"/cm/*; do
        [ -S "$s" ] || continue
        pid=$(ssh -F "$DIR/ssh_config" -o "ControlPath=$s" -O check "${s##*/}" 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
        [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    return 0
}

# ------------------------------------------------------------------ report --

report() {
    "$PY" - "$RESULTS" "$STEPS" "$BIN_NOTE" <<'EOF'
import collections, statistics, sys
res, steps, binnote = sys.argv[1:]
walls = collections.defaultdict(list)
for line in open(res):
    n, rep, m, ms = line.split("\t")
    walls[(int(n), m)].append(float(ms) / 1000)
st = collections.defaultdict(list)   # (n, method, step) -> per-rep ms per instance
for line in open(steps):
    n, rep, m, step, total, count = line.split("\t")
    st[(int(n), m, step)].append(float(total) / int(n))
med = statistics.median
def fmt(v): return "%.2f s (min %.2f, max %.2f)" % (med(v), min(v), max(v))
sizes = sorted({n for n, _ in walls})
methods = ["floor", "rollscript", "rollscript-10ms"]
print("Rolling deploy, wall time per run: median (min, max) over repetitions; %s" % binnote)
print()
print("| N | runs | floor (bare loop) | rollscript (default poll) | rollscript (lb.poll_interval=10ms) | overhead default: total / per instance / % | overhead 10ms: total / per instance / % |")
print("|---|---|---|---|---|---|---|")
for n in sizes:
    f = walls[(n, "floor")]
    row = ["%d" % n, "%d" % len(f)] + [fmt(walls[(n, m)]) for m in methods]
    for m in methods[1:]:
        o = med(walls[(n, m)]) - med(f)
        row.append("%+.2f s / %+.0f ms / %+.1f%%" % (o, 1000 * o / n, 100 * o / med(f)))
    print("| " + " | ".join(row) + " |")
print()
# Paired: within each repetition the three methods ran back to back, so the
# median of per-repetition differences is less sensitive to load drift.
reps = collections.defaultdict(dict)
for line in open(res):
    n, rep, m, ms = line.split("\t")
    reps[(int(n), rep)][m] = float(ms) / 1000
print("Paired overhead (median of the per-repetition differences rollscript - floor; min, max):")
print()
for n in sizes:
    parts = []
    for m in methods[1:]:
        d = [r[m] - r["floor"] for (k, _), r in reps.items() if k == n and m in r and "floor" in r]
        if d:
            parts.append("%s %+.2f s (%+.0f ms per instance; min %+.2f, max %+.2f)" % (m, med(d), 1000 * med(d) / n, min(d), max(d)))
    print("- N=%d: %s" % (n, "; ".join(parts)))
print()
print("Polling granularity: LB waits (wait_drained + wait_in_service) with the default backoff minus with lb.poll_interval=10ms:")
print()
for n in sizes:
    w = lambda m: sum(med(st[(n, m, s)]) for s in ("wait_drained", "wait_in_service") if st[(n, m, s)])
    print("- N=%d: %.0f ms - %.0f ms = %+.0f ms per instance (floor, polling every 10 ms: %.0f ms)" % (
        n, w("rollscript"), w("rollscript-10ms"), w("rollscript") - w("rollscript-10ms"), w("floor")))
print()
print("Per step, ms per instance: median over repetitions of (the run's total for the step) / N, so the rows add up to wall / N:")
print()
order = ["deregister", "wait_drained", "ssh", "health", "register", "wait_in_service"]
for n in sizes:
    print("N = %d" % n)
    print()
    print("| step | floor | rollscript | rollscript 10ms | rollscript - floor | 10ms - floor |")
    print("|---|---|---|---|---|---|")
    sums = {m: 0.0 for m in methods}
    for s in order:
        vals = {m: med(st[(n, m, s)]) if st[(n, m, s)] else float("nan") for m in methods}
        for m in methods: sums[m] += vals[m]
        print("| %s | %.0f | %.0f | %.0f | %+.0f | %+.0f |" % (s, vals["floor"], vals["rollscript"], vals["rollscript-10ms"],
              vals["rollscript"] - vals["floor"], vals["rollscript-10ms"] - vals["floor"]))
    for s, label in (("_startup", "start-up: exec to first effect (binary load, inventory, compile, lock, journal open)"),
                     ("_between", "between effects: journal fsyncs, log, script, capacity guard (floor: bash bookkeeping)"),
                     ("_exit", "exit: last effect to process exit (summary, lock release)")):
        vals = {m: med(st[(n, m, s)]) if st[(n, m, s)] else float("nan") for m in methods}
        print("| %s | %.1f | %.1f | %.1f | %+.1f | %+.1f |" % (label, vals["floor"], vals["rollscript"], vals["rollscript-10ms"],
              vals["rollscript"] - vals["floor"], vals["rollscript-10ms"] - vals["floor"]))
    print("| **wall / N** | %.0f | %.0f | %.0f | %+.0f | %+.0f |" % tuple(
        [1000 * med(walls[(n, m)]) / n for m in methods] +
        [1000 * (med(walls[(n, m)]) - med(walls[(n, "floor")])) / n for m in methods[1:]]))
    print()
runbook = 120.0
print("The runbook's fixed sleeps alone (2 x 60 s per instance): " + ", ".join(
    "N=%d: %.0f s (rollscript median %.1f s, %.0fx less)" % (n, runbook * n, med(walls[(n, "rollscript")]), runbook * n / med(walls[(n, "rollscript")]))
    for n in sizes))
EOF
}

# -------------------------------------------------------------------- main --

for t in ssh ssh-keygen socat curl flock setsid awk; do
    command -v "$t" >/dev/null 2>&1 || { say "installing what is missing (tools/setup)"; ROLLSCRIPT_MOTO_PYTHON=unused "$ROOT/tools/setup" >/dev/null; break; }
done
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
for t in "$SSHD" "$HAPROXY" ssh socat curl "$PY"; do command -v "$t" >/dev/null 2>&1 || die "$t is not installed"; done

if [ "$REPORT_ONLY" = 1 ]; then
    [ -s "$RESULTS" ] && [ -s "$STEPS" ] || die "--report-only: no results in $DIR"
    BIN_NOTE=$(cat "$DIR/binary.txt" 2>/dev/null || echo "binary: unknown")
    report | tee ${OUT:+-a "$OUT"}
    exit 0
fi

if [ -x "$ROOT/target/release/rollscript" ]; then
    SRC_BIN=$ROOT/target/release/rollscript; PROFILE=release
elif [ -x "$ROOT/target/debug/rollscript" ]; then
    SRC_BIN=$ROOT/target/debug/rollscript; PROFILE=debug
else
    die "no target/release/rollscript nor target/debug/rollscript: run \`cargo build\` first"
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
cp "$SRC_BIN" "$BIN"
BIN_NOTE="binary: ${SRC_BIN#"$ROOT"/} ($PROFILE build$([ "$PROFILE" = debug ] && echo ", NOT release: no target/release/rollscript"), built $(date -r "$SRC_BIN" '+%F %T'), $("$BIN" --version))"
say "$BIN_NOTE"
echo "$BIN_NOTE" >"$DIR/binary.txt"
(cd "$ROOT" && "$BIN" check scripts/rolling.rhai >/dev/null) || die "scripts/rolling.rhai does not pass rollscript check"
: >"$RESULTS"
: >"$STEPS"
load_note="load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
say "$load_note"

version=0
for n in ${SIZES//,/ }; do
    runs=${RUNS:-$([ "$n" -ge 30 ] && echo "$RUNS_LARGE" || { [ "$n" -le 3 ] && echo 5 || echo 3; })}
    say "N=$n: starting the fleet ($n apps + sshd's, HAProxy)"
    fleet_up "$n"
    cur=v0
    for ((rep = 1; rep <= runs; rep++)); do
        # Rotate the order so a drift in machine load hits every method alike.
        case $((rep % 3)) in
            1) order="rollscript floor rollscript-10ms" ;;
            2) order="floor rollscript-10ms rollscript" ;;
            0) order="rollscript-10ms rollscript floor" ;;
        esac
        for m in $order; do
            wait_until 20 "fleet ready at $cur" fleet_ready "$n" "$cur"
            version=$((version + 1))
            v=v$version
            case $m in
                rollscript) run_rollscript "$n" "$rep" default "$v" ;;
                rollscript-10ms) run_rollscript "$n" "$rep" 10ms "$v" ;;
                floor) run_floor "$n" "$rep" "$v" ;;
            esac
            say "N=$n rep $rep/$runs $m: $(tail -n 1 "$RESULTS" | cut -f4) ms"
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
    echo "raw data: $RESULTS, $STEPS"
} | tee ${OUT:+-a "$OUT"}
