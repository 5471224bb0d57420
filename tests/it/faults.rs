//! Issue 6's fault matrix, against a real local fleet (`harness::fleet`):
//! three `demo/app.py` instances on 127.0.1.x, each behind its own sshd,
//! HAProxy in front, `rollscript run scripts/rolling.rhai` as the built binary.
//!
//! Each case injects one fault — a deploy that never turns healthy, an sshd
//! or HAProxy gone mid-run, SIGINT in a drain, SIGKILL in a deploy, a second
//! run, a capacity refusal, too many failures — and checks what an operator
//! would: the exit code, the message on stderr, HAProxy's own view of the
//! servers afterwards (`show stat`), the versions served, and the run journal
//! (`.rollscript/runs/*.jsonl` and `rollscript runs show`). Cases 1 and 5 run
//! under a load of one request per connection through HAProxy and require
//! zero failed requests.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::http::get;
use crate::harness::journal::{names, Journal};
use crate::harness::run::Finished;
use crate::harness::sshd::toml_str;
use crate::harness::wait_until;

/// Upper bound on one rollscript run against the fleet (they take seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Three instances (`web-1`…) on v1, HAProxy in front, and the inventory
/// (`min_in_service = 1`, `app.deploy` = a wrapper running the plain
/// `deploy.sh` until a test sets another with `fleet.set_deploy`).
fn start() -> Fleet {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    fleet.set_deploy("exec \"$bin/deploy.sh\" \"$@\"");
    write_inventory(&fleet, 1);
    fleet
}

/// Writes the fleet's default inventory with `lb.min_in_service = min_in_service`.
fn write_inventory(fleet: &Fleet, min_in_service: usize) {
    fleet
        .inventory()
        .deploy(&fleet.test_deploy())
        .min_in_service(min_in_service)
        .set("app", "name", &toml_str("faults"))
        .set("ssh", "command_timeout", &toml_str("90s"))
        .set("health", "retries", "20")
        .write(&fleet.inventory_path());
}

/// `rollscript run scripts/rolling.rhai --yes --var version=v2 -i INV` + `extra`.
fn run_cmd(fleet: &Fleet, extra: &[&str]) -> Command {
    let mut c = fleet.rollscript(&[
        "run",
        "scripts/rolling.rhai",
        "--yes",
        "--var",
        "version=v2",
    ]);
    c.args(extra);
    c
}

