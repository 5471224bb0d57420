//! Issue 12, on the real components: the safety promises at the edges of a
//! rollout. A 3-instance fleet (demo/app.py over its own sshd, HAProxy or
//! nginx in front, `harness::fleet`), the built binary, and an LB sampler
//! (`harness::sampler`) reading the load balancer every 10 ms for the whole
//! run, so "never fewer than N in service" is checked at every instant, not
//! only at the end.
//!
//! 1. The capacity guard holds under parallel batches (and waits, visibly).
//! 2. Hosts an operator took out of rotation are left as found.
//! 3. A failed rollback does not leave a healthy host out.
//! 4. A failure after `register` is compensated.
//! 5. An LB call whose outcome is unknown is treated as "maybe out".
//! 6. The inventory is checked against the LB and the machine before the
//!    first side effect: exit 2, and nothing changed.
//!
//! Load runs through the LB without retries (`retries 0`, no redispatch;
//! `proxy_next_upstream off`), one request per connection, and every load
//! test requires zero failed requests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::fleet::{Fleet, FleetInventory, FleetSpec, LbKind};
use crate::harness::journal::{journals_beside, only_journal, Journal};
use crate::harness::load::{Load, LoadReport};
use crate::harness::run::{Finished, Running};
use crate::harness::sampler::LbTimeline;
use crate::harness::sshd::toml_str;
use crate::harness::{one_fleet_at_a_time, repo};

/// Requests per second through the LB.
const RATE: u32 = 50;
const MAX_LOAD: Duration = Duration::from_secs(240);
/// Load before the run starts and after it ends.
const LEAD: Duration = Duration::from_millis(500);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

// ---- running and reporting ------------------------------------------------------------

/// A finished run with what the LB sampler (and the load, if any) saw.
struct Sampled {
    run: Finished,
    lb: LbTimeline,
    load: Option<LoadReport>,
    inventory: PathBuf,
}

impl Sampled {
    fn code(&self) -> Option<i32> {
        self.run.code
    }

    /// The records of the run's only journal.
    fn journal(&self) -> Journal {
        only_journal(&self.inventory)
    }

    /// The outcome column of `name`'s row in the summary.
    fn summary_row(&self, name: &str) -> String {
        let summary = self
            .run
            .stderr
            .rsplit_once("\nSummary\n")
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no summary on stderr\n{}", self.run.dump()));
        summary
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no summary row for {name}\n{}", self.run.dump()))
            .to_string()
    }
}

/// `rollscript ARGS…` with the sampler (and, if `load`, steady traffic
/// through the LB) running from before the start to after the end.
fn sampled(fleet: &Fleet, inventory: &Path, args: &[&str], load: bool) -> Sampled {
    let sampler = fleet.sampler();
    let traffic = load.then(|| Load::start(fleet.lb_addr(), RATE, MAX_LOAD));
    if load {
        std::thread::sleep(LEAD);
    }
    let run = Running::start(args).wait(RUN_TIMEOUT);
    if load {
        std::thread::sleep(LEAD);
    }
    Sampled {
        run,
        load: traffic.map(Load::stop),
        lb: sampler.stop(),
        inventory: inventory.to_path_buf(),
    }
}

/// `run scripts/rolling.rhai -i INV --yes` + `extra`, sampled.
fn rolling(fleet: &Fleet, inventory: &Path, extra: &[&str], load: bool) -> Sampled {
    let inv = inventory.display().to_string();
    let mut args = vec!["run", "scripts/rolling.rhai", "-i", &inv, "--yes"];
    args.extend_from_slice(extra);
    sampled(fleet, inventory, &args, load)
}

/// Everything an assertion message needs.
fn context(fleet: &Fleet, r: &Sampled) -> String {
    let lb_log = fleet.lb_log();
    let tail: Vec<&str> = lb_log.lines().rev().take(30).collect();
    format!(
        "{}\n--- lb sampler\n{}--- load\n{}\n--- versions now {:?}\n--- lb now {:?}\n--- lb log (newest first)\n{}",
        r.run.dump(),
        r.lb.render(),
        r.load
            .as_ref()
            .map(LoadReport::summary)
            .unwrap_or_else(|| "(no load)".into()),
        fleet.versions(),
        fleet.lb_states(),
        tail.join("\n")
    )
}

