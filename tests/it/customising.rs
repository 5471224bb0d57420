//! docs/customising.md: the example of a team's reordered rolling script
//! (`examples/custom_rolling.rhai`) passes `rollscript check`, and its plan
//! lists the steps in the documented order — smoke test after the health
//! check and before the instance is put back, a notification closing each
//! batch, the operator's go-ahead opening every batch after the first.

use crate::harness::{repo, rollscript};

const EXAMPLE: &str = "examples/custom_rolling.rhai";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The body of the first fenced block of `lang` after `after` in `text`.
fn fenced_block(text: &str, lang: &str, after: &str) -> String {
    let start = text.find(after).unwrap_or_else(|| panic!("no {after:?}"));
    let rest = &text[start..];
    let open = format!("```{lang}\n");
    let body = &rest[rest.find(&open).unwrap_or_else(|| panic!("no {open:?}")) + open.len()..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn the_documented_example_is_the_one_in_examples() {
    let doc = read("docs/customising.md");
    assert_eq!(
        fenced_block(&doc, "rhai", "This is `examples/custom_rolling.rhai`"),
        read(EXAMPLE),
        "docs/customising.md shows examples/custom_rolling.rhai verbatim"
    );
}

#[test]
fn the_custom_rolling_example_passes_check() {
    let out = rollscript()
        .current_dir(repo())
        .args(["check", EXAMPLE])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("ok  {EXAMPLE}"));
}

/// What a plan line does, and to which instance (`web-N`, from its name or
/// its address in examples/haproxy.toml).
fn step(line: &str) -> (&'static str, Option<String>) {
    let text = line.split_once(". ").map(|(_, t)| t).unwrap_or(line);
    let inst = (1..=3)
        .find(|i| text.contains(&format!("web-{i}")) || text.contains(&format!("10.0.1.{}", 9 + i)))
        .map(|i| format!("web-{i}"));
    let kind = if text.starts_with("confirm: ") {
        "confirm"
    } else if text.starts_with("notify ") {
        "notify"
    } else if text.starts_with("local: ./smoke-test.sh ") {
        "smoke"
    } else if text.starts_with("http GET ") {
        "health"
    } else if text.starts_with("ssh ") && text.contains("./deploy.sh v2") {
        "deploy"
    } else if text.ends_with(": drain") {
        "deregister"
    } else if text.contains("wait until 0 sessions") {
        "drain"
    } else if text.ends_with(": ready") {
        "register"
    } else if text.contains("wait until UP") {
        "in_service"
    } else {
        panic!("unexpected plan step {line:?}")
    };
    (kind, inst)
}

/// `rollscript plan SCRIPT -i examples/haproxy.toml --var version=v2 EXTRA…`,
/// which must succeed: its stdout.
fn plan(script: &str, extra: &[&str]) -> String {
    let out = rollscript()
        .current_dir(repo())
        .args(["plan", script, "-i", "examples/haproxy.toml"])
        .args(["--var", "version=v2"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_custom_rolling_plan_lists_the_steps_in_the_documented_order() {
    let stdout = plan(
        EXAMPLE,
        &["--var", "notify_url=https://hooks.example.com/deploys"],
    );
    let numbered: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .collect();

    let mut want = Vec::new();
    for i in 1..=3 {
        let web = Some(format!("web-{i}"));
        if i > 1 {
            want.push(("confirm", None));
        }
        for kind in [
            "deregister",
            "drain",
            "deploy",
            "health",
            "smoke",
            "register",
            "in_service",
        ] {
            want.push((kind, web.clone()));
        }
        want.push(("notify", None));
    }
    let got: Vec<(&str, Option<String>)> = numbered.iter().map(|l| step(l)).collect();
    assert_eq!(got, want, "plan:\n{stdout}");
    assert!(
        numbered[7].contains("\"credit_radar: batch 1 of 3 on v2\"")
            && numbered[8]
                .contains("batch 1 of 3 is live on v2: go on with the next 1 instance(s)?"),
        "the notification and the question name the batch:\n{stdout}"
    );

    // Every plan line the doc shows is the real plan's, word for word.
    let doc = read("docs/customising.md");
    let start = doc
        .find("$ rollscript plan examples/custom_rolling.rhai")
        .expect("the doc shows the plan command");
    let shown = &doc[start..start + doc[start..].find("```").unwrap()];
    for line in shown.lines().filter(|l| {
        l.trim_start()
            .split_once(". ")
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    }) {
        assert!(
            numbered.contains(&line),
            "docs/customising.md shows {line:?}, which the plan does not print:\n{stdout}"
        );
    }
}

// ---- a copy of scripts/rolling.rhai, edited as the guide says ---------------

use std::time::Duration;

use crate::harness::fleet::{FleetSpec, LbKind};
use crate::harness::one_fleet_at_a_time;
use crate::harness::run::Running;

/// `scripts/rolling.rhai` with the guide's two-line edit: `smoke` (a local
/// command) between `health` and `register`.
fn rolling_with_smoke_test(smoke: &str) -> String {
    let shipped = read("scripts/rolling.rhai");
    let anchor = "    register(inst);";
    assert_eq!(
        shipped.matches(anchor).count(),
        1,
        "one register step to insert before"
    );
    shipped.replace(
        anchor,
        &format!(
            "    // Our smoke test, from this machine, while the instance gets no traffic.\n    local([{smoke:?}, inst.host, version]);\n{anchor}"
        ),
    )
}

#[test]
fn a_copy_of_rolling_with_a_smoke_test_keeps_batches_and_max_failures_on_a_real_haproxy() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 4).start();
    // The smoke test records each host it ran on, and fails on web-3's.
    let web3 = fleet.instances[2].ip.clone();
    let smoke = fleet.path("smoke.sh");
    let log = fleet.path("smoke.log");
    std::fs::write(
        &smoke,
        format!(
            "#!/bin/sh\necho \"$1 $2\" >> {}\n[ \"$1\" != {web3} ] || {{ echo 'smoke: /checkout answered 500' >&2; exit 1; }}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&smoke, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = fleet.path("our_rolling.rhai");
    std::fs::write(
        &script,
        rolling_with_smoke_test(&smoke.display().to_string()),
    )
    .unwrap();
    let inv = fleet
        .inventory()
        .min_in_service(2)
        .write(&fleet.path("rollscript.toml"));
    let (script_s, inv_s) = (script.display().to_string(), inv.display().to_string());

    // The plan: the smoke test of each instance after its health check and
    // before its `ready`.
    let plan = rollscript()
        .current_dir(repo())
        .args([
            "plan",
            &script_s,
            "-i",
            &inv_s,
            "--var",
            "batch=2",
            "--var",
            "version=v2",
        ])
        .output()
        .unwrap();
    let plan_out = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(
        plan.status.success(),
        "{plan_out}{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    for i in &fleet.instances {
        let pos = |needle: &str| {
            plan_out
                .lines()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in the plan:\n{plan_out}"))
        };
        let smoke_at = pos(&format!("smoke.sh {} v2", i.ip));
        let health_at = pos(&format!("http GET http://{}:{}/health", i.ip, i.port));
        let ready_at = pos(&format!("{}: ready", i.name));
        assert!(
            health_at < smoke_at && smoke_at < ready_at,
            "{}: health ({health_at}) < smoke ({smoke_at}) < ready ({ready_at})\n{plan_out}",
            i.name
        );
    }

    // The run: batches of two (two out at once, never three: min 2 of 4),
    // web-3's failed smoke test tolerated by max_failures = 1 and
    // compensated, web-4 still deployed.
    let sampler = fleet.sampler();
    let run = Running::start(&[
        "run",
        &script_s,
        "-i",
        &inv_s,
        "--yes",
        "--var",
        "batch=2",
        "--var",
        "max_failures=1",
        "--var",
        "version=v2",
    ])
    .wait(Duration::from_secs(180));
    let lb = sampler.stop();
    let ctx = format!("{}\n--- lb\n{}", run.dump(), lb.render());
    assert_eq!(run.code, Some(1), "{ctx}");
    assert!(
        run.stderr
            .contains("rolling deploy finished with 1 failure(s) within max_failures: [\"web-3\"]"),
        "{ctx}"
    );
    assert_eq!(
        lb.min_in_service(),
        2,
        "two instances out at once, never three\n{ctx}"
    );
    let versions = fleet.versions();
    let v: Vec<&str> = versions.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        v,
        ["v2", "v2", "v1", "v2"],
        "web-3 rolled back, the others updated\n{ctx}"
    );
    assert!(
        fleet.lb_states().iter().all(|(_, s)| s == "UP"),
        "every server back UP: {:?}\n{ctx}",
        fleet.lb_states()
    );
    let smoked = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        smoked.lines().count(),
        4,
        "one smoke test per instance:\n{smoked}"
    );
}

/// scripts/rolling.rhai hooks `after_batch` only when there is somewhere to
/// post: with `notify_url` every batch ends with its notification step, in
/// the batch's own words; without one there is none.
#[test]
fn the_rolling_plan_notifies_after_each_batch_only_with_a_notify_url() {
    let posts = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .filter(|l| l.contains("hooks.example.com"))
            .map(|l| l.split_once(". ").map_or(l, |(_, t)| t).to_string())
            .collect()
    };
    let rolling = "scripts/rolling.rhai";
    let with = plan(
        rolling,
        &[
            "--var",
            "batch=2",
            "--var",
            "notify_url=https://hooks.example.com/deploys",
        ],
    );
    let got = posts(&with);
    assert_eq!(got.len(), 4, "start, 2 batches, done:\n{with}");
    assert!(
        got[1].contains("batch 1 of 2 done: 2 of 3 updated, 0 failed"),
        "{with}"
    );
    assert!(
        got[2].contains("batch 2 of 2 done: 3 of 3 updated, 0 failed"),
        "{with}"
    );
    // The second batch's notification comes after its last instance is back.
    let lines: Vec<&str> = with.lines().collect();
    let last_up = lines
        .iter()
        .rposition(|l| l.contains("wait until UP"))
        .unwrap();
    let last_post = lines
        .iter()
        .rposition(|l| l.contains("batch 2 of 2 done"))
        .unwrap();
    assert!(last_post > last_up, "{with}");

    let without = plan(rolling, &["--var", "batch=2"]);
    assert_eq!(posts(&without), Vec::<String>::new(), "{without}");
    assert!(without.contains("wait until UP"), "{without}");
}