/// A deploy wrapper: `version` → `bad-version` on the named instances
/// (demo/app.py never turns healthy on a version starting with `bad`).
fn bad_on(instances: &[&str]) -> String {
    let names = instances.join("|");
    format!("case \"$NAME\" in {names}) set -- \"bad-$1\" ;; esac\nexec \"$bin/deploy.sh\" \"$1\"")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every instance's version, in inventory order: `[(name, version)]`.
fn versions(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    map(pairs).into_iter().collect()
}

/// Every server UP in HAProxy, every instance serving `version`.
fn assert_fleet_on(fleet: &Fleet, version: &str, context: &str) {
    assert_eq!(
        fleet.haproxy().statuses(),
        map(&[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")]),
        "HAProxy after the run\n{context}"
    );
    assert_eq!(
        fleet.versions(),
        versions(&[("web-1", version), ("web-2", version), ("web-3", version)]),
        "versions served after the run\n{context}"
    );
}

fn ops(list: &[&str]) -> Vec<(String, Option<bool>)> {
    list.iter().map(|o| (o.to_string(), Some(true))).collect()
}

/// The one-instance cycle of the rolling strategy, every step ok.
const CYCLE: [&str; 6] = [
    "deregister",
    "wait_drained",
    "ssh",
    "health",
    "register",
    "wait_in_service",
];
/// Compensation after a command ran: rollback, health, back in.
const COMPENSATE_TOUCHED: [&str; 4] = ["ssh", "health", "register", "wait_in_service"];

fn context(r: &Finished, j: &Journal) -> String {
    format!("{}--- journal\n{}", r.both(), j.dump())
}

/// `rollscript runs show RUN`.
fn runs_show(fleet: &Fleet, run: &str) -> String {
    let r = fleet.exec(
        "runs-show",
        fleet.rollscript(&["runs", "show", run]),
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "runs show: {}", r.both());
    r.stdout
}

/// The run_end record (exactly one expected).
fn run_end(j: &Journal) -> serde_json::Value {
    let ends = j.ends();
    assert_eq!(ends.len(), 1, "one run_end record\n{}", j.dump());
    ends[0].clone()
}

fn assert_run_start(j: &Journal, pid: u32) {
    let starts = j.of_type("run_start");
    assert_eq!(starts.len(), 1, "{}", j.dump());
    assert_eq!(starts[0]["pid"], pid, "{}", j.dump());
    assert_eq!(starts[0]["script"], "scripts/rolling.rhai");
    assert!(
        names(&starts[0]["args"]).contains(&"version=v2".to_string()),
        "{}",
        j.dump()
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

// ---- 1 ------------------------------------------------------------------------

#[test]
fn deploy_failing_on_web_2_rolls_back_web_1_and_compensates_web_2_with_zero_failed_requests() {
    let fleet = start();
    fleet.set_deploy(&bad_on(&["web-2"]));
    let load = fleet.load();
    wait_until("the load to get going", Duration::from_secs(10), || {
        load.so_far().ok() >= 20
    });

    let run = fleet.spawn("run", run_cmd(&fleet, &[]));
    let pid = run.pid();
    let r = run.wait(RUN_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    let traffic = load.stop();
    let j = fleet.journal();
    let ctx = context(&r, &j);

    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        r.stderr.contains("web-2: http://")
            && r.stderr.contains("/health not healthy after 20 attempts"),
        "the failure is named on stderr\n{ctx}"
    );
    assert!(
        r.stderr
            .contains("rollout stopped: failed on [\"web-2\"]; 1 updated instance(s) rolled back"),
        "{ctx}"
    );
    assert!(
        r.stderr
            .contains("web-2: rolled back, healthy; back in service"),
        "{ctx}"
    );
    assert!(!r.stderr.contains("LEFT OUT"), "{ctx}");
    assert_fleet_on(&fleet, "v1", &ctx);

    // The journal: web-1 deployed, then rolled back by the script; web-2's
    // health failed, then compensation rolled it back; web-3 untouched.
    assert_run_start(&j, pid);
    let mut web1 = ops(&CYCLE);
    web1.extend(ops(&CYCLE));
    assert_eq!(j.steps("web-1"), web1, "{ctx}");
    let mut web2 = ops(&CYCLE[..3]);
    web2.push(("health".into(), Some(false)));
    web2.extend(ops(&COMPENSATE_TOUCHED));
    assert_eq!(j.steps("web-2"), web2, "{ctx}");
    assert!(j.steps("web-3").is_empty(), "{ctx}");
    assert!(
        j.of_type("intent")
            .iter()
            .filter(|i| i["instance"] == "web-1" && i["op"] == "ssh")
            .map(|i| i["text"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .iter()
            .zip(["deploy-test.sh v2", "rollback.sh"])
            .all(|(text, want)| text.ends_with(want)),
        "web-1: deploy then rollback\n{ctx}"
    );
    assert_eq!(
        j.compensations(),
        vec![(
            "web-2".to_string(),
            true,
            "rolled back, healthy; back in service".to_string()
        )],
        "{ctx}"
    );
    let end = run_end(&j);
    assert_eq!(end["outcome"], "failed", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");
    assert_eq!(names(&end["failed"]), vec!["web-2"], "{ctx}");

    let show = runs_show(&fleet, &j.run());
    for want in [
        format!("run {}", j.run()),
        "compensation web-2: restored — rolled back, healthy; back in service".into(),
        ": failed".into(),
        "  failed: web-2".into(),
    ] {
        assert!(show.contains(&want), "runs show lacks {want:?}:\n{show}");
    }
    assert!(!show.contains("left out of service"), "{show}");

    assert_eq!(
        traffic.failures().len(),
        0,
        "requests failed during the run: {}\n{ctx}",
        traffic.summary()
    );
    assert!(traffic.ok() > 50, "{}", traffic.summary());
    assert!(
        traffic.versions().contains_key("v2"),
        "web-1 served v2 for a while: {}",
        traffic.summary()
    );
    assert!(
        !traffic.versions().keys().any(|v| v.starts_with("bad")),
        "the unhealthy version never got traffic: {}",
        traffic.summary()
    );
}

// ---- 2 ------------------------------------------------------------------------

#[test]
fn health_never_passing_stops_at_the_first_instance_and_compensates_it() {
    let fleet = start();
    fleet.set_deploy(&bad_on(&["web-1", "web-2", "web-3"]));
    let r = fleet.exec("run", run_cmd(&fleet, &[]), RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = context(&r, &j);

    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        r.stderr.contains("web-1: http://")
            && r.stderr.contains("/health not healthy after 20 attempts")
            && r.stderr.contains("saw 20× 503"),
        "{ctx}"
    );
    assert!(
        r.stderr
            .contains("rollout stopped: failed on [\"web-1\"]; 0 updated instance(s) rolled back"),
        "{ctx}"
    );
    assert!(
        r.stderr
            .contains("web-1: rolled back, healthy; back in service"),
        "{ctx}"
    );
    assert!(!r.stderr.contains("LEFT OUT"), "nothing left out\n{ctx}");
    assert_fleet_on(&fleet, "v1", &ctx);

    let mut web1 = ops(&CYCLE[..3]);
    web1.push(("health".into(), Some(false)));
    web1.extend(ops(&COMPENSATE_TOUCHED));
    assert_eq!(j.steps("web-1"), web1, "{ctx}");
    assert!(j.steps("web-2").is_empty(), "{ctx}");
    assert!(j.steps("web-3").is_empty(), "{ctx}");
    assert_eq!(
        j.compensations(),
        vec![(
            "web-1".to_string(),
            true,
            "rolled back, healthy; back in service".to_string()
        )],
        "{ctx}"
    );
    let end = run_end(&j);
    assert_eq!(end["outcome"], "failed", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");
    assert_eq!(names(&end["failed"]), vec!["web-1"], "{ctx}");
    let show = runs_show(&fleet, &j.run());
    assert!(
        show.contains("compensation web-1: restored — rolled back, healthy; back in service"),
        "{show}"
    );
}

// ---- 3 ------------------------------------------------------------------------

#[test]
fn an_instance_unreachable_mid_run_is_named_and_no_healthy_instance_is_left_out() {
    let mut fleet = start();
    let run = fleet.spawn("run", run_cmd(&fleet, &[]));
    // The run has started (web-1 is being deployed): web-3's sshd goes away
    // long before its turn.
    wait_until("the run's first step", Duration::from_secs(30), || {
        fleet
            .journals()
            .first()
            .is_some_and(|p| !Journal::read(p).steps("web-1").is_empty())
    });
    assert!(Journal::read(&fleet.journals()[0])
        .steps("web-3")
        .is_empty());
    fleet.stop_sshd("web-3");
    let (ip3, ssh3) = (
        fleet.instance("web-3").ip.clone(),
        fleet.instance("web-3").ssh_port,
    );

    let r = run.wait(RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = context(&r, &j);

    assert_eq!(r.code, Some(1), "{ctx}");
    let refused = format!("web-3: connection refused by {ip3} port {ssh3}");
    assert!(
        r.stderr.contains(&refused),
        "stderr names the host: {refused}\n{ctx}"
    );

    // The journal: web-3's deploy failed as connection_refused, naming it.
    let ssh3_intent = j
        .of_type("intent")
        .into_iter()
        .find(|i| i["instance"] == "web-3" && i["op"] == "ssh")
        .unwrap_or_else(|| panic!("no ssh intent for web-3\n{ctx}"))
        .clone();
    let res = j.result_of(ssh3_intent["seq"].as_u64().unwrap()).unwrap();
    assert_eq!(res["ok"], false, "{ctx}");
    assert_eq!(res["error_kind"], "connection_refused", "{ctx}");
    assert!(
        res["error"].as_str().unwrap().starts_with(&refused),
        "{ctx}"
    );

    // Earlier instances: deployed, then rolled back by the strategy (max_failures 0).
    let mut earlier = ops(&CYCLE);
    earlier.extend(ops(&CYCLE));
    assert_eq!(j.steps("web-1"), earlier, "{ctx}");
    assert_eq!(j.steps("web-2"), earlier, "{ctx}");

    // web-3 never ran the deploy and stayed healthy on v1: it must be back.
    let end = run_end(&j);
    assert_eq!(end["outcome"], "failed", "{ctx}");
    assert_eq!(
        names(&end["left_out"]),
        Vec::<String>::new(),
        "a healthy instance was left out\n{ctx}"
    );
    assert_fleet_on(&fleet, "v1", &ctx);
}

// ---- 4 ------------------------------------------------------------------------

#[test]
fn the_lb_api_going_away_mid_run_leaves_the_instance_out_named_then_recover_restores_it() {
    let mut fleet = start();
    // web-1 deploys, then waits until the test has stopped HAProxy.
    fleet.set_deploy(
        "\"$bin/deploy.sh\" \"$1\"\n[ \"$NAME\" = web-1 ] && { mark deployed-web-1; wait_for go-web-1; }\nexit 0",
    );
    let run = fleet.spawn("run", run_cmd(&fleet, &[]));
    fleet.wait_ctl("deployed-web-1", Duration::from_secs(60));
    assert_eq!(fleet.haproxy().status("web-1"), "MAINT");
    fleet.stop_haproxy();
    fleet.touch("go-web-1");
    let r = run.wait(RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = context(&r, &j);
    let socket = fleet.haproxy().socket.display().to_string();

    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        r.stderr.contains(&format!(
            "cannot connect to HAProxy runtime API at {socket}"
        )),
        "stderr names the socket\n{ctx}"
    );
    assert!(
        r.stderr.contains("LEFT OUT of service by this run: web-1"),
        "{ctx}"
    );
    // The journal: web-1's register failed on the socket; compensation rolled
    // it back and found it healthy but could not put it back.
    let mut web1 = ops(&CYCLE[..4]);
    web1.push(("register".into(), Some(false)));
    web1.extend(ops(&COMPENSATE_TOUCHED[..2]));
    web1.push(("register".into(), Some(false)));
    assert_eq!(j.steps("web-1"), web1, "{ctx}");
    assert!(
        j.steps("web-2").is_empty() && j.steps("web-3").is_empty(),
        "{ctx}"
    );
    let comps = j.compensations();
    assert_eq!(comps.len(), 1, "{ctx}");
    assert_eq!((comps[0].0.as_str(), comps[0].1), ("web-1", false), "{ctx}");
    assert!(
        comps[0].2.starts_with("rolled back, healthy, but putting it back failed: web-1: cannot connect to HAProxy runtime API at ")
            && comps[0].2.contains(&socket),
        "{ctx}"
    );
    let end = run_end(&j);
    assert_eq!(end["outcome"], "failed", "{ctx}");
    assert_eq!(names(&end["left_out"]), vec!["web-1"], "{ctx}");
    let show = runs_show(&fleet, &j.run());
    assert!(show.contains("compensation web-1: LEFT OUT"), "{show}");
    assert!(show.contains("left out of service: web-1"), "{show}");
    assert_eq!(
        fleet.versions(),
        versions(&[("web-1", "v1"), ("web-2", "v1"), ("web-3", "v1")])
    );

    // HAProxy back on the same config: it remembers no maint, every healthy
    // server comes up.
    fleet.start_haproxy();
    assert_eq!(
        fleet.haproxy().statuses(),
        map(&[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")])
    );
    let rec = fleet.exec("recover", fleet.rollscript(&["recover"]), RUN_TIMEOUT);
    let j = Journal::read(&j.path);
    let ctx = format!("{}--- journal\n{}", rec.both(), j.dump());
    assert_eq!(rec.code, Some(0), "{ctx}");
    assert!(
        rec.stdout.contains(&format!("recovering run {}", j.run()))
            && rec.stdout.contains("out of service: web-1"),
        "{ctx}"
    );
    assert!(rec.stdout.contains("web-1: back in service"), "{ctx}");
    // The run's compensation already rolled web-1 back to v1: recovering it
    // must leave the whole fleet on v1, not roll it back a second time.
    assert_fleet_on(&fleet, "v1", &ctx);
    let ends = j.ends();
    assert_eq!(ends.len(), 2, "{ctx}");
    assert_eq!(ends[1]["outcome"], "recovered", "{ctx}");
    assert!(!fleet.lock_path().exists(), "recover released the lock");
}

// ---- 5 ------------------------------------------------------------------------

#[test]
fn sigint_during_a_drain_compensates_the_instance_and_exits_130_with_zero_failed_requests() {
    signal_during_a_drain(libc::SIGINT);
}

/// The operator's ssh session dropped: SIGHUP is handled like SIGTERM.
#[test]
fn sighup_during_a_drain_compensates_the_instance_like_sigint_and_leaves_everything_in_service() {
    signal_during_a_drain(libc::SIGHUP);
}

fn signal_during_a_drain(sig: i32) {
    let fleet = start();
    let load = fleet.load();
    wait_until("the load to get going", Duration::from_secs(10), || {
        load.so_far().ok() >= 20
    });
    // A slow request held on web-1, so its drain has something to wait for
    // (30 s: long enough to outlast a slow start of the run on a busy machine).
    // The load's own /slow requests last 200 ms — on a machine busy with
    // the whole suite, a second or more: a session on web-1 three seconds
    // old or more (HAProxy's `show sess`: age=3s, age=1m2s) is one of these.
    let lb = fleet.lb_addr();
    let old_enough = |age: &str| {
        !age.ends_with("ms")
            && (age.contains(['m', 'h', 'd'])
                || age
                    .trim_end_matches('s')
                    .parse::<u32>()
                    .is_ok_and(|s| s >= 3))
    };
    let held = || {
        fleet.haproxy().cmd("show sess").lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&"srv=web-1")
                && words
                    .iter()
                    .any(|w| w.strip_prefix("age=").is_some_and(old_enough))
        })
    };
    let mut slow = Vec::new();
    for _ in 0..16 {
        slow.push(std::thread::spawn(move || get(lb, "/slow?ms=30000")));
        std::thread::sleep(Duration::from_millis(1100));
        if held() {
            break;
        }
    }
    assert!(held(), "no slow request held on web-1");

    let run = fleet.spawn("run", run_cmd(&fleet, &[]));
    wait_until("web-1 draining", Duration::from_secs(30), || {
        fleet.haproxy().status("web-1") == "DRAIN"
            && fleet.journals().first().is_some_and(|p| {
                Journal::read(p).steps("web-1")
                    == vec![
                        ("deregister".to_string(), Some(true)),
                        ("wait_drained".to_string(), None),
                    ]
            })
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fleet.haproxy().status("web-1"), "DRAIN", "still draining");
    run.signal(sig);
    let r = run.wait(RUN_TIMEOUT);
    let slow: Vec<_> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let traffic = load.stop();
    let j = fleet.journal();
    let ctx = context(&r, &j);

    assert_eq!(r.code, Some(130), "{ctx}");
    assert!(r.stderr.contains("interrupt received"), "{ctx}");
    assert!(
        r.stderr.contains("web-1: healthy; back in service"),
        "{ctx}"
    );
    assert!(r.stderr.contains("exit 130: interrupted"), "{ctx}");
    assert_fleet_on(&fleet, "v1", &ctx);

    // The drain was cut short; no command ran, so no rollback: health, back in.
    let steps = j.steps("web-1");
    assert_eq!(
        steps,
        vec![
            ("deregister".to_string(), Some(true)),
            ("wait_drained".to_string(), Some(false)),
            ("health".to_string(), Some(true)),
            ("register".to_string(), Some(true)),
            ("wait_in_service".to_string(), Some(true)),
        ],
        "{ctx}"
    );
    let drained = j
        .of_type("intent")
        .into_iter()
        .find(|i| i["op"] == "wait_drained")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(
        j.result_of(drained).unwrap()["error_kind"],
        "cancelled",
        "{ctx}"
    );
    assert!(
        j.steps("web-2").is_empty() && j.steps("web-3").is_empty(),
        "{ctx}"
    );
    assert_eq!(
        j.compensations(),
        vec![(
            "web-1".to_string(),
            true,
            "healthy; back in service".to_string()
        )],
        "{ctx}"
    );
    let end = run_end(&j);
    assert_eq!(end["outcome"], "interrupted", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");
    assert!(!fleet.lock_path().exists(), "the lock is released");

    for s in &slow {
        assert!(
            matches!(s, Ok((200, body)) if body.trim() == "version=v1"),
            "the held request finished: {s:?}"
        );
    }
    assert_eq!(
        traffic.failures().len(),
        0,
        "requests failed during the run: {}\n{ctx}",
        traffic.summary()
    );
    assert!(traffic.ok() > 20, "{}", traffic.summary());
}

/// A first Ctrl-C while compensation runs only says so: stopping it would
/// leave the instance out. Compensation completes; everything serves.
#[test]
fn a_ctrl_c_during_compensation_does_not_stop_it_and_everything_ends_in_service() {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    // web-1's release never turns healthy; its rollback waits for the test.
    fleet.set_deploy(
        "case \"$NAME\" in web-1) set -- \"bad-$1\" ;; esac\nexec \"$bin/deploy.sh\" \"$1\"",
    );
    let rollback = fleet.wrapper(
        "rollback-test.sh",
        "mark rolling-back-$NAME\nwait_for go-rollback\nexec \"$bin/rollback.sh\"",
    );
    fleet
        .inventory()
        .deploy(&fleet.test_deploy())
        .rollback(&rollback)
        .set("health", "retries", "30")
        .set("health", "interval", &toml_str("100ms"))
        .write(&fleet.inventory_path());
    let run = fleet.spawn("run", run_cmd(&fleet, &[]));
    fleet.wait_ctl("rolling-back-web-1", Duration::from_secs(60));
    run.signal(libc::SIGINT);
    wait_until("the warning", Duration::from_secs(10), || {
        run.stderr_so_far()
            .contains("press Ctrl-C again to stop at once")
    });
    fleet.touch("go-rollback");
    let r = run.wait(RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = context(&r, &j);
    // Interrupted — once compensation was done.
    assert_eq!(r.code, Some(130), "{ctx}");
    assert!(
        r.stderr.contains("compensating 1 instance(s) so that none is left out; press Ctrl-C again to stop at once"),
        "{ctx}"
    );
    assert!(!r.stderr.contains("stopping now"), "{ctx}");
    assert_fleet_on(&fleet, "v1", &ctx);
    let comps = j.compensations();
    assert_eq!(comps.len(), 1, "{ctx}");
    assert!(comps[0].1, "web-1 restored\n{ctx}");
}

// ---- 6 ------------------------------------------------------------------------

#[test]
fn sigkill_during_a_deploy_leaves_the_journal_open_and_recover_rolls_back_idempotently() {
    let fleet = start();
    // The deploy happens, then the command lingers until the test says.
    fleet.set_deploy("\"$bin/deploy.sh\" \"$1\"\nmark deployed-$NAME\nwait_for go-$NAME");
    let run = fleet.spawn("run", run_cmd(&fleet, &[]));
    let pid = run.pid();
    fleet.wait_ctl("deployed-web-1", Duration::from_secs(60));
    run.signal(libc::SIGKILL);
    let r = run.wait(Duration::from_secs(30));
    assert_eq!(r.status.code(), None, "killed by a signal");
    fleet.touch("go-web-1");

    // What the killed run left: a journal without an end, the lock, web-1 out.
    let j = fleet.journal();
    let ctx = context(&r, &j);
    assert_run_start(&j, pid);
    assert!(j.ends().is_empty(), "no run_end after kill -9\n{ctx}");
    assert_eq!(
        j.steps("web-1"),
        vec![
            ("deregister".to_string(), Some(true)),
            ("wait_drained".to_string(), Some(true)),
            ("ssh".to_string(), None),
        ],
        "{ctx}"
    );
    let lock = std::fs::read_to_string(fleet.lock_path()).expect("the lock file remains");
    let holder: serde_json::Value = serde_json::from_str(&lock).unwrap();
    assert_eq!(holder["pid"], pid, "{lock}");
    assert_eq!(fleet.haproxy().status("web-1"), "MAINT");
    assert_eq!(fleet.version("web-1"), "v2");
    let show = runs_show(&fleet, &j.run());
    assert!(
        show.contains("(no end record: the run is still going or died; out of service now: web-1)"),
        "{show}"
    );

    let rec = fleet.exec("recover", fleet.rollscript(&["recover"]), RUN_TIMEOUT);
    let j = Journal::read(&j.path);
    let ctx = format!("{}--- journal\n{}", rec.both(), j.dump());
    assert_eq!(rec.code, Some(0), "{ctx}");
    assert!(
        rec.stdout.contains(&format!(
            "recovering run {} (started {} by pid {pid} on {}): out of service: web-1",
            j.run(),
            j.of_type("run_start")[0]["at"].as_str().unwrap(),
            hostname()
        )),
        "{ctx}"
    );
    assert!(
        rec.stdout
            .contains("web-1: back in service — rolled back, healthy; back in service"),
        "{ctx}"
    );
    assert_fleet_on(&fleet, "v1", &ctx);
    assert!(
        !fleet.lock_path().exists(),
        "recover released the lock\n{ctx}"
    );
    assert_eq!(
        j.compensations(),
        vec![(
            "web-1".to_string(),
            true,
            "rolled back, healthy; back in service".to_string()
        )],
        "{ctx}"
    );
    let end = run_end(&j);
    assert_eq!(end["outcome"], "recovered", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");
    let records = j.records.len();

    // Again: nothing to do, nothing changes.
    let again = fleet.exec("recover-2", fleet.rollscript(&["recover"]), RUN_TIMEOUT);
    assert_eq!(again.code, Some(0), "{}", again.both());
    assert!(
        again.stdout.contains("nothing to recover"),
        "{}",
        again.both()
    );
    assert_eq!(
        Journal::read(&j.path).records.len(),
        records,
        "journal unchanged"
    );
    assert!(!fleet.lock_path().exists());
    assert_fleet_on(&fleet, "v1", &again.both());
}

// ---- 7 ------------------------------------------------------------------------

#[test]
fn a_second_concurrent_run_exits_3_naming_the_holder() {
    let fleet = start();
    fleet.set_deploy("mark started-$NAME\nwait_for go\nexec \"$bin/deploy.sh\" \"$1\"");
    let first = fleet.spawn("run-1", run_cmd(&fleet, &[]));
    let pid = first.pid();
    fleet.wait_ctl("started-web-1", Duration::from_secs(60));

    let second = fleet.exec("run-2", run_cmd(&fleet, &[]), Duration::from_secs(60));
    assert_eq!(second.code, Some(3), "{}", second.both());
    let want = format!(
        "another run holds the deploy lock: held by uid0@{} (pid {pid}) since ",
        hostname()
    );
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME"));
    let want = match user {
        Ok(u) => want.replace("uid0@", &format!("{u}@")),
        Err(_) => want,
    };
    assert!(
        second.stderr.contains(&want),
        "want {want:?}\n{}",
        second.both()
    );
    assert!(
        second
            .stderr
            .contains("rollscript run scripts/rolling.rhai --yes --var version=v2 -i "),
        "the holder's command\n{}",
        second.both()
    );
    assert_eq!(
        fleet.journals().len(),
        1,
        "the refused run wrote no journal"
    );
    assert_eq!(
        fleet.haproxy().status("web-1"),
        "MAINT",
        "the first run goes on"
    );

    fleet.touch("go");
    let r = first.wait(RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = context(&r, &j);
    assert_eq!(r.code, Some(0), "{ctx}");
    assert_fleet_on(&fleet, "v2", &ctx);
    assert_eq!(run_end(&j)["outcome"], "success", "{ctx}");
    assert!(!fleet.lock_path().exists());
}

// ---- 8 ------------------------------------------------------------------------

#[test]
fn the_capacity_guard_refuses_and_nothing_is_drained() {
    let fleet = start();
    write_inventory(&fleet, 3);
    let r = fleet.exec("run", run_cmd(&fleet, &[]), RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = context(&r, &j);

    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        r.stderr.contains(
            "capacity guard: taking web-1 out would leave 2 of 3 instances in service, below lb.min_in_service = 3 (3)"
        ),
        "{ctx}"
    );
    assert!(j.of_type("intent").is_empty(), "nothing acted\n{ctx}");
    assert!(j.compensations().is_empty(), "{ctx}");
    let end = run_end(&j);
    assert_eq!(end["outcome"], "failed", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");
    assert_fleet_on(&fleet, "v1", &ctx);
    let stat = fleet.haproxy().stats();
    for s in ["web-1", "web-2", "web-3"] {
        assert_eq!(stat[s]["status"], "UP");
        assert_eq!(
            stat[s]["chkdown"], "0",
            "{s} never went down: {:?}",
            stat[s]
        );
    }
}

// ---- 9 ------------------------------------------------------------------------

#[test]
fn exceeding_max_failures_stops_and_rolls_back_the_updated_instances() {
    let fleet = start();
    fleet.set_deploy(&bad_on(&["web-2", "web-3"]));
    let r = fleet.exec(
        "run",
        run_cmd(&fleet, &["--var", "max_failures=1"]),
        RUN_TIMEOUT,
    );
    let j = fleet.journal();
    let ctx = context(&r, &j);

    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        r.stderr.contains("2 failed ([\"web-2\", \"web-3\"]), max_failures allows 1: rolling back 1 updated instance(s)"),
        "{ctx}"
    );
    assert!(
        r.stderr.contains(
            "rollout stopped: failed on [\"web-2\", \"web-3\"]; 1 updated instance(s) rolled back"
        ),
        "{ctx}"
    );
    // As scripts/rolling.rhai documents: the updated instance (web-1) is
    // taken out again, rolled back, health-checked and put back; the failed
    // ones are compensated by the runtime and named.
    let mut web1 = ops(&CYCLE);
    web1.extend(ops(&CYCLE));
    assert_eq!(j.steps("web-1"), web1, "{ctx}");
    for inst in ["web-2", "web-3"] {
        let mut steps = ops(&CYCLE[..3]);
        steps.push(("health".into(), Some(false)));
        steps.extend(ops(&COMPENSATE_TOUCHED));
        assert_eq!(j.steps(inst), steps, "{inst}\n{ctx}");
    }
    let comps: Vec<(String, bool)> = j
        .compensations()
        .into_iter()
        .map(|(i, ok, _)| (i, ok))
        .collect();
    assert_eq!(
        comps,
        vec![("web-2".to_string(), true), ("web-3".to_string(), true)],
        "{ctx}"
    );
    let end = run_end(&j);
    assert_eq!(end["outcome"], "failed", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");
    assert_eq!(names(&end["failed"]), vec!["web-2", "web-3"], "{ctx}");
    assert_fleet_on(&fleet, "v1", &ctx);
}