fn assert_exit(fleet: &Fleet, r: &Sampled, code: i32) {
    assert_eq!(r.code(), Some(code), "exit code\n{}", context(fleet, r));
}

fn assert_stderr_has(fleet: &Fleet, r: &Sampled, text: &str) {
    assert!(
        r.run.stderr.contains(text),
        "stderr lacks {text:?}\n{}",
        context(fleet, r)
    );
}

/// No request failed, and the load really ran.
fn assert_zero_failed(fleet: &Fleet, r: &Sampled) {
    let load = r.load.as_ref().expect("a run under load");
    assert!(
        load.failures().is_empty(),
        "requests failed during the run\n{}",
        context(fleet, r)
    );
    assert!(
        load.ok() >= 20,
        "the load barely ran: {}\n{}",
        load.summary(),
        context(fleet, r)
    );
}

/// At every sample the LB had at least `min` servers in service.
fn assert_never_below(fleet: &Fleet, r: &Sampled, min: usize) {
    assert!(
        r.lb.count() >= 10 && r.lb.failed_reads() == 0,
        "the sampler did not watch the run\n{}",
        context(fleet, r)
    );
    assert!(
        r.lb.min_in_service() >= min,
        "the LB had only {} server(s) in service at some instant (lb.min_in_service = {min})\n{}",
        r.lb.min_in_service(),
        context(fleet, r)
    );
}

fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn assert_versions(fleet: &Fleet, r: &Sampled, want: &[(&str, &str)]) {
    assert_eq!(
        fleet.versions(),
        pairs(want),
        "versions at the end\n{}",
        context(fleet, r)
    );
}

/// The LB's states once checks under way have finished (a server put
/// `ready` from maint shows `UP 1/2` until its next check, 100 ms later).
fn settled_lb_states(fleet: &Fleet) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let states = fleet.lb_states();
        if !states.iter().any(|(_, s)| s.contains('/')) || std::time::Instant::now() >= deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_lb(fleet: &Fleet, r: &Sampled, want: &[(&str, &str)]) {
    assert_eq!(
        settled_lb_states(fleet),
        pairs(want),
        "load balancer state at the end\n{}",
        context(fleet, r)
    );
}

fn in_service(lb: LbKind) -> &'static str {
    match lb {
        LbKind::Haproxy => "UP",
        LbKind::Nginx => "up",
    }
}

// ---- 1. the capacity guard under parallel batches -----------------------------------------

/// The whole fleet (or `batch`) in one parallel batch: the guard lets
/// branches through only while `min` stay in service, the others wait.
fn capacity_guard_holds_under_a_parallel_batch(lb: LbKind, min: usize, batch: &str) {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(lb, 3).start();
    let inv = fleet
        .inventory()
        .min_in_service(min)
        .write(&fleet.path("rollscript.toml"));

    let batch = format!("batch={batch}");
    let r = rolling(
        &fleet,
        &inv,
        &["--var", "version=v2", "--var", &batch],
        true,
    );

    assert_exit(&fleet, &r, 0);
    assert_never_below(&fleet, &r, min);
    assert_zero_failed(&fleet, &r);
    assert_versions(
        &fleet,
        &r,
        &[("web-1", "v2"), ("web-2", "v2"), ("web-3", "v2")],
    );
    let up = in_service(lb);
    assert_lb(&fleet, &r, &[("web-1", up), ("web-2", up), ("web-3", up)]);
    assert_stderr_has(&fleet, &r, "waiting for capacity");
    let j = r.journal();
    assert!(
        j.of_type("intent")
            .iter()
            .any(|i| i["op"] == "wait_capacity"),
        "the journal records the wait for capacity\n{}\n{}",
        j.dump(),
        context(&fleet, &r)
    );
}

#[test]
fn a_whole_fleet_batch_on_haproxy_waits_for_capacity_and_never_leaves_fewer_than_min_in_service() {
    capacity_guard_holds_under_a_parallel_batch(LbKind::Haproxy, 1, "100%");
}

