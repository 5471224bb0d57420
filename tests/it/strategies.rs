//! Issue 5, end to end: every shipped strategy (`scripts/*.rhai`), run by the
//! rollscript binary against a real local fleet (demo/app.py instances over
//! their own sshd, HAProxy or nginx in front, PostgreSQL for the migration
//! lock) under continuous load through the load balancer — and not one
//! failed request. The load balancers may neither retry nor redispatch
//! (`retries 0`, `proxy_next_upstream off`), so a request that reached an
//! instance while it restarted would show.
//!
//! Each test asserts the real outcome: the load's failures (none, or only
//! the ones the scenario is about), the version each instance serves (asked
//! directly), the LB's state (`show stat`, the nginx upstream file), the exit
//! code and the script's own message.
//!
//! The fleets are heavy for a 2-core machine: the tests here run one at a
//! time (`one_at_a_time`), so timing-sensitive checks are not starved by
//! another fleet's deploy.

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::time::Duration;

use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::load::{Load, LoadReport};
use crate::harness::one_fleet_at_a_time;
use crate::harness::postgres::Postgres;
use crate::harness::run::{Finished, Running};

/// Requests per second through the LB.
const RATE: u32 = 50;
/// Upper bound for one test's load.
const MAX_LOAD: Duration = Duration::from_secs(240);
/// Load before the run starts and after it ends.
const LEAD: Duration = Duration::from_millis(800);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// One fleet at a time, shared with the other end-to-end fleet tests.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    one_fleet_at_a_time()
}

fn script(name: &str) -> String {
    format!("scripts/{name}.rhai")
}

/// `run SCRIPT -i INV --yes --var a=b …`
fn run_args(script_name: &str, inventory: &Path, vars: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        script(script_name),
        "-i".to_string(),
        inventory.display().to_string(),
        "--yes".to_string(),
    ];
    for v in vars {
        args.push("--var".into());
        args.push(v.to_string());
    }
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A run with the load going before, during and after it.
struct LoadedRun {
    run: Finished,
    load: LoadReport,
    /// When the run started and ended, on the load's clock.
    from: Duration,
    to: Duration,
}

fn run_under_load(fleet: &Fleet, inventory: &Path, script_name: &str, vars: &[&str]) -> LoadedRun {
    let load = Load::start(fleet.lb_addr(), RATE, MAX_LOAD);
    std::thread::sleep(LEAD);
    let from = load.elapsed();
    let run = Running::start(&strs(&run_args(script_name, inventory, vars))).wait(RUN_TIMEOUT);
    let to = load.elapsed();
    std::thread::sleep(LEAD);
    LoadedRun {
        run,
        load: load.stop(),
        from,
        to,
    }
}

/// Everything the assertion messages need.
fn context(fleet: &Fleet, run: &Finished, load: &LoadReport) -> String {
    let lb_log = fleet.lb_log();
    let lb_tail: Vec<&str> = lb_log.lines().rev().take(40).collect();
    format!(
        "{}\n--- load\n{}\n--- versions {:?}\n--- lb {:?}\n--- lb log (last lines, newest first)\n{}",
        run.dump(),
        load.summary(),
        fleet.versions(),
        fleet.lb_states(),
        lb_tail.join("\n")
    )
}

fn assert_zero_failed(fleet: &Fleet, r: &LoadedRun) {
    assert!(
        r.load.failures().is_empty(),
        "requests failed during the run:\n{}",
        context(fleet, &r.run, &r.load)
    );
    assert_load_covered(fleet, r);
}

/// The load really ran through the whole run (a stalled load generator
/// would make "zero failed" meaningless).
fn assert_load_covered(fleet: &Fleet, r: &LoadedRun) {
    let secs = (r.to - r.from).as_secs_f64();
    let during = r.load.sent_between(r.from, r.to);
    assert!(
        during as f64 >= secs * f64::from(RATE) * 0.6 && r.load.sent() >= 20,
        "only {during} requests were sent during the {secs:.1}s run ({} in all):\n{}",
        r.load.sent(),
        context(fleet, &r.run, &r.load)
    );
    let ok = r.load.ok();
    assert!(ok > 0, "nothing succeeded: {}", r.load.summary());
}

fn assert_exit(fleet: &Fleet, r: &LoadedRun, code: i32, message: &str) {
    assert_eq!(
        r.run.code,
        Some(code),
        "exit code\n{}",
        context(fleet, &r.run, &r.load)
    );
    assert!(
        r.run.stderr.contains(message),
        "stderr lacks {message:?}\n{}",
        context(fleet, &r.run, &r.load)
    );
}

