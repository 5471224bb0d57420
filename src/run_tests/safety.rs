//! Safety at the edges, on the fakes: the capacity guard under parallel
//! branches, instances found out of rotation, compensation that restores
//! capacity, failures after `register`, LB answers lost in transit, and an
//! inventory the LB disagrees with. The same cases run against real HAProxy
//! and nginx in `tests/it/safety.rs`.

use std::sync::Arc;
use std::time::Duration;

use super::{end_of, run, Env};
use crate::journal::Record;
use crate::primitives::{ActionError, ErrorKind, MemberState};
use crate::providers::fake::{FakeLb, Fakes};

/// Fakes whose LB waits take real time, so `parallel` branches overlap.
fn slow_fakes() -> Fakes {
    Fakes {
        lb: Arc::new(FakeLb {
            wait: Duration::from_millis(40),
            ..Default::default()
        }),
        ..Fakes::new()
    }
}

fn deploys(fakes: &Fakes) -> Vec<String> {
    fakes
        .ssh
        .calls
        .all()
        .into_iter()
        .filter(|c| c.ends_with("./deploy.sh"))
        .collect()
}

fn lb_calls_of(fakes: &Fakes, name: &str) -> Vec<String> {
    fakes
        .lb
        .calls
        .all()
        .into_iter()
        .filter(|c| c.ends_with(&format!(" {name}")))
        .collect()
}

fn compensation_of(env: &Env, name: &str) -> (bool, String) {
    env.journal()
        .into_iter()
        .find_map(|r| match r {
            Record::Compensation {
                instance,
                restored,
                detail,
                ..
            } if instance == name => Some((restored, detail)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no compensation record for {name}"))
}

#[test]
fn a_whole_fleet_batch_waits_for_capacity_instead_of_going_below_the_floor() {
    let env = Env::new("1");
    let fakes = slow_fakes();
    assert_eq!(run(&env, &fakes, &[("batch", "100%")]), Outcome::Success);
    assert_eq!(deploys(&fakes).len(), 3, "every instance deployed");
    assert_eq!(
        *fakes.lb.max_out.lock().unwrap(),
        2,
        "two out at once, never the third: {:?}",
        fakes.lb.calls.all()
    );
    assert!(env
        .journal()
        .iter()
        .any(|r| matches!(r, Record::Intent { op, .. } if op == "wait_capacity")));
}

#[test]
fn a_floor_of_two_lets_one_of_a_batch_of_three_out_at_a_time() {
    let env = Env::new("2");
    let fakes = slow_fakes();
    assert_eq!(run(&env, &fakes, &[("batch", "3")]), Outcome::Success);
    assert_eq!(deploys(&fakes).len(), 3);
    assert_eq!(*fakes.lb.max_out.lock().unwrap(), 1);
}

#[test]
fn an_instance_out_of_rotation_before_the_run_is_left_as_found() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.lb.park("web-2", MemberState::OutOfService);
    assert_eq!(run(&env, &fakes, &[]), Outcome::Success);
    assert!(
        lb_calls_of(&fakes, "web-2").is_empty(),
        "{:?}",
        fakes.lb.calls.all()
    );
    assert_eq!(
        deploys(&fakes),
        ["ssh web-1: ./deploy.sh", "ssh web-3: ./deploy.sh"]
    );
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::OutOfService);
}

#[test]
fn include_parked_deploys_a_parked_instance_and_leaves_it_out() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.lb.park("web-2", MemberState::Draining);
    let mut opts = env.opts(&[]);
    opts.include_parked = true;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = fakes.providers();
    assert_eq!(
        rt.block_on(crate::run::run_with(opts, move |_| p.clone()))
            .unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert_eq!(deploys(&fakes).len(), 3);
    assert!(
        lb_calls_of(&fakes, "web-2").is_empty(),
        "no LB step on web-2"
    );
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::Draining);
}

#[test]
fn an_instance_down_by_health_before_the_run_is_deployed_and_back_in_service() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.lb.park("web-2", MemberState::Unhealthy);
    assert_eq!(run(&env, &fakes, &[]), Outcome::Success);
    assert_eq!(deploys(&fakes).len(), 3);
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::InService);
}

