//! Issue 18, operator control: `rollscript pause`, `resume`, `abort`,
//! `promote` from a second process (playing another machine with
//! `ROLLSCRIPT_HOSTNAME`) steer a run on a real HAProxy fleet, through the
//! local state folder and through PostgreSQL; `approval()` is answered by
//! `resume` from outside.
//!
//! The deploy command is a wrapper that marks `started-<instance>` and
//! waits for `go-<instance>`, so each test knows exactly where the run is
//! when it speaks to it, without timing guesses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::journal::Journal;
use crate::harness::load::Load;
use crate::harness::postgres::Postgres;
use crate::harness::run::{Finished, Running};
use crate::harness::{one_fleet_at_a_time, repo, rollscript, wait_until};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(60);
/// The machine the control commands come from.
const OPS: &str = "ops-laptop";

/// Three instances on v1 behind HAProxy; `app.deploy` marks
/// `started-$NAME`, waits for `go-$NAME`, then deploys.
fn gated_fleet() -> Fleet {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    fleet.set_deploy("mark started-$NAME\nwait_for go-$NAME\nexec \"$bin/deploy.sh\" \"$@\"");
    fleet
        .inventory()
        .deploy(&fleet.test_deploy())
        .set("ssh", "command_timeout", "\"90s\"")
        .write(&fleet.inventory_path());
    fleet
}

/// `rollscript ARGS… -i INVENTORY` as run on `host`.
fn on(host: &str, inventory: &Path, args: &[&str]) -> Command {
    let mut c = rollscript();
    c.current_dir(repo())
        .env("ROLLSCRIPT_HOSTNAME", host)
        .args(args)
        .arg("-i")
        .arg(inventory);
    c
}

/// `rollscript COMMAND` from the operator's machine; asserts it was sent.
fn say(fleet: &Fleet, inventory: &Path, command: &str) -> Finished {
    let r = fleet.exec(command, on(OPS, inventory, &[command]), WAIT);
    assert_eq!(r.code, Some(0), "rollscript {command}:\n{}", r.dump());
    assert!(
        r.stdout.contains(&format!("{command} sent to run ")),
        "{}",
        r.dump()
    );
    r
}

fn wait_for_log(run: &Running, text: &str) {
    wait_until(&format!("{text:?} in the run's log"), WAIT, || {
        run.stderr_so_far().contains(text)
    });
}

/// (command, by) of the journal's control records.
fn controls(j: &Journal) -> Vec<(String, String)> {
    j.of_type("control")
        .into_iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap_or_default().to_string(),
                r["by"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `user@ops-laptop`, the user being the run's own (the same account runs both).
fn ops_by(j: &Journal) -> String {
    let user = j.of_type("run_start")[0]["user"]
        .as_str()
        .unwrap()
        .to_string();
    format!("{user}@{OPS}")
}

fn assert_all_up(fleet: &Fleet, ctx: &str) {
    let states = fleet.lb_states();
    assert!(
        states.iter().all(|(_, s)| s == "UP"),
        "every server UP: {states:?}\n{ctx}"
    );
}

/// Pause while web-1 deploys; web-1 comes back, then the run holds before
/// web-2 with every server UP (sampled) until resume.
fn pause_holds_then_resume_completes(
    fleet: &Fleet,
    run_on: &Path,
    control_on: &Path,
    journals: &dyn Fn() -> Vec<PathBuf>,
) {
    let run = fleet.spawn(
        "run",
        on(
            "ci-runner",
            run_on,
            &[
                "run",
                "scripts/rolling.rhai",
                "--yes",
                "--var",
                "version=v2",
            ],
        ),
    );
    fleet.wait_ctl("started-web-1", WAIT);
    let paused = say(fleet, control_on, "pause");
    assert!(
        paused.stdout.contains("it holds at the next safe point"),
        "{}",
        paused.dump()
    );
    // web-1 is out and deploying: the pause lets it finish and come back.
    fleet.touch("go-web-1");
    wait_for_log(&run, "holding before deregister web-2");
    let sampler = fleet.sampler();
    std::thread::sleep(Duration::from_millis(1500));
    let held = sampler.stop();
    let ctx = format!(
        "--- run so far\n{}\n--- lb\n{}",
        run.stderr_so_far(),
        held.render()
    );
    assert!(held.count() > 50, "the LB was sampled throughout: {ctx}");
    assert_eq!(held.failed_reads(), 0, "{ctx}");
    assert_eq!(
        held.min_in_service(),
        3,
        "every server UP while paused: {ctx}"
    );
    assert!(
        !fleet.path("ctl/started-web-2").exists(),
        "web-2 was not deployed while paused: {ctx}"
    );
    assert_eq!(fleet.version("web-1"), "v2", "{ctx}");
    assert_eq!(fleet.version("web-2"), "v1", "{ctx}");
    let j = Journal::read(&journals()[0]);
    assert!(
        j.steps("web-2").is_empty(),
        "nothing done to web-2 while paused: {ctx}"
    );
    assert!(
        run.stderr_so_far()
            .contains(&format!("paused by {} since ", ops_by(&j))),
        "{ctx}"
    );

    fleet.touch("go-web-2");
    fleet.touch("go-web-3");
    say(fleet, control_on, "resume");
    let r = run.wait(RUN_TIMEOUT);
    let j = Journal::read(&journals()[0]);
    let ctx = format!("{}\n--- journal\n{}", r.dump(), j.dump());
    assert_eq!(r.code, Some(0), "{ctx}");
    assert!(
        r.stderr
            .contains("rolling deploy done: all 3 instances updated"),
        "{ctx}"
    );
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.version(name), "v2", "{name}: {ctx}");
    }
    assert_all_up(fleet, &ctx);
    let by = ops_by(&j);
    assert_eq!(
        controls(&j),
        vec![
            ("pause".to_string(), by.clone()),
            ("resume".to_string(), by.clone())
        ],
        "the journal names who paused and who resumed: {ctx}"
    );
    assert!(r.stderr.contains(&format!("resumed by {by}")), "{ctx}");
}

