//! Whole runs against in-memory fakes: compensation, journal, lock, capacity
//! guard and recover, with the shipped rolling script.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::journal::{self, Record};
use crate::lock;
use crate::primitives::MemberState;
use crate::providers::fake::Fakes;
use crate::run::{run_with, Outcome, RunOptions};

mod control;
mod safety;

const INVENTORY: &str = r#"
[app]
name = "demo"
deploy = "./deploy.sh"
rollback = "./rollback.sh"
[health]
port = 4000
[lb]
kind = "none"
min_in_service = MIN
[[instances]]
name = "web-1"
host = "127.0.0.1"
[[instances]]
name = "web-2"
host = "127.0.0.2"
[[instances]]
name = "web-3"
host = "127.0.0.3"
"#;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(min_in_service: &str) -> Self {
        Self::with_app(min_in_service, "")
    }

    /// With extra lines in `[app]`.
    fn with_app(min_in_service: &str, app: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rollscript.toml"),
            INVENTORY
                .replace("MIN", min_in_service)
                .replace("[health]", &format!("{app}\n[health]")),
        )
        .unwrap();
        Self { dir }
    }

    fn inventory(&self) -> PathBuf {
        self.dir.path().join("rollscript.toml")
    }

    fn opts(&self, vars: &[(&str, &str)]) -> RunOptions {
        RunOptions {
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rolling.rhai"),
            inventory: self.inventory(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            dry_run: false,
            yes: true,
            lock_wait: Duration::ZERO,
            only_failed: None,
            step: false,
            include_parked: false,
            preflight: false,
            summary: crate::run::SummaryFormat::Off,
        }
    }

    /// Writes the journal of run `id`, whose process is gone: its start,
    /// then `records` (JSON lines), and no end.
    fn dead_run(&self, id: &str, records: &[&str]) {
        let dir = journal::runs_dir(&self.inventory());
        std::fs::create_dir_all(&dir).unwrap();
        let start = Record::RunStart {
            run: id.into(),
            at: journal::now(),
            script: "scripts/rolling.rhai".into(),
            script_sha256: String::new(),
            inventory: self.inventory().display().to_string(),
            inventory_sha256: String::new(),
            user: "ops".into(),
            host: lock::hostname(),
            pid: 4_000_000,
            args: vec![],
            identity: None,
            inventory_path: None,
            script_path: None,
            boot_id: String::new(),
            proc_start: 0,
            instances: vec![],
        };
        let mut lines = vec![serde_json::to_string(&start).unwrap()];
        lines.extend(records.iter().map(|r| r.to_string()));
        std::fs::write(dir.join(format!("{id}.jsonl")), lines.join("\n") + "\n").unwrap();
    }

    /// The deploy lock's record, if any.
    fn lock_status(&self) -> Option<crate::state::LockStatus> {
        let inv = crate::config::Inventory::load(&self.inventory()).unwrap();
        crate::state::open(&inv).unwrap().lock_status().unwrap()
    }

    /// The first run's journal.
    fn journal(&self) -> Vec<Record> {
        let files = journal::list(&self.inventory());
        assert!(!files.is_empty(), "a journal per run");
        journal::read(&files[0]).unwrap()
    }
}

fn run(env: &Env, fakes: &Fakes, vars: &[(&str, &str)]) -> Outcome {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let providers = fakes.providers();
    rt.block_on(run_with(env.opts(vars), move |_| providers.clone()))
        .unwrap_or_else(|f| f.outcome)
}

/// A run of the shipped `scripts/{script}.rhai`.
fn run_script(env: &Env, fakes: &Fakes, script: &str, vars: &[(&str, &str)]) -> Outcome {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let providers = fakes.providers();
    let mut opts = env.opts(vars);
    opts.script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("scripts/{script}.rhai"));
    rt.block_on(run_with(opts, move |_| providers.clone()))
        .unwrap_or_else(|f| f.outcome)
}

fn end_of(records: &[Record]) -> (String, Vec<String>, Vec<String>) {
    match records.last().unwrap() {
        Record::RunEnd {
            outcome,
            left_out,
            failed,
            ..
        } => (outcome.clone(), left_out.clone(), failed.clone()),
        other => panic!("last record is not run_end: {other:?}"),
    }
}

