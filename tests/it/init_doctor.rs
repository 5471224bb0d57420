//! Getting started (issue 19): `rollscript init` writes an inventory from
//! the live load balancer (HAProxy's runtime API, an nginx upstream file, a
//! target group in moto) that `plan` and a real `run` accept unchanged;
//! `rollscript doctor` proves a deploy can work — exit 0 on a healthy fleet
//! within seconds, exit 1 naming each instance and check when it cannot,
//! touching nothing (the LB sampled, no release changed); `run --preflight`
//! runs the same checks first; a missing inventory says how to make one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::fleet::{Fleet, FleetSpec, LbKind, BACKEND};
use crate::harness::run::{Finished, Running};
use crate::harness::sshd::toml_str;
use crate::harness::{one_fleet_at_a_time, repo, rollscript};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `rollscript ARGS…` from the repository root, to its end.
fn rs(args: &[&str]) -> Finished {
    let mut c = rollscript();
    c.current_dir(repo()).args(args);
    let dir = tempfile::tempdir().unwrap();
    Running::spawn(c, dir.path(), "rollscript").wait(Duration::from_secs(120))
}

/// The fleet's ssh client config plus one `Host` block per instance naming
/// its sshd's port: what an operator's ~/.ssh/config does for hosts on
/// non-standard ports (the LB knows no ssh ports, so init cannot).
fn ssh_config_with_ports(fleet: &Fleet) -> PathBuf {
    let mut text = fs::read_to_string(&fleet.ssh.ssh_config).unwrap();
    for i in &fleet.instances {
        text.push_str(&format!("Host {}\n  Port {}\n", i.ip, i.ssh_port));
    }
    let path = fleet.path("ssh_config_ports");
    fs::write(&path, text).unwrap();
    path
}

/// `init --lb haproxy` for `fleet`, with its deploy scripts and ssh settings given.
fn init_haproxy(fleet: &Fleet, out: &Path, extra: &[&str]) -> Finished {
    let h = fleet.haproxy();
    let (socket, deploy, rollback) = (
        s(&h.socket),
        s(&fleet.bin("deploy.sh")),
        s(&fleet.bin("rollback.sh")),
    );
    let (key, kh, cfg) = (
        s(&fleet.ssh.client_key),
        s(&fleet.ssh.known_hosts),
        s(&ssh_config_with_ports(fleet)),
    );
    let out = s(out);
    let mut args = vec![
        "init",
        "--lb",
        "haproxy",
        "--socket",
        &socket,
        "--backend",
        BACKEND,
        "--deploy",
        &deploy,
        "--rollback",
        &rollback,
        "--user",
        "root",
        "--identity",
        &key,
        "--known-hosts",
        &kh,
        "--ssh-config",
        &cfg,
        "-i",
        &out,
    ];
    args.extend_from_slice(extra);
    rs(&args)
}

#[test]
fn init_from_a_live_haproxy_backend_writes_an_inventory_that_plan_and_a_real_run_accept_unchanged()
{
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = fleet.path("new/rollscript.toml");
    let init = init_haproxy(&fleet, &inv, &[]);
    assert_eq!(init.code, Some(0), "{}", init.dump());
    assert!(
        init.stdout.contains(&format!(
            "wrote {}: 3 instances from HAProxy backend web",
            s(&inv)
        )),
        "{}",
        init.dump()
    );
    let text = fs::read_to_string(&inv).unwrap();
    // Every server as HAProxy holds it: name, address, port.
    let parsed = rollscript::config::Inventory::parse(&inv, &text).unwrap();
    let got: Vec<(String, String, u16)> = parsed
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.host.clone(), parsed.traffic_port(i)))
        .collect();
    let want: Vec<(String, String, u16)> = fleet
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.ip.clone(), i.port))
        .collect();
    assert_eq!(got, want, "{text}");
    // What HAProxy cannot say is marked; what was given is not.
    for guessed in ["name = \"web\"", "min_in_service = 2"] {
        let line = text.lines().find(|l| l.starts_with(guessed)).unwrap();
        assert!(line.contains("# guess:"), "{line}\n{text}");
    }
    let deploy = text.lines().find(|l| l.starts_with("deploy = ")).unwrap();
    assert!(!deploy.contains("guess"), "{deploy}");

    // A second init refuses to overwrite it; --force replaces it.
    let again = init_haproxy(&fleet, &inv, &[]);
    assert_eq!(again.code, Some(2), "{}", again.dump());
    assert!(
        again.stderr.contains(&format!(
            "{} already exists: rollscript init does not overwrite it without --force",
            s(&inv)
        )),
        "{}",
        again.dump()
    );
    assert_eq!(fs::read_to_string(&inv).unwrap(), text, "left as it was");
    let forced = init_haproxy(&fleet, &inv, &["--force"]);
    assert_eq!(forced.code, Some(0), "{}", forced.dump());

    // plan, and a real rolling deploy, of the file as written.
    let inv_s = s(&inv);
    let plan = rs(&[
        "plan",
        "scripts/rolling.rhai",
        "-i",
        &inv_s,
        "--var",
        "version=v2",
    ]);
    assert_eq!(plan.code, Some(0), "{}", plan.dump());
    let load = fleet.load();
    let run = rs(&[
        "run",
        "scripts/rolling.rhai",
        "-i",
        &inv_s,
        "--yes",
        "--preflight",
        "--var",
        "version=v2",
    ]);
    let load = load.stop();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(
        run.stderr
            .contains("preflight: all 17 checks of `rollscript doctor` passed"),
        "{}",
        run.dump()
    );
    assert!(
        fleet.versions().iter().all(|(_, v)| v == "v2"),
        "{:?}\n{}",
        fleet.versions(),
        run.dump()
    );
    assert!(
        load.failures().is_empty() && load.sent() > 0,
        "{}\n{}",
        load.summary(),
        run.dump()
    );
}