#[test]
fn pause_from_another_process_holds_a_rolling_deploy_with_every_server_up_until_resume() {
    let _one = one_fleet_at_a_time();
    let fleet = gated_fleet();
    let inv = fleet.inventory_path();
    pause_holds_then_resume_completes(&fleet, &inv, &inv, &|| fleet.journals());
}

#[test]
fn pause_and_resume_reach_the_run_from_another_machine_through_postgresql() {
    let _one = one_fleet_at_a_time();
    let pg = Postgres::start();
    let fleet = gated_fleet();
    let state = format!(
        "\n[state]\nbackend = \"postgres\"\nurl = \"{}\"\n",
        pg.url()
    );
    let text = std::fs::read_to_string(fleet.inventory_path()).unwrap();
    // Two working copies, each with its own .rollscript/: only the database is shared.
    let copy = |host: &str| {
        let dir = fleet.root().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let inv = dir.join("rollscript.toml");
        std::fs::write(&inv, format!("{text}{state}")).unwrap();
        inv
    };
    let (runner, laptop) = (copy("ci-runner"), copy(OPS));
    let runs = runner.parent().unwrap().join(".rollscript/runs");
    let journals = || {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&runs)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        v.sort();
        v
    };
    pause_holds_then_resume_completes(&fleet, &runner, &laptop, &journals);
    assert!(
        !laptop
            .parent()
            .unwrap()
            .join(".rollscript/control")
            .exists(),
        "the laptop's requests went to PostgreSQL, not to a local folder"
    );
}

/// Polls the journal until `instance`'s `wait_in_service` succeeded.
fn wait_in_service(journals: &dyn Fn() -> Vec<PathBuf>, instance: &str) {
    wait_until(&format!("{instance} back in service"), WAIT, || {
        journals().first().is_some_and(|p| {
            Journal::read(p)
                .steps(instance)
                .contains(&("wait_in_service".to_string(), Some(true)))
        })
    });
}

#[test]
fn abort_during_a_canary_bake_rolls_the_canary_back_and_exits_1_naming_who_aborted() {
    let _one = one_fleet_at_a_time();
    let fleet = gated_fleet();
    let inv = fleet.inventory_path();
    for name in ["web-1", "web-2", "web-3"] {
        fleet.touch(&format!("go-{name}"));
    }
    let load = Load::start(fleet.lb_addr(), 20, Duration::from_secs(240));
    let run = fleet.spawn(
        "run",
        on(
            "ci-runner",
            &inv,
            &[
                "run",
                "scripts/canary.rhai",
                "--yes",
                "--summary",
                "json",
                "--var",
                "version=v2",
                "--var",
                "stages=1,100%",
                "--var",
                "bake=10m",
                "--var",
                "gate_interval=1s",
            ],
        ),
    );
    wait_in_service(&|| fleet.journals(), "web-1");
    assert_eq!(fleet.version("web-1"), "v2");
    std::thread::sleep(Duration::from_millis(500));
    say(&fleet, &inv, "abort");
    let r = run.wait(RUN_TIMEOUT);
    let report = load.stop();
    let j = fleet.journal();
    let by = ops_by(&j);
    let ctx = format!(
        "{}\n--- journal\n{}\n--- load\n{}",
        r.dump(),
        j.dump(),
        report.summary()
    );
    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        r.stderr.contains(&format!(
            "canary aborted: stage 1 gate: aborted by {by}; 1 instance(s) rolled back"
        )),
        "{ctx}"
    );
    assert!(
        r.stderr.contains(&format!("exit 1: aborted by {by}")),
        "the summary says who aborted: {ctx}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(r.stdout.trim()).expect("--summary json on stdout");
    assert_eq!(summary["exit_code"], 1, "{ctx}");
    assert_eq!(
        summary["aborted_by"],
        serde_json::Value::String(by.clone()),
        "{ctx}"
    );
    // The canary is back on v1 and in service; nobody else was touched.
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.version(name), "v1", "{name}: {ctx}");
    }
    assert_all_up(&fleet, &ctx);
    assert!(
        j.steps("web-2").is_empty() && j.steps("web-3").is_empty(),
        "{ctx}"
    );
    assert_eq!(controls(&j), vec![("abort".to_string(), by)], "{ctx}");
    assert!(report.failures().is_empty(), "no request failed: {ctx}");
}