#[test]
fn a_whole_fleet_batch_on_nginx_waits_for_capacity_and_never_leaves_fewer_than_min_in_service() {
    capacity_guard_holds_under_a_parallel_batch(LbKind::Nginx, 1, "100%");
}

#[test]
fn batches_of_three_with_min_in_service_2_never_leave_fewer_than_2_in_service() {
    capacity_guard_holds_under_a_parallel_batch(LbKind::Haproxy, 2, "3");
}

#[test]
fn the_plan_of_a_whole_fleet_batch_shows_the_third_deregister_waiting_for_capacity() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));
    let inv_arg = inv.display().to_string();
    let r = sampled(
        &fleet,
        &inv,
        &[
            "plan",
            "scripts/rolling.rhai",
            "-i",
            &inv_arg,
            "--var",
            "batch=100%",
            "--var",
            "version=v2",
        ],
        false,
    );

    assert_exit(&fleet, &r, 0);
    let waits: Vec<&str> = r
        .run
        .stdout
        .lines()
        .filter(|l| l.contains("waits for capacity"))
        .collect();
    assert!(
        waits.iter().any(|l| l.contains("web-3")),
        "the third instance's deregister waits for capacity: {waits:?}\n{}",
        context(&fleet, &r)
    );
    assert!(
        !waits
            .iter()
            .any(|l| l.contains("web-1") || l.contains("web-2")),
        "the first two go at once: {waits:?}\n{}",
        context(&fleet, &r)
    );
    assert_eq!(
        r.lb.states().len(),
        1,
        "a plan touches nothing\n{}",
        r.lb.render()
    );
}

// ---- 2. hosts left as found ----------------------------------------------------------------

/// web-2 parked in HAProxy by an operator (`state`: maint, drain) before
/// the run: the run leaves it as it found it, names it, lists it `parked`.
fn an_instance_parked_in_haproxy_is_left_as_found(state: &str, status: &str) {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let h = fleet.haproxy();
    assert_eq!(
        h.cmd(&format!("set server {}/web-2 state {state}", h.backend)),
        ""
    );
    assert_eq!(h.status("web-2"), status);
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 0);
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", status), ("web-3", "UP")],
    );
    assert_versions(
        &fleet,
        &r,
        &[("web-1", "v2"), ("web-2", "v1"), ("web-3", "v2")],
    );
    assert_stderr_has(
        &fleet,
        &r,
        &format!("web-2: out of rotation before the run ({status}): left as found"),
    );
    let row = r.summary_row("web-2");
    assert!(row.contains("parked"), "{row}\n{}", context(&fleet, &r));
    assert!(
        r.lb.samples.iter().all(|s| s
            .servers
            .as_ref()
            .is_ok_and(|v| v.iter().any(|x| x.name == "web-2" && x.state == status))),
        "web-2 stayed {status} throughout\n{}",
        context(&fleet, &r)
    );
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

#[test]
fn an_instance_in_maint_before_the_run_stays_in_maint_and_is_not_deployed() {
    an_instance_parked_in_haproxy_is_left_as_found("maint", "MAINT");
}

#[test]
fn an_instance_in_drain_before_the_run_stays_in_drain_and_is_not_deployed() {
    an_instance_parked_in_haproxy_is_left_as_found("drain", "DRAIN");
}

#[test]
fn an_instance_marked_down_in_nginx_before_the_run_stays_down_and_is_not_deployed() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Nginx, 3).start();
    let web2 = fleet.instance("web-2").addr();
    fleet.nginx().mark_down(&web2);
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 0);
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "up"), ("web-2", "down"), ("web-3", "up")],
    );
    assert_versions(
        &fleet,
        &r,
        &[("web-1", "v2"), ("web-2", "v1"), ("web-3", "v2")],
    );
    assert_stderr_has(
        &fleet,
        &r,
        "web-2: out of rotation before the run (down): left as found",
    );
    let row = r.summary_row("web-2");
    assert!(row.contains("parked"), "{row}\n{}", context(&fleet, &r));
    assert!(
        !r.lb.samples.iter().any(|s| s
            .servers
            .as_ref()
            .is_ok_and(|v| v.iter().any(|x| x.name == web2 && x.in_service))),
        "web-2 was never marked up\n{}",
        context(&fleet, &r)
    );
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