#[test]
fn init_from_an_nginx_upstream_file_writes_an_inventory_plan_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = dir.path().join("app_upstream.conf");
    fs::write(
        &upstream,
        "upstream credit_radar {\n    least_conn;\n    server 127.0.1.201:4000;\n    server app2.internal:4000 weight=3;\n    server 127.0.1.203:4000 down;\n}\n",
    )
    .unwrap();
    let inv = dir.path().join("rollscript.toml");
    let init = rs(&[
        "init",
        "--lb",
        "nginx",
        "--upstream-file",
        &s(&upstream),
        "--upstream",
        "credit_radar",
        "-i",
        &s(&inv),
    ]);
    assert_eq!(init.code, Some(0), "{}", init.dump());
    let text = fs::read_to_string(&inv).unwrap();
    let parsed = rollscript::config::Inventory::parse(&inv, &text).unwrap();
    let got: Vec<(&str, &str)> = parsed
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i.host.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("web-1", "127.0.1.201"),
            ("app2", "app2.internal"),
            ("web-3", "127.0.1.203")
        ],
        "{text}"
    );
    assert!(
        text.contains("# down on the load balancer now: runs leave it out of rotation"),
        "{text}"
    );
    assert!(
        text.contains(&format!("upstream_file = {}", toml_str(&s(&upstream)))),
        "{text}"
    );
    assert!(text.contains("test_command = \"nginx -t\""), "{text}");
    let plan = rs(&["plan", "scripts/rolling.rhai", "-i", &s(&inv)]);
    assert_eq!(plan.code, Some(0), "{}", plan.dump());

    // A file holding more than the block is refused: a run would rewrite it.
    let whole = dir.path().join("nginx.conf");
    fs::write(
        &whole,
        "events {}\nhttp { upstream credit_radar { server 127.0.1.201:4000; } }\n",
    )
    .unwrap();
    let refused = rs(&[
        "init",
        "--lb",
        "nginx",
        "--upstream-file",
        &s(&whole),
        "--upstream",
        "credit_radar",
        "-i",
        &s(&dir.path().join("other.toml")),
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.dump());
    assert!(
        refused
            .stderr
            .contains("keep the `upstream credit_radar` block in an include file of its own"),
        "{}",
        refused.dump()
    );
    assert!(!dir.path().join("other.toml").exists());
}

#[test]
fn init_without_a_load_balancer_takes_hosts_and_plan_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let inv = s(&dir.path().join("rollscript.toml"));
    let init = rs(&[
        "init",
        "--lb",
        "none",
        "--hosts",
        "10.0.1.10,10.0.1.11",
        "--deploy",
        "./deploy.sh",
        "--health-path",
        "/up",
        "-i",
        &inv,
    ]);
    assert_eq!(init.code, Some(0), "{}", init.dump());
    let text = fs::read_to_string(&inv).unwrap();
    assert!(text.contains("path = \"/up\""), "{text}");
    assert!(text.contains("kind = \"none\""), "{text}");
    let plan = rs(&["plan", "scripts/rolling.rhai", "-i", &inv]);
    assert_eq!(plan.code, Some(0), "{}", plan.dump());
    assert!(plan.stdout.contains("2 instances"), "{}", plan.dump());

    let bad = rs(&[
        "init",
        "--lb",
        "none",
        "--hosts",
        "a;rm -rf /",
        "-i",
        &s(&dir.path().join("x.toml")),
    ]);
    assert_eq!(bad.code, Some(1), "{}", bad.dump());
    assert!(
        bad.stderr
            .contains("--hosts: \"a;rm -rf /\" is no host name or IP address"),
        "{}",
        bad.dump()
    );
}