#[test]
fn rolling_success_journals_every_effect_and_releases_the_lock() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    assert_eq!(run(&env, &fakes, &[]), Outcome::Success);
    assert_eq!(
        fakes.lb.calls.all(),
        ["web-1", "web-2", "web-3"]
            .iter()
            .flat_map(
                |n| ["deregister", "wait_drained", "register", "wait_in_service"]
                    .map(|op| format!("{op} {n}"))
            )
            .collect::<Vec<_>>()
    );
    let records = env.journal();
    assert!(
        matches!(&records[0], Record::RunStart { script, .. } if script.ends_with("rolling.rhai"))
    );
    let intents = records
        .iter()
        .filter(|r| matches!(r, Record::Intent { .. }))
        .count();
    let results = records
        .iter()
        .filter(|r| matches!(r, Record::Result { ok: true, .. }))
        .count();
    assert_eq!(
        (intents, results),
        (18, 18),
        "6 effects per instance, each with a result"
    );
    assert_eq!(end_of(&records), ("success".into(), vec![], vec![]));
    assert!(env.lock_status().is_none(), "lock released");
}

#[test]
fn a_failed_deploy_is_rolled_back_and_put_back_when_healthy() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-2", "deploy.sh", 7, "migration pending");
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    let ssh = fakes.ssh.calls.all();
    assert!(
        ssh.contains(&"ssh web-2: ./rollback.sh".to_string()),
        "{ssh:?}"
    );
    // The rollout stopped at web-2: web-3 was never touched.
    assert!(!fakes.lb.calls.all().iter().any(|c| c.ends_with("web-3")));
    assert_eq!(
        fakes.lb.state_of("web-2"),
        crate::primitives::MemberState::InService
    );
    let records = env.journal();
    assert!(records.iter().any(
        |r| matches!(r, Record::Compensation { instance, restored: true, detail, .. }
        if instance == "web-2" && detail == "rolled back, healthy; back in service")
    ));
    let (outcome, left_out, failed) = end_of(&records);
    assert_eq!((outcome.as_str(), left_out.len()), ("failed", 0));
    assert_eq!(failed, vec!["web-2"]);
}

#[test]
fn an_unhealthy_instance_is_left_out_and_named() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-1", "deploy.sh", 1, "boom");
    fakes
        .health
        .unhealthy
        .lock()
        .unwrap()
        .insert("http://127.0.0.1:4000/health".into());
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert_eq!(
        fakes.lb.state_of("web-1"),
        crate::primitives::MemberState::OutOfService
    );
    let (_, left_out, _) = end_of(&env.journal());
    assert_eq!(left_out, vec!["web-1"]);
}

#[test]
fn the_capacity_guard_refuses_whatever_the_script_says() {
    let env = Env::new("3");
    let fakes = Fakes::new();
    assert_eq!(run(&env, &fakes, &[("batch", "100%")]), Outcome::Failed);
    assert!(
        !fakes
            .lb
            .calls
            .all()
            .iter()
            .any(|c| c.starts_with("deregister")),
        "{:?}",
        fakes.lb.calls.all()
    );
    let records = env.journal();
    assert!(records
        .iter()
        .all(|r| !matches!(r, Record::Intent { op, .. } if op == "deregister")));
}

#[test]
fn max_failures_lets_the_rollout_continue_within_budget() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-1", "deploy.sh", 1, "boom");
    assert_eq!(run(&env, &fakes, &[("max_failures", "1")]), Outcome::Failed);
    // web-1 failed within budget: web-2 and web-3 were still deployed.
    let ssh = fakes.ssh.calls.all();
    assert!(
        ssh.contains(&"ssh web-3: ./deploy.sh".to_string()),
        "{ssh:?}"
    );
}