#[test]
fn a_failed_rollback_puts_a_healthy_instance_back_and_says_so() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-2", "deploy.sh", 7, "disk full");
    fakes
        .ssh
        .fail("web-2", "rollback.sh", 1, "no previous release");
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::InService);
    let (restored, detail) = compensation_of(&env, "web-2");
    assert!(restored, "{detail}");
    assert!(
        detail.contains("rollback failed; healthy on an unknown release: put back"),
        "{detail}"
    );
    let (_, left_out, _) = end_of(&env.journal());
    assert!(left_out.is_empty());
}

#[test]
fn leave_out_keeps_an_instance_whose_rollback_failed_out() {
    let env = Env::with_app("1", "on_rollback_failure = \"leave_out\"");
    let fakes = Fakes::new();
    fakes.ssh.fail("web-2", "deploy.sh", 7, "disk full");
    fakes
        .ssh
        .fail("web-2", "rollback.sh", 1, "no previous release");
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::OutOfService);
    let (restored, detail) = compensation_of(&env, "web-2");
    assert!(
        !restored && detail.starts_with("rollback failed"),
        "{detail}"
    );
    let (_, left_out, _) = end_of(&env.journal());
    assert_eq!(left_out, ["web-2"]);
}

#[test]
fn a_failure_while_waiting_in_service_is_compensated() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.lb.fail_once.lock().unwrap().insert(
        "wait_in_service web-2".into(),
        ActionError::new(ErrorKind::HealthFailed, "marked DOWN by the LB's checks"),
    );
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert!(fakes
        .ssh
        .calls
        .all()
        .contains(&"ssh web-2: ./rollback.sh".to_string()));
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::InService);
    let (restored, detail) = compensation_of(&env, "web-2");
    assert!(restored, "{detail}");
}

#[test]
fn an_instance_the_lb_will_not_take_back_is_taken_out_again_and_named() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.lb.failures.lock().unwrap().insert(
        "wait_in_service web-2".into(),
        ActionError::new(ErrorKind::HealthFailed, "marked DOWN by the LB's checks"),
    );
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::OutOfService);
    let (restored, detail) = compensation_of(&env, "web-2");
    assert!(!restored && detail.contains("taken out again"), "{detail}");
    let (_, left_out, _) = end_of(&env.journal());
    assert_eq!(left_out, ["web-2"]);
}

#[test]
fn a_deregister_whose_answer_was_lost_is_compensated_from_the_lbs_real_state() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes.lb.failures.lock().unwrap().insert(
        "deregister web-2".into(),
        ActionError::new(ErrorKind::Lb, "connection reset by peer").outcome_unknown(),
    );
    assert_eq!(run(&env, &fakes, &[]), Outcome::Failed);
    assert_eq!(fakes.lb.state_of("web-2"), MemberState::InService);
    let records = env.journal();
    let seq = records
        .iter()
        .find_map(|r| match r {
            Record::Intent {
                seq, op, instance, ..
            } if op == "deregister" && instance.as_deref() == Some("web-2") => Some(*seq),
            _ => None,
        })
        .unwrap();
    assert!(records.iter().any(|r| matches!(r,
        Record::Result { seq: s, ok: false, unknown_outcome: true, .. } if *s == seq)));
    let (restored, _) = compensation_of(&env, "web-2");
    assert!(restored);
}

#[test]
fn an_inventory_the_lb_disagrees_with_is_refused_before_anything_is_touched() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    fakes
        .lb
        .problems
        .lock()
        .unwrap()
        .push("web-2: the LB's server web-2 is at 127.0.0.9:4000".into());
    assert_eq!(run(&env, &fakes, &[]), Outcome::Invalid);
    assert!(fakes.lb.calls.all().is_empty() && fakes.ssh.calls.all().is_empty());
    assert!(crate::journal::list(&env.inventory()).is_empty());
}

use crate::run::Outcome;

/// HAProxy-like numbers for a canary that answered nothing during its bake.
fn idle_stats(fakes: &Fakes, name: &str) {
    let stats = ["http_2xx", "http_4xx", "http_5xx", "sessions"]
        .into_iter()
        .map(|k| (k.to_string(), 0.0))
        .collect();
    fakes.lb.stats.lock().unwrap().insert(name.into(), stats);
}