#[test]
fn a_missing_inventory_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = rollscript();
    c.current_dir(dir.path())
        .args(["run", &s(&repo().join("scripts/rolling.rhai"))]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "rollscript.toml: cannot read inventory: No such file or directory",
        "rollscript init --lb haproxy --socket PATH --backend NAME",
        "-i FILE",
        "ROLLSCRIPT_INVENTORY",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[cfg(feature = "aws")]
#[tokio::test]
async fn init_from_a_target_group_in_moto_writes_an_inventory_plan_accepts() {
    use crate::harness::cloud::{rollscript_against_moto, Cloud, REGION};
    let cloud = Cloud::start().await;
    let a = cloud
        .instance(&cloud.subnet, "127.10.1.10", Some("web-1"))
        .await;
    let b = cloud.instance(&cloud.subnet, "127.10.1.11", None).await;
    cloud.register_healthy(&[a.clone(), b.clone()]).await;
    let dir = tempfile::tempdir().unwrap();
    let inv = s(&dir.path().join("rollscript.toml"));
    let out = rollscript_against_moto(dir.path())
        .args([
            "init",
            "--lb",
            "aws",
            "--target-group-arn",
            &cloud.tg,
            "--region",
            REGION,
            "--endpoint",
            &cloud.moto.endpoint(),
            "-i",
            &inv,
        ])
        .output()
        .unwrap();
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{both}");
    let text = fs::read_to_string(&inv).unwrap();
    let parsed = rollscript::config::Inventory::parse(Path::new(&inv), &text).unwrap();
    let mut got: Vec<(String, String, Option<String>)> = parsed
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.host.clone(), i.id.clone()))
        .collect();
    got.sort();
    let mut want = vec![
        ("web-1".to_string(), "127.10.1.10".to_string(), Some(a)),
        (b.clone(), "127.10.1.11".to_string(), Some(b)),
    ];
    want.sort();
    assert_eq!(got, want, "{text}");
    assert!(text.contains("name = \"credit-radar-tg\""), "{text}");
    assert_eq!(parsed.health.port, 4000, "the target group's port: {text}");
    let plan = rollscript_against_moto(dir.path())
        .current_dir(repo())
        .args(["plan", "scripts/rolling.rhai", "-i", &inv])
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
}

// ---- doctor -------------------------------------------------------------------