#[test]
fn a_live_lock_holder_stops_a_second_run_with_exit_3() {
    let env = Env::new("1");
    // Another run of this process holds it (its flock is taken).
    let inv = crate::config::Inventory::load(&env.inventory()).unwrap();
    let _held = crate::state::open(&inv)
        .unwrap()
        .lock(
            &lock::Holder::me(Some("other".into())),
            Duration::ZERO,
            false,
        )
        .unwrap();
    let fakes = Fakes::new();
    assert_eq!(run(&env, &fakes, &[]), Outcome::Locked);
    assert!(fakes.lb.calls.all().is_empty(), "nothing touched");
    assert!(
        journal::list(&env.inventory()).is_empty(),
        "no journal for a run that never started"
    );
}

#[test]
fn recover_puts_back_what_a_killed_run_left_out_and_is_idempotent() {
    let env = Env::new("1");
    // A run that died (pid not alive) after deregistering web-2 and starting its deploy.
    env.dead_run(
        "20260101T000000Z-1",
        &[
            r#"{"type":"intent","seq":1,"at":"","op":"deregister","instance":"web-2","text":""}"#,
            r#"{"type":"result","seq":1,"at":"","ok":true,"duration_ms":1}"#,
            r#"{"type":"intent","seq":2,"at":"","op":"ssh","instance":"web-2","text":""}"#,
        ],
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let fakes = Fakes::new();
    // What the LB says: the dead run's deregister took effect.
    fakes.lb.park("web-2", MemberState::OutOfService);
    let p = fakes.providers();
    assert_eq!(
        rt.block_on(crate::recover::recover_with(
            &env.inventory(),
            &Default::default(),
            move |_| p.clone()
        ))
        .unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert_eq!(fakes.ssh.calls.all(), vec!["ssh web-2: ./rollback.sh"]);
    assert_eq!(
        fakes.lb.calls.all(),
        vec!["register web-2", "wait_in_service web-2"]
    );

    let again = Fakes::new();
    let p = again.providers();
    assert_eq!(
        rt.block_on(crate::recover::recover_with(
            &env.inventory(),
            &Default::default(),
            move |_| p.clone()
        ))
        .unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert!(
        again.lb.calls.all().is_empty() && again.ssh.calls.all().is_empty(),
        "second recover changes nothing"
    );
    assert!(env.lock_status().is_none());
    let _ = Path::new("");
}

#[test]
fn past_max_failures_updated_instances_are_rolled_back_too() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-2", "deploy.sh", 1, "boom");
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert_eq!(
        fakes.ssh.calls.all(),
        vec![
            "ssh web-1: ./deploy.sh",
            "ssh web-2: ./deploy.sh",
            "ssh web-2: ./rollback.sh", // the failed one, compensated at once
            "ssh web-1: ./rollback.sh", // the runbook's full rollback of the updated one
        ]
    );
    let lb = fakes.lb.calls.all();
    assert_eq!(
        lb.iter().filter(|c| *c == "deregister web-1").count(),
        2,
        "{lb:?}"
    );
    assert!(fakes.lb.calls.all().iter().all(|c| !c.ends_with("web-3")));
    for n in ["web-1", "web-2", "web-3"] {
        assert_eq!(
            fakes.lb.state_of(n),
            crate::primitives::MemberState::InService,
            "{n}"
        );
    }
}

#[test]
fn only_failed_reruns_just_the_instances_that_failed() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-2", "deploy.sh", 1, "boom");
    assert_eq!(run(&env, &fakes, &[("max_failures", "1")]), Outcome::Failed);
    let first = journal::summarise(&env.journal()).run;

    let again = Fakes::new();
    let mut opts = env.opts(&[]);
    opts.only_failed = Some(first[..12].to_string());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let providers = again.providers();
    assert_eq!(
        rt.block_on(run_with(opts, move |_| providers.clone()))
            .unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert_eq!(again.ssh.calls.all(), vec!["ssh web-2: ./deploy.sh"]);

    let mut bad = env.opts(&[]);
    bad.only_failed = Some("19990101".into());
    let none = Fakes::new();
    let providers = none.providers();
    assert_eq!(
        rt.block_on(run_with(bad, move |_| providers.clone()))
            .unwrap_or_else(|f| f.outcome),
        Outcome::Invalid
    );
    assert!(none.lb.calls.all().is_empty());
}

const BY_WEIGHT: &[(&str, &str)] = &[
    ("stage_by", "weight"),
    ("stages", "10%,100%"),
    ("bake", "0s"),
    ("gate_interval", "1ms"),
];

#[test]
fn canary_by_weight_weighs_the_canary_first_then_resets_before_the_rest() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    assert_eq!(
        run_script(&env, &fakes, "canary", BY_WEIGHT),
        Outcome::Success
    );
    let lb = fakes.lb.calls.all();
    let at = |c: &str| {
        lb.iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("no {c:?} in {lb:?}"))
    };
    // 1 of 3 at 10 %: 56 against 252 each, before the canary is deployed.
    assert!(at("weight=56 web-1") < at("deregister web-1"), "{lb:?}");
    assert!(at("weight=252 web-2") < at("deregister web-1"), "{lb:?}");
    // Back as configured before the rest of the fleet goes.
    assert!(at("register web-1") < at("weight=reset web-1"), "{lb:?}");
    assert!(at("weight=reset web-3") < at("deregister web-2"), "{lb:?}");
    assert_eq!(lb.iter().filter(|c| c.starts_with("weight=")).count(), 6);
}