fn assert_versions(fleet: &Fleet, r: &LoadedRun, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        fleet.versions(),
        want,
        "versions at the end\n{}",
        context(fleet, &r.run, &r.load)
    );
}

/// The LB's states once HAProxy has finished the checks under way: a
/// server put `ready` from maint shows `UP 1/2` (in rotation, one check of
/// slack) until its next check passes, 100 ms later.
fn settled_lb_states(fleet: &Fleet) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let states = fleet.lb_states();
        let transient = states.iter().any(|(_, s)| s.contains('/'));
        if !transient || std::time::Instant::now() >= deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_lb(fleet: &Fleet, r: &LoadedRun, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        settled_lb_states(fleet),
        want,
        "load balancer state at the end\n{}",
        context(fleet, &r.run, &r.load)
    );
}

/// (name, value) for every instance of the fleet.
fn all<'a>(fleet: &'a Fleet, value: &'a str) -> Vec<(&'a str, &'a str)> {
    fleet
        .instances
        .iter()
        .map(|i| (i.name.as_str(), value))
        .collect()
}

fn in_service(lb: LbKind) -> &'static str {
    match lb {
        LbKind::Haproxy => "UP",
        LbKind::Nginx => "up",
    }
}

// ---- rolling ----------------------------------------------------------------------------

fn rolling_deploys_every_instance(lb: LbKind) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::new(lb, 3).start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));

    let r = run_under_load(&fleet, &inv, "rolling", &["version=v2"]);

    assert_exit(
        &fleet,
        &r,
        0,
        "rolling deploy done: all 3 instances updated",
    );
    assert_zero_failed(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v2"));
    assert_lb(&fleet, &r, &all(&fleet, in_service(lb)));
    let seen = r.load.versions_between(r.from, r.to);
    assert!(
        seen.contains_key("v1") && seen.contains_key("v2"),
        "both releases served side by side during the rollout: {seen:?}"
    );
    assert_eq!(
        r.load
            .versions_between(r.to, Duration::MAX)
            .keys()
            .collect::<Vec<_>>(),
        ["v2"],
        "only v2 after the run"
    );
}

#[test]
fn rolling_on_haproxy_updates_all_instances_under_load_with_zero_failed_requests() {
    rolling_deploys_every_instance(LbKind::Haproxy);
}

#[test]
fn rolling_on_nginx_updates_all_instances_under_load_with_zero_failed_requests() {
    rolling_deploys_every_instance(LbKind::Nginx);
}

// ---- canary -----------------------------------------------------------------------------

fn canary_promotes_after_the_bake(lb: LbKind) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::new(lb, 3).start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));

    let r = run_under_load(
        &fleet,
        &inv,
        "canary",
        &[
            "version=v2",
            "stages=1,100%",
            "bake=2s",
            "gate_interval=500ms",
        ],
    );

    assert_exit(
        &fleet,
        &r,
        0,
        "canary done: all 3 instances on the new release",
    );
    assert_zero_failed(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v2"));
    assert_lb(&fleet, &r, &all(&fleet, in_service(lb)));
    assert!(
        r.run.took >= Duration::from_secs(2),
        "the 2s bake was waited: {:?}",
        r.run.took
    );
    let seen = r.load.versions_between(r.from, r.to);
    assert!(
        seen.get("v2").copied().unwrap_or(0) > 0 && seen.get("v1").copied().unwrap_or(0) > 0,
        "the canary served v2 beside v1 during the bake: {seen:?}"
    );
}

#[test]
fn canary_on_haproxy_bakes_then_promotes_with_zero_failed_requests() {
    canary_promotes_after_the_bake(LbKind::Haproxy);
}

#[test]
fn canary_on_nginx_bakes_then_promotes_with_zero_failed_requests() {
    canary_promotes_after_the_bake(LbKind::Nginx);
}