#[test]
fn doctor_on_a_healthy_haproxy_fleet_exits_0_within_5_seconds_with_every_check_passed() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    fleet.inventory().write(&fleet.inventory_path());
    let out = fleet.exec(
        "doctor",
        fleet.rollscript(&["doctor", "--summary", "json"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}", out.dump());
    println!(
        "doctor on 3 healthy instances: {:.2}s",
        out.took.as_secs_f64()
    );
    assert!(
        out.took < Duration::from_secs(5),
        "doctor took {:?}\n{}",
        out.took,
        out.dump()
    );
    assert!(
        out.stderr.contains("17 of 17 checks passed"),
        "{}",
        out.dump()
    );
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(report["type"], "doctor");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    for name in fleet.names() {
        for check in ["lb_member", "ssh", "deploy", "health", "capacity"] {
            let c = checks
                .iter()
                .find(|c| c["instance"] == name.as_str() && c["check"] == check)
                .unwrap_or_else(|| panic!("no {check} for {name}: {report}"));
            assert_eq!(c["status"], "ok", "{c}");
        }
    }
}

#[test]
fn doctor_names_each_broken_instance_and_check_and_touches_nothing() {
    let _one = one_fleet_at_a_time();
    let mut fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    // web-2's host key missing from known_hosts.
    let web2 = fleet.instances[1].clone();
    let known: String = fs::read_to_string(&fleet.ssh.known_hosts)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(&format!("[{}]:{} ", web2.ip, web2.ssh_port)))
        .map(|l| format!("{l}\n"))
        .collect();
    let kh = fleet.path("known_hosts_without_web2");
    fs::write(&kh, known).unwrap();
    fleet
        .inventory()
        .set("ssh", "known_hosts", &toml_str(&s(&kh)))
        // A health path the app answers 404.
        .set("health", "path", "\"/no-such-page\"")
        // The runtime API at `level user`.
        .set(
            "lb",
            "socket",
            &toml_str(&s(&fleet.haproxy().user_socket())),
        )
        .write(&fleet.inventory_path());
    // web-1's sshd stopped.
    fleet.stop_sshd("web-1");

    let sampler = fleet.sampler();
    let out = fleet.exec(
        "doctor",
        fleet.rollscript(&["doctor"]),
        Duration::from_secs(60),
    );
    let json = fleet.exec(
        "doctor-json",
        fleet.rollscript(&["doctor", "--log-format", "json"]),
        Duration::from_secs(60),
    );
    // --preflight refuses the run with the same findings, nothing touched.
    let run = fleet.exec(
        "run",
        fleet.rollscript(&[
            "run",
            "scripts/rolling.rhai",
            "--yes",
            "--preflight",
            "--var",
            "version=v2",
        ]),
        Duration::from_secs(60),
    );
    let lb = sampler.stop();
    let ctx = format!("{}\n{}\n--- lb\n{}", out.dump(), run.dump(), lb.render());

    assert_eq!(out.code, Some(1), "{ctx}");
    let problems = out
        .stderr
        .split("\nProblems\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Problems section\n{ctx}"));
    for needle in [
        "fleet: lb_rights: HAProxy runtime API at ",
        "answers at level user: it would refuse `set server … state drain` (Permission denied) — declare it `stats socket ",
        "level admin` in haproxy.cfg's global section and reload HAProxy",
        &format!("web-1: ssh: connection refused by {} port {}", fleet.instances[0].ip, fleet.instances[0].ssh_port),
        &format!("web-2: ssh: the host key of [{}]:{} is not in {}", web2.ip, web2.ssh_port, s(&kh)),
        &format!("web-1: health: GET http://{}/no-such-page: 404", fleet.instances[0].addr()),
        &format!("web-2: health: GET http://{}/no-such-page: 404", web2.addr()),
        &format!("web-3: health: GET http://{}/no-such-page: 404", fleet.instances[2].addr()),
        "— expected 200: check health.path",
    ] {
        assert!(problems.contains(needle), "{needle:?} in\n{ctx}");
    }
    // What works is not blamed: web-3's ssh and deploy, every LB member.
    for ok in [
        "web-3: ssh",
        "web-3: deploy",
        "lb_member",
        "capacity",
        "web-1: deploy",
    ] {
        assert!(!problems.contains(ok), "{ok:?} is not a problem\n{ctx}");
    }
    assert!(out.stderr.contains("exit 1: 6 checks failed"), "{ctx}");

    // The same table as data, the last line of a JSON log.
    assert_eq!(json.code, Some(1), "{}", json.dump());
    let last: serde_json::Value =
        serde_json::from_str(json.stderr.trim().lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "doctor", "{last}");
    assert_eq!(last["ok"], false);
    assert_eq!(last["failed"], 6);
    let failed: Vec<(String, String)> = last["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            (
                c["instance"].as_str().unwrap_or("fleet").to_string(),
                c["check"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("fleet", "lb_rights"),
        ("web-1", "ssh"),
        ("web-1", "health"),
        ("web-2", "ssh"),
        ("web-2", "health"),
        ("web-3", "health"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(failed, want, "{last}");

    assert_eq!(run.code, Some(2), "{ctx}");
    assert!(
        run.stderr
            .contains("nothing was touched: --preflight refused the run"),
        "{ctx}"
    );
    assert!(run.stderr.contains("web-2: ssh: the host key of"), "{ctx}");

    // Nothing changed: every server UP at every sample, no release changed.
    assert!(lb.count() > 0 && lb.failed_reads() == 0, "{ctx}");
    assert_eq!(lb.states().len(), 1, "the LB never changed\n{ctx}");
    assert_eq!(lb.min_in_service(), 3, "{ctx}");
    assert!(
        fleet.versions().iter().all(|(_, v)| v == "v1"),
        "{:?}",
        fleet.versions()
    );
    assert!(
        fleet.journals().is_empty(),
        "no run journal: {:?}",
        fleet.journals()
    );
}

#[test]
fn doctor_on_an_nginx_fleet_runs_its_test_command_and_passes() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Nginx, 2).start();
    fleet.inventory().write(&fleet.inventory_path());
    let out = fleet.exec(
        "doctor",
        fleet.rollscript(&["doctor", "--summary", "json"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{}", out.dump());
    println!(
        "doctor on 2 nginx instances: {:.2}s",
        out.took.as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let rights = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "lb_rights")
        .unwrap()
        .clone();
    assert_eq!(rights["status"], "ok", "{report}");
    assert!(
        rights["detail"]
            .as_str()
            .unwrap()
            .starts_with("lb.test_command `"),
        "{rights}"
    );
}
