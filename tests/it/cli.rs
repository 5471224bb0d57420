//! The command line end to end: plans, JSON logs, progress in a terminal and
//! in a pipe, webhooks, completions, the generated reference.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;

use crate::harness::{repo, rollscript};

fn plan_for(n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut inv = std::fs::read_to_string(repo().join("examples/haproxy.toml")).unwrap();
    inv.truncate(inv.find("[[instances]]").unwrap());
    if n == 1 {
        // One instance cannot be drained with min_in_service = 1: the plan
        // would (rightly) stop at the capacity guard.
        inv = inv.replace("min_in_service = 1", "min_in_service = 0");
    }
    for i in 1..=n {
        inv.push_str(&format!(
            "[[instances]]\nname = \"web-{i}\"\nhost = \"10.0.1.{}\"\n\n",
            9 + i
        ));
    }
    let path = dir.path().join("rollscript.toml");
    std::fs::write(&path, inv).unwrap();
    let out = rollscript()
        .current_dir(repo())
        .args(["plan", "scripts/rolling.rhai", "-i"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join(".rollscript").exists(),
        "a plan writes no journal"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .replace(&path.display().to_string(), "INVENTORY")
}

#[test]
fn plan_snapshots_for_1_3_and_10_instances() {
    insta::assert_snapshot!("plan_1", plan_for(1));
    insta::assert_snapshot!("plan_3", plan_for(3));
    insta::assert_snapshot!("plan_10", plan_for(10));
}

#[test]
fn plan_lists_drain_deploy_health_register_for_every_instance_in_order() {
    let plan = plan_for(3);
    let mut at = 0;
    for host in ["web-1", "web-2", "web-3"] {
        for step in ["drain", "deploy.sh", "/health", "ready", "wait until UP"] {
            let needle = if step == "deploy.sh" || step == "/health" {
                step.to_string()
            } else {
                format!("credit_radar/{host}: {step}")
            };
            let found = plan[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{needle} after byte {at} in\n{plan}"));
            at += found + 1;
        }
    }
    assert!(plan.contains("Estimated duration: typical"), "{plan}");
}

fn write_case(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rollscript.toml"),
        "[app]\nname = \"demo\"\ndeploy = \"true\"\n[lb]\nkind = \"none\"\n[[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("main.rhai"), script).unwrap();
    dir
}

#[test]
fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    let dir =
        write_case("for i in instances() { deregister(i); register(i); }\nlocal(\"echo hi\");\n");
    let out = rollscript()
        .current_dir(dir.path())
        .args(["run", "main.rhai", "--yes", "--log-format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["timestamp"].is_string() && e["level"].is_string() && e["message"].is_string()));
    let steps: Vec<&str> = events.iter().filter_map(|e| e["step"].as_str()).collect();
    assert!(
        steps.contains(&"deregister") && steps.contains(&"register") && steps.contains(&"exec"),
        "{steps:?}"
    );
    assert!(events.iter().any(|e| e["instance"] == "web-1"));
    assert!(events
        .iter()
        .any(|e| e["stream"] == "stdout" && e["message"].as_str().unwrap().contains("hi")));
    assert!(events
        .iter()
        .any(|e| e["message"] == "run started" && e["run"].is_string()));
}

#[test]
fn in_a_pipe_there_are_plain_timestamped_lines_and_no_control_codes() {
    let dir = write_case("for i in instances() { deregister(i); sleep(300); register(i); }\n");
    let out = rollscript()
        .current_dir(dir.path())
        .args(["run", "main.rhai", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !stderr.contains('\u{1b}'),
        "control codes in a pipe: {stderr:?}"
    );
    let first = stderr.lines().next().unwrap();
    assert!(
        first.len() > 12 && first.as_bytes()[2] == b':' && first.as_bytes()[8] == b'.',
        "{first}"
    );
    assert!(
        stderr.contains("Summary") && stderr.contains("exit 0: success"),
        "{stderr}"
    );
}

#[test]
fn in_a_terminal_the_progress_bars_draw() {
    let dir = write_case("for i in instances() { deregister(i); sleep(700); register(i); }\n");
    // util-linux `script` gives the command a pseudo-terminal.
    let cmd = format!("{} run main.rhai --yes", env!("CARGO_BIN_EXE_rollscript"));
    let out = Command::new("script")
        .current_dir(dir.path())
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .args(["-qfec", &cmd, "/dev/null"])
        .output()
        .expect("util-linux `script` is installed");
    assert_eq!(out.status.code(), Some(0));
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("instances ·"),
        "no progress bar in a terminal: {screen:?}"
    );
    assert!(screen.contains('\u{1b}'), "a terminal gets control codes");
    assert!(screen.contains("Summary"), "{screen}");
}

#[test]
fn notify_posts_a_slack_compatible_webhook_and_a_dead_one_is_only_a_warning() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut len = 0;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .unwrap();
        String::from_utf8(body).unwrap()
    });
    let dead = crate::harness::free_port("127.0.0.1");
    let dir = write_case(&format!(
        "let ok = notify(\"http://127.0.0.1:{port}/hook\", \"deploy of demo done\");\n\
         let dead = notify(\"http://127.0.0.1:{dead}/hook\", \"nobody listens\");\n\
         if !ok || dead {{ throw `ok=${{ok}} dead=${{dead}}`; }}\n"
    ));
    let out = rollscript()
        .current_dir(dir.path())
        .args(["run", "main.rhai", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(server.join().unwrap(), r#"{"text":"deploy of demo done"}"#);
    assert!(
        stderr.contains("notification not delivered: connection refused (the deploy goes on)"),
        "{stderr}"
    );
}

#[test]
fn the_checked_in_reference_is_up_to_date() {
    let out = rollscript().args(["api", "--markdown"]).output().unwrap();
    let generated = String::from_utf8(out.stdout).unwrap();
    let checked_in = std::fs::read_to_string(repo().join("docs/api.md")).unwrap();
    assert!(
        generated == checked_in,
        "docs/api.md is stale: run `cargo run -- api --markdown > docs/api.md`"
    );
    for f in [
        "deregister(",
        "register(",
        "wait_drained(",
        "ssh(",
        "health(",
        "sleep(",
        "parallel(",
        "once(",
        "chunks(",
    ] {
        assert!(
            generated.contains(&format!("### `{f}")),
            "{f} missing from the reference"
        );
    }
}

#[test]
fn api_json_and_definitions_come_from_the_engine() {
    let out = rollscript().args(["api", "--json"]).output().unwrap();
    let fns: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ssh = fns.iter().find(|f| f["name"] == "ssh").unwrap();
    assert_eq!(ssh["signature"], "ssh(inst: Instance, cmd: Dynamic) -> Map");
    let dir = tempfile::tempdir().unwrap();
    let out = rollscript()
        .args(["api", "--definitions"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let defs = std::fs::read_to_string(dir.path().join("__static__.d.rhai")).unwrap();
    assert!(defs.contains("fn wait_drained("), "{defs}");
}

#[test]
fn completions_and_help_with_examples() {
    for shell in ["bash", "zsh", "fish"] {
        let out = rollscript().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("recover"),
            "{shell}"
        );
    }
    for sub in [
        "run",
        "plan",
        "check",
        "api",
        "recover",
        "unlock",
        "pause",
        "resume",
        "abort",
        "promote",
        "runs",
        "completions",
        "man",
        "init",
        "doctor",
    ] {
        let out = rollscript().args([sub, "--help"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{sub} --help has no example"
        );
    }
}

#[test]
fn check_passes_the_shipped_scripts_and_fails_a_broken_one_with_exit_2() {
    let out = rollscript()
        .current_dir(repo())
        .args([
            "check",
            "scripts/rolling.rhai",
            "scripts/canary.rhai",
            "scripts/blue_green.rhai",
            "scripts/migration.rhai",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = write_case("let a = 1;\nlet b = 2;\n\n\n\n\nlet c = (a + ;\n");
    let out = rollscript()
        .current_dir(dir.path())
        .args(["check", "main.rhai"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--> main.rhai:7:14"), "{stderr}");
    assert!(
        stderr.contains("\n  |              ^\n"),
        "caret under column 14: {stderr}"
    );
}

fn run_with_stdin(dir: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    let mut child = rollscript()
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn step_mode_asks_before_each_mutating_step() {
    let dir = write_case("for i in instances() { deregister(i); register(i); }\n");
    // "no" skips the first step: the script sees a catchable `cancelled` error.
    let out = run_with_stdin(dir.path(), &["run", "main.rhai", "--step"], "n\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("next step: no load balancer: skip deregister of web-1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error[cancelled]: web-1: skipped by the operator"),
        "{stderr}"
    );
    // "yes" then "all": every step runs, the second prompt is the last.
    let out = run_with_stdin(dir.path(), &["run", "main.rhai", "--step"], "y\na\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.matches("next step:").count(), 2, "{stderr}");
}

#[test]
fn secrets_never_reach_the_logs_or_the_journal() {
    let dir = write_case(
        "local(\"echo connecting to postgres://deploy:hunter2@db.example/app > /dev/null\");\n",
    );
    let out = rollscript()
        .current_dir(dir.path())
        .args(["run", "main.rhai", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("hunter2") && stderr.contains("deploy:***@db.example"),
        "{stderr}"
    );
    let runs = dir.path().join(".rollscript/runs");
    for f in std::fs::read_dir(runs).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn prometheus_query_reads_the_first_sample_of_an_instant_query() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.0125"]}]}}"#;
        write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request_line
    });
    let dir = write_case(&format!(
        "let rate = prometheus_query(\"http://127.0.0.1:{port}\", \"sum(rate(http_requests_total{{code=~\\\"5..\\\"}}[5m]))\");\n\
         if rate != 0.0125 {{ throw `got ${{rate}}`; }}\n"
    ));
    let out = rollscript()
        .current_dir(dir.path())
        .args(["run", "main.rhai", "--yes"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /api/v1/query?query=sum%28rate%28http_requests_total"),
        "{request}"
    );
}

/// The strategies build the deploy command before the first instance: an
/// inventory without `app.deploy` stops the plan with the reason and
/// before any step (no drain of an instance that could not be deployed).
#[test]
fn a_missing_deploy_command_stops_every_strategy_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let inv = std::fs::read_to_string(repo().join("examples/haproxy.toml")).unwrap();
    let deploy = inv.lines().find(|l| l.starts_with("deploy ")).unwrap();
    let path = dir.path().join("rollscript.toml");
    std::fs::write(&path, inv.replace(&format!("{deploy}\n"), "")).unwrap();
    for (script, vars) in [
        ("scripts/rolling.rhai", &["version=v2"][..]),
        ("scripts/canary.rhai", &["version=v2"][..]),
        (
            "scripts/migration.rhai",
            &["version=v2", "compatible_ref=v1"][..],
        ),
        ("examples/custom_rolling.rhai", &["version=v2"][..]),
    ] {
        let mut cmd = rollscript();
        cmd.current_dir(repo())
            .args(["plan", script, "-i"])
            .arg(&path);
        for v in vars {
            cmd.args(["--var", v]);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_ne!(out.status.code(), Some(0), "{script}: {stdout}{stderr}");
        assert!(
            stderr.contains("the inventory has no app.deploy command"),
            "{script}: {stderr}"
        );
        assert!(
            !stdout.lines().any(|l| l.contains(": drain")),
            "{script}: a step before the error:\n{stdout}"
        );
    }
}
