#!/usr/bin/env bash
# benches/plan_scale.sh — `rollscript plan` at fleet scale and `rollscript
# check` speed (issue 8).
#
#   benches/plan_scale.sh                 100,000 instances, 60 s budget
#   benches/plan_scale.sh --instances 2000 --budget 30
#   benches/plan_scale.sh --no-profile    skip the perf profiles of misses
#
# 1. Writes an inventory of N instances (default 10,000; hosts 127.x.y.z,
#    HAProxy backend; nothing is dialled by a plan) and times
#    `rollscript plan scripts/rolling.rhai -i INV --var version=v2` under
#    `/usr/bin/time -v` (wall time, "Maximum resident set size"), --repeat
#    times (default 5): the median, min and max. A plan is killed (SIGKILL,
#    by PID) after --budget seconds, its peak RSS so far read from /proc
#    (VmHWM).
#    Targets (issue 17): < 2 s and < 250 MB at 100,000 instances; below
#    that size the first round's < 1 s and < 100 MB (at 10,000).
# 2. The same plan at other sizes (--series, default 10000,25000,50000) to show how
#    time grows with N (the exponent between consecutive sizes), for the
#    HAProxy inventory and for the same inventory with lb.kind = "none"
#    (which skips the capacity guard).
# 3. `rollscript check scripts/*.rhai`: hyperfine (Debian package; installed
#    if missing) with warm-up, else a loop of 20 runs. Target: < 50 ms.
# 4. For each missed target, when `perf` is available: a profile (perf record
#    --call-graph dwarf) of the plan at --profile-n instances (default 100)
#    and of check, printed as the rollscript/rhai/reqwest/rustls functions
#    with the largest inclusive share of samples.
#
# The binary: target/release/rollscript if it exists, else target/debug/
# rollscript (the output says which); never built here. Work files in
# ROLLSCRIPT_PLAN_BENCH_DIR (default /tmp/rollscript-plan-bench).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=${ROLLSCRIPT_PLAN_BENCH_DIR:-/tmp/rollscript-plan-bench}
N=100000
BUDGET=60
SERIES=10000,25000,50000
REPEAT=5
PROFILE=1
PROFILE_N=100
OUT=

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --instances) N=${2:?}; shift ;;
        --instances=*) N=${1#*=} ;;
        --budget) BUDGET=${2:?}; shift ;;
        --budget=*) BUDGET=${1#*=} ;;
        --series) SERIES=${2:?}; shift ;;
        --series=*) SERIES=${1#*=} ;;
        --profile-n) PROFILE_N=${2:?}; shift ;;
        --profile-n=*) PROFILE_N=${1#*=} ;;
        --repeat) REPEAT=${2:?}; shift ;;
        --repeat=*) REPEAT=${1#*=} ;;
        --no-profile) PROFILE=0 ;;
        --out) OUT=${2:?}; shift ;;
        --out=*) OUT=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "benches/plan_scale.sh: unknown argument ${1@Q}" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