#[test]
fn include_parked_deploys_the_parked_instance_and_leaves_it_out_of_rotation() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let h = fleet.haproxy();
    assert_eq!(
        h.cmd(&format!("set server {}/web-2 state maint", h.backend)),
        ""
    );
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(
        &fleet,
        &inv,
        &["--include-parked", "--var", "version=v2"],
        true,
    );

    assert_exit(&fleet, &r, 0);
    assert_versions(
        &fleet,
        &r,
        &[("web-1", "v2"), ("web-2", "v2"), ("web-3", "v2")],
    );
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "MAINT"), ("web-3", "UP")],
    );
    assert!(
        !r.lb.samples.iter().any(|s| s
            .servers
            .as_ref()
            .is_ok_and(|v| v.iter().any(|x| x.name == "web-2" && x.in_service))),
        "web-2 never took traffic\n{}",
        context(&fleet, &r)
    );
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

/// In rotation but failing health (its app stopped) is not parked: the
/// deploy may be what fixes it.
#[test]
fn an_instance_down_by_health_before_the_run_is_deployed_and_back_up() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    fleet.stop_app("web-2");
    fleet.haproxy().wait_status("web-2", "DOWN");
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 0);
    assert_versions(
        &fleet,
        &r,
        &[("web-1", "v2"), ("web-2", "v2"), ("web-3", "v2")],
    );
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")],
    );
    assert!(
        !r.run.stderr.contains("left as found"),
        "a DOWN instance is not parked\n{}",
        context(&fleet, &r)
    );
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

// ---- 3. a failed rollback ----------------------------------------------------------------

/// `app.deploy` fails on web-2 before changing anything ("disk full",
/// exit 7) and `app.rollback` fails there too ("no previous release").
fn deploy_and_rollback_fail_on_web_2(fleet: &Fleet) -> FleetInventory {
    let deploy = fleet.wrapper(
        "deploy-disk-full-on-web-2.sh",
        "[ \"$NAME\" = web-2 ] && { echo 'disk full' >&2; exit 7; }\nexec \"$bin/deploy.sh\" \"$@\"",
    );
    let rollback = fleet.wrapper(
        "rollback-fails-on-web-2.sh",
        "[ \"$NAME\" = web-2 ] && { echo 'no previous release' >&2; exit 1; }\nexec \"$bin/rollback.sh\" \"$@\"",
    );
    fleet
        .inventory()
        .deploy(&deploy)
        .rollback(&rollback)
        .min_in_service(1)
}

#[test]
fn a_failed_rollback_on_a_healthy_instance_puts_it_back_and_says_so() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = deploy_and_rollback_fail_on_web_2(&fleet).write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 1);
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")],
    );
    assert_eq!(fleet.version("web-2"), "v1", "{}", context(&fleet, &r));
    assert_stderr_has(
        &fleet,
        &r,
        "rollback failed; healthy on an unknown release: put back",
    );
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

#[test]
fn on_rollback_failure_leave_out_keeps_the_instance_out_and_names_it() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = deploy_and_rollback_fail_on_web_2(&fleet)
        .set("app", "on_rollback_failure", &toml_str("leave_out"))
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 1);
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "MAINT"), ("web-3", "UP")],
    );
    let row = r.summary_row("web-2");
    assert!(row.contains("LEFT OUT"), "{row}\n{}", context(&fleet, &r));
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

// ---- 4. a failure after register ----------------------------------------------------------