#[test]
fn canary_by_weight_whose_deploy_fails_rolls_back_then_resets_the_weights() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-1", "deploy.sh", 7, "disk full");
    assert_eq!(
        run_script(&env, &fakes, "canary", BY_WEIGHT),
        Outcome::Failed
    );
    let lb = fakes.lb.calls.all();
    let resets: Vec<&String> = lb
        .iter()
        .filter(|c| c.starts_with("weight=reset"))
        .collect();
    assert_eq!(resets.len(), 3, "every weight back: {lb:?}");
    // The canary is back in service (rolled back) before its weight grows.
    let put_back = lb.iter().rposition(|c| c == "register web-1").unwrap();
    let reset = lb.iter().position(|c| c == "weight=reset web-1").unwrap();
    assert!(put_back < reset, "{lb:?}");
    assert!(fakes
        .ssh
        .calls
        .all()
        .contains(&"ssh web-1: ./rollback.sh".to_string()));
    assert!(
        !lb.iter()
            .any(|c| c.ends_with("web-2") && !c.starts_with("weight=")),
        "{lb:?}"
    );
}

#[test]
fn recover_puts_the_weights_a_killed_run_shifted_back_and_only_once() {
    let env = Env::new("1");
    // Killed during the bake: weights shifted, the canary back in service.
    env.dead_run(
        "20260101T000000Z-2",
        &[
            r#"{"type":"intent","seq":1,"at":"","op":"shift_traffic","text":""}"#,
            r#"{"type":"result","seq":1,"at":"","ok":true,"duration_ms":1}"#,
            r#"{"type":"intent","seq":2,"at":"","op":"deregister","instance":"web-1","text":""}"#,
            r#"{"type":"result","seq":2,"at":"","ok":true,"duration_ms":1}"#,
            r#"{"type":"intent","seq":3,"at":"","op":"register","instance":"web-1","text":""}"#,
            r#"{"type":"result","seq":3,"at":"","ok":true,"duration_ms":1}"#,
            r#"{"type":"intent","seq":4,"at":"","op":"wait_in_service","instance":"web-1","text":""}"#,
            r#"{"type":"result","seq":4,"at":"","ok":true,"duration_ms":1}"#,
        ],
    );
    let summary = journal::summarise(&env.journal());
    assert!(summary.weights_changed && summary.out_of_service.is_empty());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let fakes = Fakes::new();
    let p = fakes.providers();
    assert_eq!(
        rt.block_on(crate::recover::recover_with(
            &env.inventory(),
            &Default::default(),
            move |_| p.clone()
        ))
        .unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert_eq!(
        fakes.lb.calls.all(),
        [
            "weight=reset web-1",
            "weight=reset web-2",
            "weight=reset web-3"
        ]
    );
    assert!(!journal::summarise(&env.journal()).weights_changed);

    let again = Fakes::new();
    let p = again.providers();
    assert_eq!(
        rt.block_on(crate::recover::recover_with(
            &env.inventory(),
            &Default::default(),
            move |_| p.clone()
        ))
        .unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert!(again.lb.calls.all().is_empty(), "nothing left to recover");
}