die() { printf 'plan_scale: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'plan_scale: %s\n' "$*" >&2; }
[[ "$N" =~ ^[1-9][0-9]{0,5}$ ]] || die "--instances: 1-999999"
[[ "$BUDGET" =~ ^[1-9][0-9]{0,3}$ ]] || die "--budget: seconds, 1-9999"
[[ "$SERIES" =~ ^([1-9][0-9]*(,[1-9][0-9]*)*)?$ ]] || die "--series: comma-separated sizes"
[[ "$PROFILE_N" =~ ^[1-9][0-9]{0,5}$ ]] || die "--profile-n: 1-999999"
[[ "$REPEAT" =~ ^[1-9][0-9]?$ ]] || die "--repeat: 1-99"
[[ "$DIR" =~ ^/[A-Za-z0-9/._-]+$ ]] || die "ROLLSCRIPT_PLAN_BENCH_DIR: an absolute path of plain characters"
PY=$(command -v python3) || die "python3 is needed"
if [ "$N" -ge 100000 ]; then T_S=2; T_MB=250; else T_S=1; T_MB=100; fi

if [ ! -x /usr/bin/time ]; then
    say "installing GNU time (apt-get install time)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null || die "could not install GNU time"
fi
if ! command -v hyperfine >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null 2>&1 || say "hyperfine unavailable: timing check with a loop"
fi

if [ -x "$ROOT/target/release/rollscript" ]; then
    SRC_BIN=$ROOT/target/release/rollscript; KIND=release
elif [ -x "$ROOT/target/debug/rollscript" ]; then
    SRC_BIN=$ROOT/target/debug/rollscript; KIND=debug
else
    die "no target/release/rollscript nor target/debug/rollscript: run \`cargo build\` first"
fi
if [ -e "$DIR" ] && [ ! -e "$DIR/.rollscript-plan-bench" ]; then
    die "$DIR exists and was not made by benches/plan_scale.sh"
fi
mkdir -p "$DIR"
touch "$DIR/.rollscript-plan-bench"
BIN=$DIR/rollscript
cp "$SRC_BIN" "$BIN"   # a concurrent rebuild cannot swap it mid-measurement
BIN_NOTE="${SRC_BIN#"$ROOT"/} ($KIND build$([ "$KIND" = debug ] && echo ", NOT release: no target/release/rollscript"), built $(date -r "$SRC_BIN" '+%F %T'), $("$BIN" --version))"

inventory() { # N LB_KIND FILE
    "$PY" - "$@" <<'EOF'
import sys
n, kind, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lb = ('kind = "haproxy"\nsocket = "/nonexistent/haproxy.sock"\nbackend = "bench"\n'
      if kind == "haproxy" else 'kind = "none"\n')
with open(path, "w") as f:
    f.write('''[app]
name = "bench"
deploy = "/srv/app/deploy.sh"
rollback = "/srv/app/rollback.sh"

[ssh]
user = "deploy"

[health]
path = "/health"
port = 8080
interval = "1s"
retries = 30
healthy_threshold = 2

[lb]
%sdrain_timeout = "120s"
min_in_service = "%s"
''' % (lb, "50%" if n > 1 else "0"))
    for i in range(n):
        # Every instance its own address (127.c.b.a, a in 1..254).
        f.write('\n[[instances]]\nname = "web-%d"\nhost = "127.%d.%d.%d"\n'
                % (i + 1, 1 + i // (254 * 256), (i // 254) % 256, 1 + i % 254))
EOF
}

# plan N LB_KIND BUDGET -> "status seconds max_rss_kb" (status ok|killed|failed)
# /usr/bin/time -v runs the plan; past the budget the plan is killed by PID
# (SIGKILL) and its peak RSS so far (VmHWM) is what is reported.
plan() {
    local n=$1 kind=$2 budget=$3 inv=$DIR/inv-$2-$1.toml rc secs rss tpid pid="" hwm=0 t0 v
    [ -f "$inv" ] || inventory "$n" "$kind" "$inv"
    t0=${EPOCHREALTIME/./}
    (cd "$ROOT" && exec /usr/bin/time -v -o "$DIR/time-$kind-$n.txt" \
        "$BIN" plan scripts/rolling.rhai -i "$inv" --var version=v2 \
        >"$DIR/plan-$kind-$n.out" 2>"$DIR/plan-$kind-$n.err") &
    tpid=$!
    local killed=0
    while kill -0 "$tpid" 2>/dev/null; do
        [ -n "$pid" ] || pid=$(cat "/proc/$tpid/task/$tpid/children" 2>/dev/null | awk '{ print $1 }')
        if [ -n "$pid" ]; then
            # plan() runs in a command substitution: its own EXIT trap stops
            # the plan by PID if this script is interrupted.
            trap 'kill -KILL '"$pid"' 2>/dev/null; true' EXIT
            v=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
            [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
        fi
        if [ $(( (${EPOCHREALTIME/./} - t0) / 1000000 )) -ge "$budget" ] && [ -n "$pid" ]; then
            kill -KILL "$pid" 2>/dev/null || true
            killed=1
            break
        fi
        sleep 0.1
    done
    set +e
    wait "$tpid"
    rc=$?
    set -e
    trap - EXIT
    secs=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$DIR/time-$kind-$n.txt")
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$DIR/time-$kind-$n.txt")
    [ "${rss:-0}" -ge "$hwm" ] || rss=$hwm
    if [ $killed = 1 ]; then echo "killed $secs $rss"
    elif [ $rc = 0 ]; then echo "ok $secs $rss"
    else echo "failed($rc) $secs $rss"
    fi
}

# The functions with the largest inclusive share of a perf profile.
profile_top() { # DATA LIMIT
    perf report -i "$1" --children --stdio -g none --percent-limit 2 2>/dev/null |
        awk '/^ +[0-9.]+%/ { c = $1; $1 = $2 = $3 = $4 = $5 = ""; sub(/^ +/, ""); print c "\t" $0 }' |
        grep -E 'rollscript::|rhai::(eval|func|parser|api)|reqwest::|rustls_native_certs::load|rustls_platform_verifier::.*new$' |
        grep -vE 'block_on|budget<|enter_runtime|BlockingTask|catch_unwind' |
        sed -E 's/ *\(inlined\)//; s/(::\{\{closure\}\})+$//' | awk -F'\t' '!seen[$2]++' |
        cut -c1-170 | head -n "$2"
}

report() {
    local cpu mem
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
    mem=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    echo "binary: $BIN_NOTE"
    echo "machine: nproc $(nproc), $cpu, $mem; load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    echo

    say "plan of $N instances (budget ${BUDGET}s), $REPEAT times"
    local st secs rss r all=() worst_rss=0 i
    for ((i = 0; i < REPEAT; i++)); do
        read -r st secs rss <<<"$(plan "$N" haproxy "$BUDGET")"
        [ "$st" = ok ] || break
        all+=("$secs")
        [ "$rss" -gt "$worst_rss" ] && worst_rss=$rss
    done
    if [ "$st" = ok ]; then
        read -r secs tmin tmax <<<"$(printf '%s\n' "${all[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)], a[1], a[NR] }')"
        rss=$worst_rss
    fi
    local lines
    lines=$(wc -l <"$DIR/plan-haproxy-$N.out")
    PLAN_OK=0
    if [ "$st" = ok ] && awk -v s="$secs" -v r="$rss" -v ts="$T_S" -v tm="$T_MB" 'BEGIN { exit !(s < ts && r < tm * 1024) }'; then PLAN_OK=1; fi
    echo "## plan of $N instances (scripts/rolling.rhai, lb.kind = haproxy)"
    echo
    echo "| what | result | target | verdict |"
    echo "|---|---|---|---|"
    if [ "$st" = ok ]; then
        echo "| wall time, median of $REPEAT (min, max) | ${secs} s (${tmin}, ${tmax}; $lines lines of plan) | < $T_S s | $(awk -v s="$secs" -v ts="$T_S" 'BEGIN { print (s < ts ? "met" : "MISSED") }') |"
        echo "| peak memory (largest max RSS of the $REPEAT) | $((rss / 1024)) MB | < $T_MB MB | $(awk -v r="$rss" -v tm="$T_MB" 'BEGIN { print (r < tm * 1024 ? "met" : "MISSED") }') |"
    else
        echo "| wall time | did not finish: $st after ${secs} s (budget ${BUDGET} s) | < $T_S s | MISSED |"
        echo "| peak memory (max RSS) | $((rss / 1024)) MB when stopped (VmHWM) | < $T_MB MB | unknown (not finished) |"
    fi
    echo

    if [ -n "$SERIES" ]; then
        echo "## growth with N (plan wall time; exponent k in t ~ N^k between consecutive sizes)"
        echo
        echo "| N | haproxy: time, max RSS | k | lb none: time, max RSS | k |"
        echo "|---|---|---|---|---|"
        local pn="" ph="" pz="" n a b
        for n in ${SERIES//,/ }; do
            say "series: plan of $n instances (haproxy, none)"
            read -r a sa ra <<<"$(plan "$n" haproxy "$BUDGET")"
            read -r b sb rb <<<"$(plan "$n" none "$BUDGET")"
            local ka="" kb=""
            if [ -n "$pn" ]; then
                ka=$(awk -v t1="$ph" -v t2="$sa" -v n1="$pn" -v n2="$n" 'BEGIN { if (t1 > 0 && t2 > 0) printf "%.1f", log(t2 / t1) / log(n2 / n1) }')
                kb=$(awk -v t1="$pz" -v t2="$sb" -v n1="$pn" -v n2="$n" 'BEGIN { if (t1 > 0 && t2 > 0) printf "%.1f", log(t2 / t1) / log(n2 / n1) }')
            fi
            echo "| $n | ${sa} s, $((ra / 1024)) MB$([ "$a" = ok ] || echo " ($a)") | ${ka:--} | ${sb} s, $((rb / 1024)) MB$([ "$b" = ok ] || echo " ($b)") | ${kb:--} |"
            pn=$n; ph=$sa; pz=$sb
        done
        echo
        echo "(the start-up alone, a plan of 1 instance: $(read -r _ s1 _ <<<"$(plan 1 haproxy "$BUDGET")"; echo "$s1") s)"
        echo
    fi

    say "check scripts/*.rhai"
    echo "## rollscript check scripts/*.rhai ($(cd "$ROOT" && ls scripts/*.rhai | wc -l) scripts)"
    echo
    CHECK_OK=0
    local med mn mx how
    if command -v hyperfine >/dev/null 2>&1; then
        (cd "$ROOT" && hyperfine -N --warmup 3 --runs 20 --export-json "$DIR/check.json" \
            "$BIN check $(echo scripts/*.rhai)" >"$DIR/check.hyperfine.txt" 2>&1) || die "hyperfine failed: $(tail -3 "$DIR/check.hyperfine.txt")"
        read -r med mn mx <<<"$("$PY" -c '
import json, statistics, sys
t = json.load(open(sys.argv[1]))["results"][0]["times"]
print("%.1f %.1f %.1f" % (1000 * statistics.median(t), 1000 * min(t), 1000 * max(t)))' "$DIR/check.json")"
        how="hyperfine -N --warmup 3 --runs 20"
    else
        local i t0 ts=()
        for ((i = 0; i < 20; i++)); do
            t0=$EPOCHREALTIME
            (cd "$ROOT" && "$BIN" check scripts/*.rhai >/dev/null)
            ts+=($(( ${EPOCHREALTIME/./} - ${t0/./} )))
        done
        read -r med mn mx <<<"$(printf '%s\n' "${ts[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f %.1f %.1f", a[int((NR + 1) / 2)] / 1000, a[1] / 1000, a[NR] / 1000 }')"
        how="a loop of 20 runs (no hyperfine)"
    fi
    awk -v m="$med" 'BEGIN { exit !(m < 50) }' && CHECK_OK=1
    echo "| what | median | min | max | target | verdict |"
    echo "|---|---|---|---|---|---|"
    echo "| check, all shipped scripts ($how) | $med ms | $mn ms | $mx ms | < 50 ms | $([ $CHECK_OK = 1 ] && echo met || echo MISSED) |"
    echo

    if [ "$PROFILE" = 1 ] && command -v perf >/dev/null 2>&1; then
        if [ $PLAN_OK = 0 ]; then
            say "profiling the plan of $PROFILE_N instances"
            local inv=$DIR/inv-haproxy-$PROFILE_N.toml
            [ -f "$inv" ] || inventory "$PROFILE_N" haproxy "$inv"
            (cd "$ROOT" && perf record -q -F 199 --call-graph dwarf,8192 -o "$DIR/perf-plan.data" -- \
                "$BIN" plan scripts/rolling.rhai -i "$inv" --var version=v2 >/dev/null 2>&1) || true
            echo "## profile: plan of $PROFILE_N instances (perf, inclusive % of samples, rollscript and engine frames)"
            echo
            echo '```'
            profile_top "$DIR/perf-plan.data" 30
            echo '```'
            echo
            local invn=$DIR/inv-none-$PROFILE_N.toml
            [ -f "$invn" ] || inventory "$PROFILE_N" none "$invn"
            (cd "$ROOT" && perf record -q -F 199 --call-graph dwarf,8192 -o "$DIR/perf-plan-none.data" -- \
                "$BIN" plan scripts/rolling.rhai -i "$invn" --var version=v2 >/dev/null 2>&1) || true
            echo "## profile: the same plan with lb.kind = \"none\" (no capacity guard)"
            echo
            echo '```'
            profile_top "$DIR/perf-plan-none.data" 30
            echo '```'
            echo
        fi
        if [ $CHECK_OK = 0 ]; then
            say "profiling check"
            (cd "$ROOT" && perf record -q -F 999 --call-graph dwarf,8192 -o "$DIR/perf-check.data" -- \
                "$BIN" check scripts/*.rhai >/dev/null 2>&1) || true
            echo "## profile: check scripts/*.rhai (perf, inclusive % of samples)"
            echo
            echo '```'
            profile_top "$DIR/perf-check.data" 30
            echo '```'
            echo
        fi
    fi
    echo "load average at end $(cut -d' ' -f1-3 /proc/loadavg); work files in $DIR"
}

report | tee ${OUT:+-a "$OUT"}