/// demo/app.py plus `/lbcheck`, HAProxy's own check in these tests: 503
/// while `lbcheck-fails-<VERSION>` exists in the instance's folder, else
/// 200. `/health` (rollscript's `health()`) is unchanged.
fn lbcheck_app() -> String {
    const ANCHOR: &str = "            if url.path == \"/\":\n";
    const LBCHECK: &str = "            if url.path == \"/lbcheck\":\n\
        \x20               # Test variant: HAProxy's check fails while lbcheck-fails-<version> exists.\n\
        \x20               failing = os.path.exists(os.path.join(a.dir, \"lbcheck-fails-\" + version))\n\
        \x20               return self.reply(503, b\"lb check fails\\n\") if failing else self.reply(200, b\"ok\\n\")\n";
    let app = std::fs::read_to_string(repo().join("demo/app.py")).unwrap();
    assert!(
        app.contains(ANCHOR),
        "demo/app.py no longer has {ANCHOR:?}: update the /lbcheck variant"
    );
    app.replacen(ANCHOR, &format!("{LBCHECK}{ANCHOR}"), 1)
}

/// A fleet whose HAProxy checks `/lbcheck`; v2 fails it on web-2.
fn fleet_where_v2_fails_haproxys_check_on_web_2() -> Fleet {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3)
        .app_variant(&lbcheck_app())
        .haproxy_check("/lbcheck")
        .start();
    std::fs::write(fleet.instance("web-2").dir.join("lbcheck-fails-v2"), "").unwrap();
    fleet
}

/// `(op, ok)` of web-2's steps include a failed `wait_in_service`.
fn assert_wait_in_service_failed(fleet: &Fleet, r: &Sampled) {
    let j = r.journal();
    assert!(
        j.steps("web-2")
            .contains(&("wait_in_service".to_string(), Some(false))),
        "web-2's wait_in_service failed on HAProxy's check\n{}\n{}",
        j.dump(),
        context(fleet, r)
    );
}

#[test]
fn haproxys_check_failing_on_the_new_release_is_compensated_and_the_instance_restored() {
    let _one = one_fleet_at_a_time();
    let fleet = fleet_where_v2_fails_haproxys_check_on_web_2();
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 1);
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")],
    );
    assert_eq!(fleet.version("web-2"), "v1", "{}", context(&fleet, &r));
    let row = r.summary_row("web-2");
    assert!(row.contains("restored"), "{row}\n{}", context(&fleet, &r));
    assert_wait_in_service_failed(&fleet, &r);
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

#[test]
fn if_the_old_release_also_fails_haproxys_check_the_instance_is_taken_out_again_and_named() {
    let _one = one_fleet_at_a_time();
    let fleet = fleet_where_v2_fails_haproxys_check_on_web_2();
    // The deploy on web-2 also breaks the old release's check (a shared
    // dependency, say): rolled back, it still fails HAProxy's check.
    let deploy = fleet.wrapper(
        "deploy-breaks-v1-on-web-2.sh",
        "[ \"$NAME\" = web-2 ] && touch \"$DEMO_INSTANCE_DIR/lbcheck-fails-v1\"\nexec \"$bin/deploy.sh\" \"$@\"",
    );
    let inv = fleet
        .inventory()
        .deploy(&deploy)
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);

    assert_exit(&fleet, &r, 1);
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "MAINT"), ("web-3", "UP")],
    );
    let row = r.summary_row("web-2");
    assert!(row.contains("LEFT OUT"), "{row}\n{}", context(&fleet, &r));
    assert_wait_in_service_failed(&fleet, &r);
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

// ---- 5. unknown outcomes --------------------------------------------------------------------