#[test]
fn a_canary_that_received_no_traffic_fails_its_bake_as_inconclusive() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    idle_stats(&fakes, "web-1");
    let vars = [("bake", "1s"), ("gate_interval", "500ms")];
    assert_eq!(
        super::run_script(&env, &fakes, "canary", &vars),
        Outcome::Failed
    );
    // The canary was rolled back; the rest never deployed.
    assert!(fakes
        .ssh
        .calls
        .all()
        .contains(&"ssh web-1: ./rollback.sh".to_string()));
    assert!(!deploys(&fakes).iter().any(|c| c.contains("web-2")));
    let records = env.journal();
    let ended = records.iter().any(|r| {
        matches!(r,
        Record::RunEnd { outcome, .. } if outcome == "failed")
    });
    assert!(ended);
}

#[test]
fn a_canary_whose_gate_has_data_passes_its_bake() {
    let env = Env::new("1");
    let fakes = Fakes::new();
    // No LB numbers at all (nginx, ELBv2): health is the only gate.
    let vars = [("bake", "1s"), ("gate_interval", "500ms")];
    assert_eq!(
        super::run_script(&env, &fakes, "canary", &vars),
        Outcome::Success
    );
    assert_eq!(deploys(&fakes).len(), 3);
}

/// A script that asks, notifies and queries metrics: every one of those goes
/// through its trait (the fakes here), never straight to a terminal or the
/// network.
const SERVICES_SCRIPT: &str = r#"
if confirm("deploy?") {
    notify("https://hooks.example.com/services/T0/B0/XYZ", "go");
}
let v = prometheus_query("http://prometheus:9090", "up");
if v != () { throw "no data expected"; }
"#;

#[test]
fn confirm_notify_and_metrics_go_through_their_traits() {
    let env = Env::new("1");
    std::fs::write(env.dir.path().join("services.rhai"), SERVICES_SCRIPT).unwrap();
    let fakes = Fakes::new();
    fakes
        .services
        .operator
        .answers
        .lock()
        .unwrap()
        .push_back("y".into());
    let mut opts = env.opts(&[]);
    opts.script = env.dir.path().join("services.rhai");
    opts.yes = false;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = fakes.providers();
    let outcome = rt
        .block_on(crate::run::run_with(opts, move |_| p.clone()))
        .unwrap_or_else(|f| f.outcome);
    assert_eq!(outcome, Outcome::Success);
    assert_eq!(fakes.services.operator.questions.all(), ["deploy? [y/N] "]);
    assert_eq!(
        fakes.services.notifier.calls.all(),
        ["notify https://hooks.example.com/services/T0/B0/XYZ: go"]
    );
    assert_eq!(fakes.services.metrics.calls.all(), ["query up"]);
    let journalled: Vec<String> = env
        .journal()
        .into_iter()
        .filter_map(|r| match r {
            Record::Intent { op, .. } => Some(op),
            _ => None,
        })
        .collect();
    assert_eq!(journalled, ["notify", "metrics"]);
    // And what they answered: the operator's yes, the metric's (absent) value.
    let answers: Vec<(String, String, String)> = env
        .journal()
        .into_iter()
        .filter_map(|r| match r {
            Record::Answer {
                step,
                question,
                answer,
                ..
            } => Some((step, question, answer)),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        [
            ("confirm".into(), "deploy?".into(), "yes".into()),
            (
                "metrics".into(),
                "prometheus http://prometheus:9090: up".into(),
                "no data".into()
            ),
        ]
    );
}

#[test]
fn confirm_without_a_terminal_and_without_yes_refuses_instead_of_guessing() {
    let env = Env::new("1");
    std::fs::write(env.dir.path().join("services.rhai"), SERVICES_SCRIPT).unwrap();
    let fakes = Fakes::new();
    let mut opts = env.opts(&[]);
    opts.script = env.dir.path().join("services.rhai");
    opts.yes = false;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = fakes.providers();
    let outcome = rt
        .block_on(crate::run::run_with(opts, move |_| p.clone()))
        .unwrap_or_else(|f| f.outcome);
    assert_eq!(outcome, Outcome::Failed);
    assert!(fakes.services.notifier.calls.all().is_empty());
}