#[test]
fn promote_ends_a_ten_minute_canary_bake_within_a_second() {
    let _one = one_fleet_at_a_time();
    let fleet = gated_fleet();
    let inv = fleet.inventory_path();
    for name in ["web-1", "web-2", "web-3"] {
        fleet.touch(&format!("go-{name}"));
    }
    let started = Instant::now();
    let run = fleet.spawn(
        "run",
        on(
            "ci-runner",
            &inv,
            &[
                "run",
                "scripts/canary.rhai",
                "--yes",
                "--var",
                "version=v2",
                "--var",
                "stages=1,100%",
                "--var",
                "bake=10m",
            ],
        ),
    );
    wait_in_service(&|| fleet.journals(), "web-1");
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    say(&fleet, &inv, "promote");
    wait_for_log(&run, "bake of 10m ended early as passed: promoted");
    let ended = sent.elapsed();
    let r = run.wait(Duration::from_secs(60));
    let j = fleet.journal();
    let ctx = format!("{}\n--- journal\n{}", r.dump(), j.dump());
    println!(
        "promote: `rollscript promote` sent → bake ended (seen in the log) in {:.2}s; whole run {:.1}s",
        ended.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(r.code, Some(0), "{ctx}");
    assert!(
        r.took < Duration::from_secs(60),
        "a 10m bake ended early: {ctx}"
    );
    assert!(
        r.stderr.contains(&format!("promote by {}", ops_by(&j))),
        "{ctx}"
    );
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.version(name), "v2", "{name}: {ctx}");
    }
    assert_eq!(
        controls(&j),
        vec![("promote".to_string(), ops_by(&j))],
        "{ctx}"
    );
}

#[test]
fn an_approval_in_a_script_is_answered_yes_by_resume_from_another_process() {
    let _one = one_fleet_at_a_time();
    let fleet = gated_fleet();
    let inv = fleet.inventory_path();
    for name in ["web-1", "web-2", "web-3"] {
        fleet.touch(&format!("go-{name}"));
    }
    let script = fleet.path("approve.rhai");
    std::fs::write(
        &script,
        "import \"steps\" as steps;\n\
         let fleet = instances();\n\
         steps::deploy_one(fleet[0]);\n\
         if !approval(\"promote the canary?\") { fail(\"gate_failed\", \"not approved\"); }\n\
         for inst in fleet.extract(1) { steps::deploy_one(inst); }\n\
         info(\"all deployed\");\n",
    )
    .unwrap();
    let script = script.display().to_string();
    let plan = fleet.exec("plan", on("ci-runner", &inv, &["plan", &script]), WAIT);
    assert!(
        plan.stdout.contains("approval: promote the canary? (y/n on the terminal, or `rollscript resume` = yes / `rollscript abort` = no)"),
        "the approval is a step of the plan:\n{}",
        plan.dump()
    );
    let run = fleet.spawn(
        "run",
        on(
            "ci-runner",
            &inv,
            &["run", &script, "--yes", "--var", "version=v2"],
        ),
    );
    wait_for_log(&run, "waiting for approval: promote the canary?");
    // Nothing goes on while the question waits (--yes does not answer it).
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(fleet.version("web-2"), "v1");
    say(&fleet, &inv, "resume");
    let r = run.wait(RUN_TIMEOUT);
    let j = fleet.journal();
    let ctx = format!("{}\n--- journal\n{}", r.dump(), j.dump());
    assert_eq!(r.code, Some(0), "{ctx}");
    assert!(r.stderr.contains("all deployed"), "{ctx}");
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.version(name), "v2", "{name}: {ctx}");
    }
    let by = ops_by(&j);
    let approval = j
        .of_type("control")
        .into_iter()
        .find(|r| r["command"] == "approval")
        .unwrap_or_else(|| panic!("an approval record: {ctx}"));
    assert_eq!(approval["by"], serde_json::Value::String(by), "{ctx}");
    assert_eq!(approval["detail"], "promote the canary?: yes", "{ctx}");
}

#[test]
fn control_commands_without_an_active_run_say_so_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("rollscript.toml");
    std::fs::write(
        &inv,
        "[app]\nname = \"shop\"\ndeploy = \"true\"\n[lb]\nkind = \"none\"\n[[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    let exec = |args: &[&str]| Running::spawn(on(OPS, &inv, args), dir.path(), args[0]).wait(WAIT);
    for command in ["pause", "resume", "abort", "promote"] {
        let r = exec(&[command]);
        assert_eq!(r.code, Some(2), "{}", r.dump());
        assert!(
            r.stderr.contains(&format!(
                "no run of {} is active (the deploy lock is free in ",
                inv.display()
            )) && r.stderr.contains(&format!("nothing to {command}")),
            "{}",
            r.dump()
        );
    }
    let r = exec(&["pause", "20990101T000000Z-1"]);
    assert_eq!(r.code, Some(2), "{}", r.dump());
    assert!(
        r.stderr.contains("no run \"20990101T000000Z-1\" of "),
        "{}",
        r.dump()
    );
}