#[test]
fn a_drain_whose_reply_is_lost_is_treated_as_maybe_out_and_put_back() {
    use crate::harness::apiproxy::ResettingApiProxy;

    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let h = fleet.haproxy();
    let proxy = ResettingApiProxy::start(
        h.api_addr.parse().unwrap(),
        &format!("set server {}/web-2 state drain", h.backend),
    );
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .set("lb", "socket", &toml_str(&proxy.addr.to_string()))
        .write(&fleet.path("rollscript.toml"));

    let r = rolling(&fleet, &inv, &["--var", "version=v2"], true);
    let ctx = || format!("proxy saw {:?}\n{}", proxy.seen(), context(&fleet, &r));

    assert!(
        proxy.resets() >= 1 && r.lb.saw("web-2", "DRAIN"),
        "HAProxy drained web-2 and its reply was lost\n{}",
        ctx()
    );
    assert_eq!(r.code(), Some(1), "exit code\n{}", ctx());
    assert_lb(
        &fleet,
        &r,
        &[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")],
    );
    assert_eq!(fleet.version("web-2"), "v1", "{}", ctx());
    let j = r.journal();
    let intent = j
        .of_type("intent")
        .into_iter()
        .find(|i| i["instance"] == "web-2" && i["op"] == "deregister")
        .unwrap_or_else(|| panic!("no deregister of web-2 in\n{}\n{}", j.dump(), ctx()))
        .clone();
    let result = j
        .result_of(intent["seq"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no result for {intent}\n{}", j.dump()));
    assert_eq!(result["ok"], false, "{result}\n{}", j.dump());
    assert_eq!(result["unknown_outcome"], true, "{result}\n{}", j.dump());
    assert_never_below(&fleet, &r, 1);
    assert_zero_failed(&fleet, &r);
}

// ---- 6. the inventory checked before the first side effect ----------------------------------

/// Runs `args` against `inventory` and checks it was refused before any
/// side effect: exit 2, each of `messages` on stderr, the LB never changed
/// (sampled throughout), every version as before, no journal.
fn assert_refused_up_front(fleet: &Fleet, inventory: &Path, args: &[&str], messages: &[&str]) {
    let versions = fleet.versions();
    let r = sampled(fleet, inventory, args, false);
    assert_exit(fleet, &r, 2);
    for m in messages {
        assert_stderr_has(fleet, &r, m);
    }
    assert_eq!(
        r.lb.states().len(),
        1,
        "the LB changed during a refused run\n{}",
        context(fleet, &r)
    );
    assert_eq!(
        fleet.versions(),
        versions,
        "an instance was deployed\n{}",
        context(fleet, &r)
    );
    assert_eq!(
        journals_beside(inventory),
        Vec::<PathBuf>::new(),
        "a refused run writes no journal\n{}",
        context(fleet, &r)
    );
}

fn run_args(inventory: &Path) -> Vec<String> {
    [
        "run",
        "scripts/rolling.rhai",
        "-i",
        &inventory.display().to_string(),
        "--yes",
        "--var",
        "version=v2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn two_instances_with_the_same_address_are_refused_before_anything_is_touched() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let web1 = fleet.instance("web-1");
    let inv = fleet
        .inventory()
        .set_instance("web-2", "host", &toml_str(&web1.ip))
        .set_instance("web-2", "port", &web1.port.to_string())
        .write(&fleet.path("rollscript.toml"));
    assert_refused_up_front(&fleet, &inv, &strs(&run_args(&inv)), &["same address"]);
}

#[test]
fn an_instance_whose_host_is_not_its_haproxy_servers_address_is_refused() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let web1_ip = fleet.instance("web-1").ip.clone();
    let inv = fleet
        .inventory()
        .set_instance("web-2", "host", &toml_str(&web1_ip))
        .write(&fleet.path("rollscript.toml"));
    assert_refused_up_front(
        &fleet,
        &inv,
        &strs(&run_args(&inv)),
        &["web-2", "HAProxy server", "but the inventory says"],
    );
}

#[test]
fn an_nginx_upstream_server_that_is_no_instance_is_refused() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Nginx, 3).start();
    let inv = fleet
        .inventory()
        .only(&["web-1", "web-2"])
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));
    assert_refused_up_front(
        &fleet,
        &inv,
        &strs(&run_args(&inv)),
        &[
            &fleet.instance("web-3").addr(),
            "is not an instance of the inventory",
        ],
    );
}

#[test]
fn min_in_service_above_the_fleet_size_is_refused() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = fleet
        .inventory()
        .min_in_service(5)
        .write(&fleet.path("rollscript.toml"));
    assert_refused_up_front(
        &fleet,
        &inv,
        &strs(&run_args(&inv)),
        &["more than the 3 instances"],
    );
}