/// Canary by LB weight: web-1 takes 10 % of the traffic for the bake (not
/// the third equal weights would give), then the weights go back as they
/// were and the rest is deployed.
fn canary_by_weight_bakes_at_its_share_then_promotes(lb: LbKind) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::new(lb, 3).start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let configured = fleet.weights();

    let load = Load::start(fleet.lb_addr(), RATE, MAX_LOAD);
    std::thread::sleep(LEAD);
    let from = load.elapsed();
    let args = run_args(
        "canary",
        &inv,
        &[
            "version=v2",
            "stage_by=weight",
            "stages=10%,100%",
            "bake=5s",
            "gate_interval=500ms",
        ],
    );
    let mut running = Running::start(&strs(&args));
    // Watch the LB while it runs: when web-1 served with a weight of its own.
    let mut shifted: Vec<(Duration, Vec<(String, u32)>)> = Vec::new();
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    while !running.done() && std::time::Instant::now() < deadline {
        let weights = fleet.weights();
        let serving = fleet.lb_states()[0].1 == in_service(lb);
        if serving && weights[0].1 != weights[1].1 {
            shifted.push((load.elapsed(), weights));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait(RUN_TIMEOUT);
    let to = load.elapsed();
    std::thread::sleep(LEAD);
    let r = LoadedRun {
        run,
        load: load.stop(),
        from,
        to,
    };

    assert_exit(
        &fleet,
        &r,
        0,
        "canary done: all 3 instances on the new release",
    );
    assert_zero_failed(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v2"));
    assert_lb(&fleet, &r, &all(&fleet, in_service(lb)));
    assert_eq!(
        fleet.weights(),
        configured,
        "the weights are back as configured\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert!(
        r.run
            .stderr
            .contains("1 canary instance(s) take 10.0% of the traffic"),
        "the stage names the share its weights give\n{}",
        r.run.dump()
    );

    // The weights the LB had: web-1 one, web-2 and web-3 another, giving 10 %.
    let (first, last) = match (shifted.first(), shifted.last()) {
        (Some(f), Some(l)) if l.0 - f.0 >= Duration::from_secs(3) => (f, l),
        _ => panic!(
            "web-1 served with shifted weights for less than 3s of the 5s bake: {shifted:?}\n{}",
            context(&fleet, &r.run, &r.load)
        ),
    };
    let w = &first.1;
    assert_eq!(w[1].1, w[2].1, "web-2 and web-3 weigh the same: {w:?}");
    let share = f64::from(w[0].1) / f64::from(w[0].1 + w[1].1 + w[2].1);
    assert!((share - 0.10).abs() < 0.005, "weights {w:?} give {share}");

    // And the traffic followed: v2 (web-1 alone) answered about 10 % of the
    // requests in that window, where equal weights would give a third.
    let seen = r.load.versions_between(first.0, last.0);
    let v2 = seen.get("v2").copied().unwrap_or(0) as f64;
    let total: usize = seen.values().sum();
    let got = v2 / total as f64;
    assert!(
        total >= 100 && (0.03..=0.2).contains(&got),
        "web-1 answered {v2} of {total} requests ({:.1}%) while weighted for 10%: {seen:?}\n{}",
        got * 100.0,
        context(&fleet, &r.run, &r.load)
    );
}

#[test]
fn canary_by_weight_on_haproxy_sends_the_canary_its_share_with_zero_failed_requests() {
    canary_by_weight_bakes_at_its_share_then_promotes(LbKind::Haproxy);
}

#[test]
fn canary_by_weight_on_nginx_sends_the_canary_its_share_with_zero_failed_requests() {
    canary_by_weight_bakes_at_its_share_then_promotes(LbKind::Nginx);
}

// ---- blue/green -------------------------------------------------------------------------

fn blue_green_switches_and_switches_back(lb: LbKind) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::blue_green(lb, 2, 2).start();
    // One passing check of rollscript's own: HAProxy's (rise 2) lags behind,
    // so the switch must wait for the LB, not for rollscript's health check.
    let inv = fleet
        .inventory()
        .set("health", "healthy_threshold", "1")
        .write(&fleet.path("rollscript.toml"));
    let (live, idle) = match lb {
        LbKind::Haproxy => ("UP", "MAINT"),
        LbKind::Nginx => ("up", "down"),
    };
    let kept = match lb {
        LbKind::Haproxy => "DRAIN",
        LbKind::Nginx => "down",
    };
    assert_eq!(
        fleet
            .lb_states()
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>(),
        [live, live, idle, idle],
        "green is idle at the start"
    );

    let load = Load::start(fleet.lb_addr(), RATE, MAX_LOAD);
    std::thread::sleep(LEAD);
    let from = load.elapsed();
    let deploy =
        Running::start(&strs(&run_args("blue_green", &inv, &["version=v2"]))).wait(RUN_TIMEOUT);
    let switched = load.elapsed();
    let pids: Vec<Option<u32>> = fleet.names().iter().map(|n| fleet.app_pid(n)).collect();
    let versions_after_deploy = fleet.versions();
    let lb_after_deploy = settled_lb_states(&fleet);
    std::thread::sleep(Duration::from_secs(1));
    let back_from = load.elapsed();
    let back = Running::start(&strs(&run_args("blue_green", &inv, &["switch_back=true"])))
        .wait(RUN_TIMEOUT);
    let back_to = load.elapsed();
    std::thread::sleep(LEAD);
    let report = load.stop();

    // The deploy: green got v2 and all the traffic; blue still runs v1.
    let r = LoadedRun {
        run: deploy,
        load: report,
        from,
        to: switched,
    };
    assert_exit(
        &fleet,
        &r,
        0,
        "traffic on green; blue kept running (switch back: --var switch_back=true)",
    );
    let expect_versions: Vec<(String, String)> = [
        ("web-1", "v1"),
        ("web-2", "v1"),
        ("web-3", "v2"),
        ("web-4", "v2"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        versions_after_deploy,
        expect_versions,
        "after the deploy\n{}",
        context(&fleet, &r.run, &r.load)
    );
    let expect_lb: Vec<(String, String)> = [
        ("web-1", kept),
        ("web-2", kept),
        ("web-3", live),
        ("web-4", live),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        lb_after_deploy,
        expect_lb,
        "LB after the deploy\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert_eq!(
        r.load
            .versions_between(switched, back_from)
            .keys()
            .collect::<Vec<_>>(),
        ["v2"],
        "between the runs all traffic reached green v2\n{}",
        r.load.summary()
    );
    assert_eq!(
        r.load
            .versions_between(Duration::ZERO, from)
            .keys()
            .collect::<Vec<_>>(),
        ["v1"],
        "before the deploy all traffic reached blue v1"
    );

    // The switch back: no deploy (same app processes), blue serves again.
    let b = LoadedRun {
        run: back,
        load: r.load,
        from: back_from,
        to: back_to,
    };
    assert_exit(&fleet, &b, 0, "traffic on blue");
    assert!(
        b.run.stderr.contains("(pool blue)"),
        "the one switch step sends traffic to pool blue\n{}",
        b.run.dump()
    );
    assert!(
        !b.run.stderr.contains("deploy.sh"),
        "switch_back deploys nothing\n{}",
        b.run.dump()
    );
    let pids_now: Vec<Option<u32>> = fleet.names().iter().map(|n| fleet.app_pid(n)).collect();
    assert_eq!(pids_now, pids, "no app was restarted by the switch back");
    assert_versions(
        &fleet,
        &b,
        &[
            ("web-1", "v1"),
            ("web-2", "v1"),
            ("web-3", "v2"),
            ("web-4", "v2"),
        ],
    );
    assert_lb(
        &fleet,
        &b,
        &[
            ("web-1", live),
            ("web-2", live),
            ("web-3", kept),
            ("web-4", kept),
        ],
    );
    assert_eq!(
        b.load
            .versions_between(back_to, Duration::MAX)
            .keys()
            .collect::<Vec<_>>(),
        ["v1"],
        "after the switch back all traffic reached blue v1\n{}",
        b.load.summary()
    );

    // Not one request failed over both runs.
    let whole = LoadedRun {
        run: b.run,
        load: b.load,
        from,
        to: back_to,
    };
    assert_zero_failed(&fleet, &whole);
}

#[test]
fn blue_green_on_haproxy_switches_to_green_and_back_with_zero_failed_requests() {
    blue_green_switches_and_switches_back(LbKind::Haproxy);
}

#[test]
fn blue_green_on_nginx_switches_to_green_and_back_with_zero_failed_requests() {
    blue_green_switches_and_switches_back(LbKind::Nginx);
}

/// The next release goes to the other pool: v2 to green, then v3 to blue
/// (idle since the first switch), all under one load.
fn blue_green_alternates_pools(lb: LbKind) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::blue_green(lb, 2, 2).start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let load = Load::start(fleet.lb_addr(), RATE, MAX_LOAD);
    std::thread::sleep(LEAD);
    let from = load.elapsed();
    let first =
        Running::start(&strs(&run_args("blue_green", &inv, &["version=v2"]))).wait(RUN_TIMEOUT);
    let first_code = first.code;
    let first_dump = first.dump();
    let second =
        Running::start(&strs(&run_args("blue_green", &inv, &["version=v3"]))).wait(RUN_TIMEOUT);
    let to = load.elapsed();
    std::thread::sleep(LEAD);
    let r = LoadedRun {
        run: second,
        load: load.stop(),
        from,
        to,
    };
    assert_eq!(first_code, Some(0), "{first_dump}");
    assert_exit(
        &fleet,
        &r,
        0,
        "traffic on blue; green kept running (switch back: --var switch_back=true)",
    );
    assert_zero_failed(&fleet, &r);
    assert_versions(
        &fleet,
        &r,
        &[
            ("web-1", "v3"),
            ("web-2", "v3"),
            ("web-3", "v2"),
            ("web-4", "v2"),
        ],
    );
    let (live, kept) = match lb {
        LbKind::Haproxy => ("UP", "DRAIN"),
        LbKind::Nginx => ("up", "down"),
    };
    assert_lb(
        &fleet,
        &r,
        &[
            ("web-1", live),
            ("web-2", live),
            ("web-3", kept),
            ("web-4", kept),
        ],
    );
    assert_eq!(
        r.load
            .versions_between(to, Duration::MAX)
            .keys()
            .collect::<Vec<_>>(),
        ["v3"],
        "after the second deploy all traffic reached blue v3"
    );
}

#[test]
fn blue_green_on_haproxy_deploys_the_next_release_to_the_other_pool() {
    blue_green_alternates_pools(LbKind::Haproxy);
}

#[test]
fn blue_green_on_nginx_deploys_the_next_release_to_the_other_pool() {
    blue_green_alternates_pools(LbKind::Nginx);
}

/// Both pools serving at the start (nobody idled green): there is no idle
/// pool to deploy, so blue/green must refuse — not restart a pool that is
/// taking traffic.
#[test]
fn blue_green_with_both_pools_serving_refuses_and_restarts_nothing() {
    let _one = one_at_a_time();
    let fleet = FleetSpec {
        idle_pool: None,
        ..FleetSpec::blue_green(LbKind::Haproxy, 2, 2)
    }
    .start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let pids: Vec<Option<u32>> = fleet.names().iter().map(|n| fleet.app_pid(n)).collect();

    let r = run_under_load(&fleet, &inv, "blue_green", &["version=v2"]);

    assert_exit(
        &fleet,
        &r,
        1,
        "blue/green needs exactly one pool in service, found 2",
    );
    assert_zero_failed(&fleet, &r);
    let pids_now: Vec<Option<u32>> = fleet.names().iter().map(|n| fleet.app_pid(n)).collect();
    assert_eq!(pids_now, pids, "no app was restarted\n{}", r.run.dump());
    assert_versions(&fleet, &r, &all(&fleet, "v1"));
    assert_lb(&fleet, &r, &all(&fleet, "UP"));
}

// ---- migration --------------------------------------------------------------------------

/// `bin/migrate.sh LABEL [HOLD_FILE]`: appends "LABEL <every instance's
/// VERSION>" to `<fleet>/migrations.log`, then waits for HOLD_FILE (at most
/// 30 s) or sleeps a second.
const MIGRATE_SH: &str = r#"#!/bin/sh
# Test migration: records that it ran, and on which releases the fleet was.
set -eu
fleet=$(cd "$(dirname "$0")/.." && pwd)
label=$1
hold=${2:-}
echo "$label $(cat "$fleet"/web-*/VERSION | tr '\n' ' ' | sed 's/ $//')" >>"$fleet/migrations.log"
if [ -n "$hold" ]; then
    i=0
    while [ ! -e "$hold" ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
else
    sleep 1
fi
"#;

fn install_migrate(fleet: &Fleet) -> PathBuf {
    let p = fleet.bin("migrate.sh");
    std::fs::write(&p, MIGRATE_SH).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn migrations(fleet: &Fleet) -> Vec<String> {
    std::fs::read_to_string(fleet.path("migrations.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn migration_on_haproxy_migrates_exactly_once_between_the_phases_with_zero_failed_requests() {
    let _one = one_at_a_time();
    let pg = Postgres::start();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let migrate = install_migrate(&fleet);
    let inv = fleet
        .inventory()
        .migrate(&format!("{} migrate", migrate.display()))
        .database(&pg.url())
        .write(&fleet.path("rollscript.toml"));

    let r = run_under_load(
        &fleet,
        &inv,
        "migration",
        &["compatible_ref=v1.5", "version=v2"],
    );

    assert_exit(
        &fleet,
        &r,
        0,
        "migration deploy done: v2 on all 3 instances",
    );
    assert!(
        r.run
            .stderr
            .contains(&format!("postgres {}: pg_try_advisory_lock(", pg.url())),
        "the migration ran under the database's advisory lock\n{}",
        r.run.dump()
    );
    assert_eq!(
        migrations(&fleet),
        ["migrate v1.5 v1.5 v1.5"],
        "exactly one migration, after phase 1 put v1.5 everywhere and before phase 2\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert_zero_failed(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v2"));
    assert_lb(&fleet, &r, &all(&fleet, "UP"));
    let seen = r.load.versions_between(r.from, r.to);
    for v in ["v1", "v1.5", "v2"] {
        assert!(seen.contains_key(v), "{v} served during the run: {seen:?}");
    }
}

// ---- failures ---------------------------------------------------------------------------

#[test]
fn rolling_that_fails_on_the_second_instance_stops_and_rolls_back_with_zero_failed_requests() {
    rolling_fails_on_web_2_and_rolls_back(1);
}

/// The same with the capacity guard at "all but one" (the demo's own
/// setting): the full rollback must still fit under it.
#[test]
fn rolling_that_fails_rolls_back_within_min_in_service_of_all_but_one() {
    rolling_fails_on_web_2_and_rolls_back(2);
}

/// A rolling deploy of 3 whose deploy fails on web-2: the rollout stops,
/// web-1 (updated) and web-2 (failed) are rolled back, web-3 is untouched.
fn rolling_fails_on_web_2_and_rolls_back(min_in_service: usize) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    // web-2 gets "bad-v2", a release demo/app.py never reports healthy.
    let wrapper = fleet.bin("deploy-fails-on-web-2.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/usr/bin/env bash\n\
             # Test app.deploy: on web-2 (the ssh connection's server address) deploys\n\
             # bad-<version>, which never turns healthy; the version asked for elsewhere.\n\
             set -euo pipefail\n\
             addr=$(set -- ${{SSH_CONNECTION:-}}; echo \"${{3:-}}\")\n\
             if [ \"$addr\" = \"{}\" ]; then set -- \"bad-$1\"; fi\n\
             exec \"$(dirname \"$0\")/deploy.sh\" \"$@\"\n",
            fleet.instance("web-2").ip
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let web3_pid = fleet.app_pid("web-3");
    let inv = fleet
        .inventory()
        .deploy(&wrapper.display().to_string())
        .min_in_service(min_in_service)
        .write(&fleet.path("rollscript.toml"));

    let r = run_under_load(&fleet, &inv, "rolling", &["version=v2"]);

    assert_exit(
        &fleet,
        &r,
        1,
        r#"error[script]: rollout stopped: failed on ["web-2"]; 1 updated instance(s) rolled back"#,
    );
    assert_zero_failed(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v1"));
    assert_lb(&fleet, &r, &all(&fleet, "UP"));
    assert_eq!(
        fleet.app_pid("web-3"),
        web3_pid,
        "web-3, after the failure, was never touched\n{}",
        r.run.dump()
    );
    assert!(
        r.load.versions_between(r.from, r.to).contains_key("v2"),
        "web-1 served v2 before it was rolled back: {}",
        r.load.summary()
    );
    // The summary says what each instance runs now.
    let row = |name: &str| {
        r.run
            .stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no summary row for {name}\n{}", r.run.dump()))
            .to_string()
    };
    assert!(row("web-1").ends_with("  rolled back"), "{}", row("web-1"));
    assert!(
        row("web-2").contains("restored (rolled back, healthy"),
        "{}",
        row("web-2")
    );
    assert!(row("web-3").ends_with("  untouched"), "{}", row("web-3"));
}

/// An `APP` for the fleet: a release named `broken-*` passes `/health` but
/// answers 500 to everything else; any other release runs demo/app.py.
const BROKEN_APP: &str = r#"#!/usr/bin/env python3
"""Test variant of the demo app: broken-* releases are healthy on /health and answer 500 elsewhere."""
import argparse, os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--dir", default=".")
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--boot-delay", type=float, default=0.5)
a, _ = p.parse_known_args()
with open(os.path.join(a.dir, "VERSION")) as f:
    version = f.read().strip()
if not version.startswith("broken"):
    os.execv(sys.executable, [sys.executable, "REAL_APP"] + sys.argv[1:])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?")[0] == "/health":
            status, body = 200, b"ok\n"
        else:
            status, body = 500, ("version=%s broken\n" % version).encode()
        head = "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
            status, self.responses[status][0], len(body))
        try:
            self.wfile.write(head.encode() + body)
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True


srv = Server((a.host, a.port), Handler)
pid_file = os.path.join(a.dir, "app.pid")
with open(pid_file + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.replace(pid_file + ".tmp", pid_file)


def stop(*_):
    threading.Thread(target=srv.shutdown, daemon=True).start()


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
srv.serve_forever(poll_interval=0.1)
srv.server_close()
try:
    with open(pid_file) as f:
        if f.read().strip() == str(os.getpid()):
            os.unlink(pid_file)
except FileNotFoundError:
    pass
"#;

/// A canary of `broken-v2` (healthy on /health, 500 on everything else)
/// under load on HAProxy, with a 10 s bake its gate should cut short.
/// Returns the fleet, the run and the gate's numbers `[E, N]` from
/// "web-1: E of N requests answered 5xx during the bake".
fn broken_canary() -> (Fleet, LoadedRun, Vec<f64>) {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3)
        .app_variant(BROKEN_APP)
        .start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let r = run_under_load(
        &fleet,
        &inv,
        "canary",
        &[
            "version=broken-v2",
            "stages=1,100%",
            "bake=10s",
            "gate_interval=500ms",
        ],
    );
    assert_exit(
        &fleet,
        &r,
        1,
        "error[gate_failed]: canary aborted: stage 1 gate: web-1: ",
    );
    let line = r
        .run
        .stderr
        .lines()
        .find(|l| l.contains("requests answered 5xx during the bake"))
        .unwrap_or_else(|| panic!("no gate numbers in stderr\n{}", r.run.dump()))
        .to_string();
    let numbers: Vec<f64> = line
        .split("web-1: ")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    assert_eq!(numbers.len(), 2, "gate numbers in {line:?}");
    (fleet, r, numbers)
}

#[test]
fn canary_answering_500_fails_its_gate_on_haproxys_5xx_count_and_is_rolled_back() {
    let _one = one_at_a_time();
    let (fleet, r, numbers) = broken_canary();

    let error = r
        .run
        .stderr
        .lines()
        .find(|l| l.starts_with("error[gate_failed]: "))
        .unwrap_or_default();
    assert!(
        error.contains("requests answered 5xx during the bake (")
            && error.ends_with("; 1 instance(s) rolled back"),
        "the error names the gate's numbers and the rollback: {error:?}\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert!(
        numbers[0] >= 1.0 && numbers[0] <= numbers[1],
        "the gate names the 5xx it saw among the responses it counted: {numbers:?}\n{}",
        r.run.dump()
    );
    assert!(
        r.run.took < Duration::from_secs(10),
        "the gate stopped the 10s bake early: {:?}",
        r.run.took
    );

    // The only failed requests are the canary's own 500s, each counted by
    // HAProxy (whose counter failed the gate); nothing else failed: no
    // connection error, no 502/503 from a restart or the rollback.
    let hap = fleet.haproxy();
    let canary_5xx = hap.counter("web-1", "hrsp_5xx");
    let failures = r.load.failures();
    assert!(
        failures.iter().all(|s| s
            .outcome
            .as_ref()
            .unwrap_err()
            .starts_with("http 500: version=broken-v2 broken")),
        "only the canary's own 500s failed:\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert_eq!(
        failures.len() as u64,
        canary_5xx,
        "every failed request is one HAProxy counted as web-1's 5xx\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert!(
        numbers[0] as u64 <= canary_5xx,
        "the gate saw {} of them",
        numbers[0]
    );
    assert_eq!(
        (
            hap.counter("web-2", "hrsp_5xx"),
            hap.counter("web-3", "hrsp_5xx")
        ),
        (0, 0)
    );
    assert_load_covered(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v1"));
    assert_lb(&fleet, &r, &all(&fleet, "UP"));
    assert!(
        r.load.failures().iter().all(|s| s.at < r.to),
        "no 500 after the run: the canary was rolled back\n{}",
        r.load.summary()
    );
}

#[test]
fn canary_by_weight_answering_500_fails_its_gate_and_the_weights_go_back() {
    let _one = one_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3)
        .app_variant(BROKEN_APP)
        .start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let configured = fleet.weights();
    let r = run_under_load(
        &fleet,
        &inv,
        "canary",
        &[
            "version=broken-v2",
            "stage_by=weight",
            "stages=25%,100%",
            "bake=10s",
            "gate_interval=500ms",
        ],
    );
    assert_exit(
        &fleet,
        &r,
        1,
        "error[gate_failed]: canary aborted: stage 1 gate: web-1: ",
    );
    assert!(
        r.run.took < Duration::from_secs(10),
        "the gate stopped the 10s bake early: {:?}",
        r.run.took
    );
    assert_eq!(
        fleet.weights(),
        configured,
        "the weights are back as configured\n{}",
        context(&fleet, &r.run, &r.load)
    );
    // Only the canary's own 500s failed, and none after the run.
    assert!(
        r.load.failures().iter().all(|s| s
            .outcome
            .as_ref()
            .unwrap_err()
            .starts_with("http 500: version=broken-v2 broken")
            && s.at < r.to),
        "only the canary's own 500s failed, during the run:\n{}",
        context(&fleet, &r.run, &r.load)
    );
    assert_load_covered(&fleet, &r);
    assert_versions(&fleet, &r, &all(&fleet, "v1"));
    assert_lb(&fleet, &r, &all(&fleet, "UP"));
}

#[test]
fn two_concurrent_migrations_on_one_database_one_migrates_the_other_is_locked() {
    let _one = one_at_a_time();
    let pg = Postgres::start();
    let fleet = FleetSpec::new(LbKind::Haproxy, 4).start();
    let migrate = install_migrate(&fleet);
    let hold = fleet.path("release-migration");
    // Two inventories, two halves of the fleet, one database; each in its
    // own folder (the deploy lock and journal live beside the inventory).
    let inventory = |label: &str, names: &[&str]| {
        fleet
            .inventory()
            .only(names)
            .min_in_service(1)
            .migrate(&format!("{} {label} {}", migrate.display(), hold.display()))
            .database(&pg.url())
            .write(&fleet.path(&format!("{label}/rollscript.toml")))
    };
    let inv_a = inventory("a", &["web-1", "web-2"]);
    let inv_b = inventory("b", &["web-3", "web-4"]);
    let vars = ["compatible_ref=v1.5", "version=v2"];

    let load = Load::start(fleet.lb_addr(), RATE, MAX_LOAD);
    std::thread::sleep(LEAD);
    let from = load.elapsed();
    let mut a = Running::start(&strs(&run_args("migration", &inv_a, &vars)));
    let mut b = Running::start(&strs(&run_args("migration", &inv_b, &vars)));
    // Whichever run reaches the migration first holds the lock (its
    // migration waits for `hold`) until the other one has finished.
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    while migrations(&fleet).is_empty() {
        assert!(
            std::time::Instant::now() < deadline && !(a.done() && b.done()),
            "no migration started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let winner_label = migrations(&fleet)[0]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (winner, loser) = if winner_label == "a" { (a, b) } else { (b, a) };
    let lost = loser.wait(RUN_TIMEOUT);
    std::fs::write(&hold, "").unwrap();
    let won = winner.wait(RUN_TIMEOUT);
    let to = load.elapsed();
    std::thread::sleep(LEAD);
    let report = load.stop();

    let (win_names, lose_names) = if winner_label == "a" {
        (["web-1", "web-2"], ["web-3", "web-4"])
    } else {
        (["web-3", "web-4"], ["web-1", "web-2"])
    };
    let r = LoadedRun {
        run: lost,
        load: report,
        from,
        to,
    };
    // Kind `locked`, naming the lock and the database.
    assert_exit(
        &fleet,
        &r,
        1,
        &format!(
            "error[locked]: another session holds the migration lock {} on {}: a migration is already running",
            0x726f6c6c,
            pg.url()
        ),
    );
    let r = LoadedRun { run: won, ..r };
    assert_exit(
        &fleet,
        &r,
        0,
        "migration deploy done: v2 on all 2 instances",
    );
    assert_eq!(
        migrations(&fleet).len(),
        1,
        "exactly one migration ran: {:?}",
        migrations(&fleet)
    );
    let mut want: Vec<(&str, &str)> = win_names.iter().map(|n| (*n, "v2")).collect();
    want.extend(lose_names.iter().map(|n| (*n, "v1.5")));
    want.sort();
    assert_versions(&fleet, &r, &want);
    assert_lb(&fleet, &r, &all(&fleet, "UP"));
    assert_zero_failed(&fleet, &r);
}

// ---- the control experiment -------------------------------------------------------------

/// What the zero-failure assertions above are worth: under the same load,
/// restarting the instances by hand with deploy.sh (no drain, no health
/// gate, no LB step) costs requests — the LB neither retries nor hides it.
fn a_careless_restart_is_seen_by_the_load(lb: LbKind) {
    let _one = one_at_a_time();
    let fleet = FleetSpec::new(lb, 3).start();
    let load = Load::start(fleet.lb_addr(), RATE, MAX_LOAD);
    std::thread::sleep(LEAD);
    // Every instance, one after the other, as a hand-written loop would.
    for inst in &fleet.instances {
        let out = std::process::Command::new(fleet.bin("deploy.sh"))
            .arg("v2")
            .env("DEMO_INSTANCE_DIR", &inst.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    let reasons = report.reasons();
    assert!(
        !report.failures().is_empty(),
        "a restart without drain went unnoticed: {}",
        report.summary()
    );
    assert!(
        reasons
            .keys()
            .all(|r| ["http 502", "http 503"].contains(&r.as_str())),
        "the failures are the LB's 502/503 for a restarting instance: {}",
        report.summary()
    );
}

#[test]
fn control_a_careless_restart_behind_haproxy_fails_requests() {
    a_careless_restart_is_seen_by_the_load(LbKind::Haproxy);
}

#[test]
fn control_a_careless_restart_behind_nginx_fails_requests() {
    a_careless_restart_is_seen_by_the_load(LbKind::Nginx);
}