/// `[ssh] key` naming a file that does not exist: `run` refuses it up
/// front; `plan` still works and warns.
fn a_missing_ssh_file_is_refused_by_run_and_a_warning_in_plan(key: &str) {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let missing = fleet.path("no-such-file");
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .set("ssh", key, &toml_str(&missing.display().to_string()))
        .write(&fleet.path("rollscript.toml"));
    assert_refused_up_front(&fleet, &inv, &strs(&run_args(&inv)), &["does not exist"]);

    let inv_arg = inv.display().to_string();
    let plan = sampled(
        &fleet,
        &inv,
        &["plan", "scripts/rolling.rhai", "-i", &inv_arg],
        false,
    );
    assert_exit(&fleet, &plan, 0);
    assert!(
        plan.run.stderr.contains("does not exist") || plan.run.stdout.contains("does not exist"),
        "plan warns that the file does not exist\n{}",
        context(&fleet, &plan)
    );
    assert!(
        plan.run.stdout.contains("deploy.sh"),
        "the plan is printed\n{}",
        context(&fleet, &plan)
    );
}

#[test]
fn a_missing_ssh_identity_is_refused_by_run_and_only_warned_about_by_plan() {
    a_missing_ssh_file_is_refused_by_run_and_a_warning_in_plan("identity");
}

#[test]
fn a_missing_ssh_known_hosts_is_refused_by_run_and_only_warned_about_by_plan() {
    a_missing_ssh_file_is_refused_by_run_and_a_warning_in_plan("known_hosts");
}

#[test]
fn an_ssh_user_that_is_no_plain_user_name_is_refused() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let pwned = fleet.path("pwned");
    let user = format!("root -oProxyCommand=touch {}", pwned.display());
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .set("ssh", "user", &toml_str(&user))
        .write(&fleet.path("rollscript.toml"));
    assert_refused_up_front(
        &fleet,
        &inv,
        &strs(&run_args(&inv)),
        &["ssh.user", "plain user name"],
    );
    assert!(!pwned.exists(), "the ProxyCommand ran");
}

#[cfg(feature = "aws")]
#[test]
fn an_elbv2_instance_that_is_no_target_of_the_group_is_refused() {
    use crate::harness::cloud::{instances_toml, rollscript_against_moto, Cloud};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloud = rt.block_on(Cloud::start());
    let ids: Vec<String> = ["127.10.1.10", "127.10.1.11", "127.10.1.12"]
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            rt.block_on(cloud.instance(&cloud.subnet, ip, Some(&format!("web-{}", i + 1))))
        })
        .collect();
    // web-1 and web-2 are targets; web-3's instance exists but is not one.
    let setup = cloud.inventory(
        "",
        &instances_toml(&[
            ("web-1", "127.10.1.10", Some(&ids[0])),
            ("web-2", "127.10.1.11", Some(&ids[1])),
        ]),
    );
    rt.block_on(async {
        let lb = cloud.lb(&setup);
        for inst in &setup.instances {
            use rollscript::primitives::LoadBalancer;
            lb.register(inst).await.unwrap();
            lb.wait_in_service(inst, Duration::from_secs(30))
                .await
                .unwrap();
        }
    });
    let targets = rt.block_on(cloud.targets());

    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("rollscript.toml");
    std::fs::write(
        &inv,
        cloud.inventory_text(
            "",
            &instances_toml(&[
                ("web-1", "127.10.1.10", Some(&ids[0])),
                ("web-2", "127.10.1.11", Some(&ids[1])),
                ("web-3", "127.10.1.12", Some(&ids[2])),
            ]),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cycle.rhai"),
        "for inst in instances() {\n    deregister(inst);\n    wait_drained(inst);\n    register(inst);\n    wait_in_service(inst);\n}\n",
    )
    .unwrap();
    let out = rollscript_against_moto(dir.path())
        .args(["run", "cycle.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!(
        "stdout:\n{}\nstderr:\n{stderr}\nmoto:\n{}",
        String::from_utf8_lossy(&out.stdout),
        cloud.moto.stderr()
    );

    assert_eq!(out.status.code(), Some(2), "{ctx}");
    assert!(
        stderr.contains("web-3") && stderr.contains("not a target of"),
        "{ctx}"
    );
    assert_eq!(
        rt.block_on(cloud.targets()),
        targets,
        "the target group is unchanged\n{ctx}"
    );
    assert!(
        journals_beside(&inv).is_empty(),
        "a refused run writes no journal\n{ctx}"
    );
}
