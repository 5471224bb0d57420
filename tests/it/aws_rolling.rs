//! The shipped `scripts/rolling.rhai`, unchanged, against an AWS inventory:
//! an ELBv2 target group in moto (patched: `initial` after a register,
//! `draining` for the deregistration delay) whose EC2 instances have the
//! 127.0.1.x private IPs of real sshd hosts, each with a health endpoint on
//! the target group's port.
//!
//! Nothing dials AWS: the addresses stored in moto are only values, and the
//! only AWS endpoint is moto on 127.0.0.1.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use rollscript::journal::{self, Record};

use crate::harness::cloud::{self as aws, rollscript_against_moto, CloudSpec, REGION};
use crate::harness::http::{HttpServer, Reply};
use crate::harness::sshd::{toml_str, SshFleet};
use crate::harness::{free_port, repo};
/// The target group's `deregistration_delay.timeout_seconds`: how long moto
/// reports a deregistered target `draining`.
const DEREGISTRATION_DELAY: u64 = 2;
const TG_NAME: &str = "rolling-tg";
/// The instance listed without `id`: the run resolves it from its private IP.
const WITHOUT_ID: &str = "h2";
/// Every effect of one instance, in the order `steps::deploy_version` runs them.
const STEPS: [&str; 6] = [
    "deregister",
    "wait_drained",
    "ssh",
    "health",
    "register",
    "wait_in_service",
];

/// moto with the fleet's EC2 instances in a target group behind an ALB
/// listener, every instance registered and healthy.
struct Cloud {
    aws: aws::Cloud,
    /// Instance name → EC2 instance id.
    ids: BTreeMap<String, String>,
    port: u16,
}

impl Cloud {
    async fn start(fleet: &SshFleet, port: u16) -> Cloud {
        // The fleet's addresses are 127.0.1.x: the VPC holds them.
        let aws = aws::Cloud::start_with(CloudSpec {
            net: "127.0",
            target_group: TG_NAME,
            alb: "rolling-alb",
            port,
            deregistration_delay: DEREGISTRATION_DELAY,
        })
        .await;
        let mut ids = BTreeMap::new();
        for h in &fleet.hosts {
            let id = aws.instance(&aws.subnet, &h.ip, Some(&h.name)).await;
            ids.insert(h.name.clone(), id);
        }
        aws.register_healthy(&ids.values().cloned().collect::<Vec<_>>())
            .await;
        let cloud = Cloud { aws, ids, port };
        assert_eq!(cloud.targets().await, cloud.all_healthy());
        cloud
    }

    /// What DescribeTargetHealth lists for the target group: (id, port, state), sorted.
    async fn targets(&self) -> Vec<(String, i32, String)> {
        self.aws.targets().await
    }

    /// Every instance of the fleet `healthy` on the target group's port.
    fn all_healthy(&self) -> Vec<(String, i32, String)> {
        let mut rows: Vec<(String, i32, String)> = self
            .ids
            .values()
            .map(|id| (id.clone(), i32::from(self.port), "healthy".to_string()))
            .collect();
        rows.sort();
        rows
    }

    fn id(&self, name: &str) -> &str {
        &self.ids[name]
    }

    /// What plans and logs call `name`'s target before its id is resolved.
    fn label(&self, fleet: &SshFleet, name: &str) -> String {
        if name == WITHOUT_ID {
            host(fleet, name).to_string()
        } else {
            self.id(name).to_string()
        }
    }
}

fn host<'a>(fleet: &'a SshFleet, name: &str) -> &'a str {
    &fleet.hosts.iter().find(|h| h.name == name).unwrap().ip
}

/// One port `P` bound on every host's address: the target group's port and
/// the health port of the inventory, the same on each instance as on an ALB.
fn same_port_on_every_host(fleet: &SshFleet) -> (u16, Vec<TcpListener>) {
    for _ in 0..50 {
        let port = free_port(&fleet.hosts[0].ip);
        let bound: Result<Vec<TcpListener>, _> = fleet
            .hosts
            .iter()
            .map(|h| TcpListener::bind((h.ip.as_str(), port)))
            .collect();
        if let Ok(listeners) = bound {
            return (port, listeners);
        }
    }
    panic!("no port free on every host of the fleet");
}

/// The file the deploy command appends the version to, on host `ip`.
fn deploy_record(dir: &Path, ip: &str) -> PathBuf {
    dir.join(format!("deployed-{ip}"))
}

/// The AWS inventory: `[ssh]` for the fleet, `[health]` on port `P`,
/// `[lb] kind = "aws"` pointing at moto, every host as an instance (all but
/// `WITHOUT_ID` with their EC2 id). `app.deploy` appends its argument (the
/// version) to `deployed-<server address>` in `dir`: each host's sshd is
/// told apart by the address the connection came in on.
fn inventory_text(fleet: &SshFleet, cloud: &Cloud, dir: &Path) -> String {
    let deploy = format!(
        "sh -c 'set -- $SSH_CONNECTION; echo \"$0\" >> {}/deployed-$3'",
        dir.display()
    );
    let q = |p: &Path| toml_str(&p.display().to_string());
    let mut t = format!(
        r#"[app]
name = "credit_radar"
deploy = {deploy}

[ssh]
user = "root"
identity = {identity}
known_hosts = {known_hosts}
config = {config}
connect_timeout = "5s"
command_timeout = "60s"

[health]
port = {port}
path = "/health"
timeout = "2s"
interval = "200ms"
retries = 25
healthy_threshold = 1

[lb]
kind = "aws"
target_group_arn = "{tg}"
region = "{REGION}"
endpoint = "{endpoint}"
drain_timeout = "30s"
register_timeout = "30s"
# The LB's state alone: these tests follow ELBv2's own drain (tests/it/drain.rs
# has the on-host detection of the default, "auto").
drain_detect = "lb"
poll_interval = "200ms"

"#,
        deploy = toml_str(&deploy),
        identity = q(&fleet.client_key),
        known_hosts = q(&fleet.known_hosts),
        config = q(&fleet.ssh_config),
        port = cloud.port,
        tg = cloud.aws.tg,
        endpoint = cloud.aws.moto.endpoint(),
    );
    for h in &fleet.hosts {
        t.push_str(&format!(
            "[[instances]]\nname = \"{}\"\nhost = \"{}\"\nssh_port = {}\n",
            h.name, h.ip, h.port
        ));
        if h.name != WITHOUT_ID {
            t.push_str(&format!("id = \"{}\"\n", cloud.id(&h.name)));
        }
        t.push('\n');
    }
    t
}

/// `rollscript ARGS` in `dir`, with test credentials and nothing from this
/// machine's AWS configuration.
fn rollscript_in(dir: &Path, args: &[&str]) -> Output {
    rollscript_against_moto(dir).args(args).output().unwrap()
}

fn rolling_script() -> String {
    repo().join("scripts/rolling.rhai").display().to_string()
}

/// Milliseconds of a duration as rollscript prints it (`5ms`, `1.2s`, `2s`).
fn millis(text: &str) -> u64 {
    let text = text.trim();
    match text.strip_suffix("ms") {
        Some(ms) => ms.parse().unwrap(),
        None => {
            let s: f64 = text.strip_suffix('s').unwrap().parse().unwrap();
            (s * 1000.0).round() as u64
        }
    }
}

/// The one journal of the run in `dir`.
fn the_journal(dir: &Path) -> Vec<Record> {
    let runs = journal::runs_dir(&dir.join("rollscript.toml"));
    let files: Vec<PathBuf> = std::fs::read_dir(&runs)
        .unwrap_or_else(|e| panic!("no journal folder {}: {e}", runs.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "one run, one journal: {files:?}");
    journal::read(&files[0]).unwrap()
}

#[test]
fn the_shipped_rolling_script_cycles_every_instance_through_elbv2_and_leaves_all_healthy() {
    let fleet = SshFleet::start(3);
    let (port, listeners) = same_port_on_every_host(&fleet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloud = rt.block_on(Cloud::start(&fleet, port));
    let dir = tempfile::tempdir().unwrap();
    // Each health endpoint answers 200 with what the deploy wrote, 503 until
    // then: health(inst) can only pass on a host the run has deployed.
    let servers: Vec<HttpServer> = fleet
        .hosts
        .iter()
        .zip(listeners)
        .map(|(h, l)| {
            let file = deploy_record(dir.path(), &h.ip);
            HttpServer::serve(l, Vec::new(), Reply::File(file))
        })
        .collect();
    std::fs::write(
        dir.path().join("rollscript.toml"),
        inventory_text(&fleet, &cloud, dir.path()),
    )
    .unwrap();

    let script = rolling_script();
    let started = Instant::now();
    let out = rollscript_in(
        dir.path(),
        &[
            "run",
            &script,
            "-i",
            "rollscript.toml",
            "--yes",
            "--var",
            "version=v2",
        ],
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = || {
        format!(
            "stdout:\n{}\nstderr:\n{stderr}\nmoto:\n{}",
            String::from_utf8_lossy(&out.stdout),
            cloud.aws.moto.stderr()
        )
    };
    assert_eq!(out.status.code(), Some(0), "{}", context());

    // Each instance deployed exactly once, with the version, on its own host.
    for h in &fleet.hosts {
        let record = std::fs::read_to_string(deploy_record(dir.path(), &h.ip))
            .unwrap_or_else(|e| panic!("{} was never deployed: {e}\n{}", h.name, context()));
        assert_eq!(record, "v2\n", "deploys of {}", h.name);
    }
    for (h, s) in fleet.hosts.iter().zip(&servers) {
        assert!(s.requests() >= 1, "health(inst) never probed {}", h.name);
    }

    // Every target back and healthy in the target group.
    assert_eq!(rt.block_on(cloud.targets()), cloud.all_healthy());
    let moto_stderr = cloud.aws.moto.stderr();
    assert!(
        !moto_stderr.contains("Traceback"),
        "the emulator failed:\n{moto_stderr}"
    );

    // The journal: each instance's six effects, one instance after the other
    // (batch 1), every one journaled before it acted and finished ok.
    let records = the_journal(dir.path());
    let mut intents = Vec::new();
    let mut results: BTreeMap<u64, (bool, u64)> = BTreeMap::new();
    let mut ended = None;
    for r in &records {
        match r {
            Record::Intent {
                seq,
                op,
                instance,
                text,
                ..
            } => intents.push((*seq, op.clone(), instance.clone(), text.clone())),
            Record::Result {
                seq,
                ok,
                duration_ms,
                ..
            } => {
                results.insert(*seq, (*ok, *duration_ms));
            }
            Record::RunEnd {
                outcome,
                left_out,
                failed,
                ..
            } => ended = Some((outcome.clone(), left_out.clone(), failed.clone())),
            _ => {}
        }
    }
    let got: Vec<(String, String)> = intents
        .iter()
        .map(|(_, op, inst, _)| (inst.clone().unwrap_or_default(), op.clone()))
        .collect();
    let expected: Vec<(String, String)> = fleet
        .hosts
        .iter()
        .flat_map(|h| STEPS.iter().map(|op| (h.name.clone(), op.to_string())))
        .collect();
    assert_eq!(got, expected, "journal:\n{records:#?}");
    for (seq, op, inst, _) in &intents {
        let (ok, _) = results
            .get(seq)
            .unwrap_or_else(|| panic!("no result for {op} on {inst:?} (seq {seq})"));
        assert!(ok, "{op} on {inst:?} failed: {records:#?}");
    }
    let ended = ended.expect("the journal has a run end");
    assert_eq!(ended.1, Vec::<String>::new(), "left out");
    assert_eq!(ended.2, Vec::<String>::new(), "failed");

    // The ELBv2 steps name the target by its EC2 id, WITHOUT_ID's resolved
    // from its private IP by the capacity guard before its first step.
    let tg_short = format!("tg/{TG_NAME}");
    for h in &fleet.hosts {
        let id = cloud.id(&h.name);
        let texts: Vec<(&str, &str)> = intents
            .iter()
            .filter(|(_, _, inst, _)| inst.as_deref() == Some(h.name.as_str()))
            .map(|(_, op, _, text)| (op.as_str(), text.as_str()))
            .collect();
        assert_eq!(
            texts[0],
            (
                "deregister",
                format!("elbv2 {tg_short}: deregister {id} (port {port})").as_str()
            )
        );
        assert_eq!(
            texts[1],
            (
                "wait_drained",
                format!("elbv2 {tg_short}: wait until {id} is unused (≤ 30s)").as_str()
            )
        );
        assert!(
            texts[2]
                .1
                .starts_with(&format!("ssh root@{}: sh -c ", h.ip))
                && texts[2].1.ends_with(" v2"),
            "ssh step of {}: {:?}",
            h.name,
            texts[2]
        );
        assert!(
            texts[3]
                .1
                .contains(&format!("http://{}:{port}/health", h.ip)),
            "health step of {}: {:?}",
            h.name,
            texts[3]
        );
        assert_eq!(
            texts[4],
            (
                "register",
                format!("elbv2 {tg_short}: register {id} (port {port})").as_str()
            )
        );
        assert_eq!(
            texts[5],
            (
                "wait_in_service",
                format!("elbv2 {tg_short}: wait until {id} is healthy (≤ 30s)").as_str()
            )
        );
    }

    // The drain followed the target group: the step lasted the
    // deregistration delay (moto models no connections, so `draining` never
    // ends sooner) and ended at one of the first polls after it.
    let delay_ms = DEREGISTRATION_DELAY * 1000;
    let mut drained_ms = BTreeMap::new();
    for (seq, op, inst, _) in &intents {
        let (_, ms) = results[seq];
        let inst = inst.clone().unwrap_or_default();
        match op.as_str() {
            "wait_drained" => {
                assert!(
                    (delay_ms - 500..=delay_ms + 8_000).contains(&ms),
                    "{inst} drained in {ms} ms against a deregistration delay of {delay_ms} ms"
                );
                drained_ms.insert(inst, ms);
            }
            // moto reports `initial` for a second after a register.
            "wait_in_service" => assert!(
                (500..=10_000).contains(&ms),
                "{inst} in service after {ms} ms"
            ),
            _ => {}
        }
    }

    // stderr: each drain's time, set against the target group's fixed delay
    // when it ended sooner; the summary's time saved against the runbook.
    for h in &fleet.hosts {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("{} drained in ", h.name)))
            .unwrap_or_else(|| panic!("no drain line for {}:\n{stderr}", h.name));
        let waited: u64 = line
            .rsplit("waited_ms=")
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no waited_ms in {line:?}"));
        assert!(waited <= drained_ms[&h.name], "{line:?}: {drained_ms:?}");
        match line.split_once(" before the deregistration delay") {
            Some((head, _)) => {
                let saved = millis(head.rsplit(", ").next().unwrap());
                assert!(
                    (waited + saved).abs_diff(delay_ms) <= 60,
                    "{line:?}: {waited} ms + {saved} ms saved is not the {delay_ms} ms delay"
                );
            }
            None => assert!(waited + 1 >= delay_ms, "{line:?}: no time saved shown"),
        }
    }
    assert!(
        stderr.contains("of fixed `sleep 60`s in the runbook ("),
        "no time-saved summary:\n{stderr}"
    );
    assert!(
        stderr.contains("rolling deploy done: all 3 instances updated"),
        "{stderr}"
    );
    assert!(
        took < Duration::from_secs(90),
        "the rolling deploy took {took:?}"
    );
}

#[test]
fn plan_of_the_shipped_rolling_script_lists_elbv2_steps_without_calling_aws() {
    let fleet = SshFleet::start(3);
    let (port, _listeners) = same_port_on_every_host(&fleet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloud = rt.block_on(Cloud::start(&fleet, port));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rollscript.toml"),
        inventory_text(&fleet, &cloud, dir.path()),
    )
    .unwrap();
    let labels: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| cloud.label(&fleet, &h.name))
        .collect();
    // moto stopped and reaped (by PID): any AWS call the plan made would fail.
    drop(cloud);

    let script = rolling_script();
    let out = rollscript_in(
        dir.path(),
        &[
            "plan",
            &script,
            "-i",
            "rollscript.toml",
            "--var",
            "version=v2",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(
        stdout.contains("(3 instances, load balancer: elbv2)"),
        "{context}"
    );

    // Six numbered steps per instance, in inventory order; the instance
    // without `id` is shown by its host, as nothing resolved it.
    let tg = format!("tg/{TG_NAME}");
    let steps: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            let (n, rest) = l.trim_start().split_once(". ")?;
            n.parse::<u32>().ok().map(|_| rest)
        })
        .collect();
    assert_eq!(steps.len(), 18, "{context}");
    for (i, (h, who)) in fleet.hosts.iter().zip(&labels).enumerate() {
        let mine = &steps[i * 6..i * 6 + 6];
        assert_eq!(
            mine[0],
            format!("elbv2 {tg}: deregister {who} (port {port})"),
            "{context}"
        );
        assert_eq!(
            mine[1],
            format!("elbv2 {tg}: wait until {who} is unused (≤ 30s)"),
            "{context}"
        );
        assert!(
            mine[2].starts_with(&format!("ssh root@{}: sh -c ", h.ip))
                && mine[2].ends_with(" v2 (≤ 60s)"),
            "{context}"
        );
        assert!(
            mine[3].starts_with(&format!("http GET http://{}:{port}/health: ", h.ip)),
            "{context}"
        );
        assert_eq!(
            mine[4],
            format!("elbv2 {tg}: register {who} (port {port})"),
            "{context}"
        );
        assert_eq!(
            mine[5],
            format!("elbv2 {tg}: wait until {who} is healthy (≤ 30s)"),
            "{context}"
        );
    }
    assert_eq!(labels[1], host(&fleet, WITHOUT_ID));

    // Nothing touched: no AWS error, no journal, no deploy.
    for word in ["DescribeTargetHealth", "DescribeInstances", "error", "WARN"] {
        assert!(
            !stderr.contains(word),
            "{word:?} in the plan's stderr:\n{stderr}"
        );
    }
    assert!(
        !journal::runs_dir(&dir.path().join("rollscript.toml")).exists(),
        "a plan wrote a journal"
    );
    for h in &fleet.hosts {
        assert!(
            !deploy_record(dir.path(), &h.ip).exists(),
            "{} deployed",
            h.name
        );
    }
}

/// The listener's forward weights as (target group ARN, weight), sorted;
/// a plain `TargetGroupArn` forward counts as weight 1.
async fn forward_weights(aws: &aws::Cloud) -> Vec<(String, i32)> {
    let out = aws
        .elb
        .describe_listeners()
        .listener_arns(&aws.listener)
        .send()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for a in out.listeners()[0].default_actions() {
        match a.forward_config() {
            Some(f) if !f.target_groups().is_empty() => {
                for g in f.target_groups() {
                    rows.push((
                        g.target_group_arn().unwrap().to_string(),
                        g.weight().unwrap_or(1),
                    ));
                }
            }
            _ => rows.extend(a.target_group_arn().map(|t| (t.to_string(), 1))),
        }
    }
    rows.sort();
    rows
}

#[test]
fn blue_green_on_elbv2_with_a_target_group_per_pool_switches_by_the_listener_and_back() {
    let fleet = SshFleet::start(4);
    let (port, listeners) = same_port_on_every_host(&fleet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // h1, h2: blue, in the listener's target group; h3, h4: green, in a
    // target group of their own that gets no traffic.
    let (aws, ids, green) = rt.block_on(async {
        let aws = aws::Cloud::start_with(CloudSpec {
            net: "127.0",
            target_group: "blue-tg",
            alb: "bg-alb",
            port,
            deregistration_delay: DEREGISTRATION_DELAY,
        })
        .await;
        let mut ids = Vec::new();
        for h in &fleet.hosts {
            ids.push(aws.instance(&aws.subnet, &h.ip, Some(&h.name)).await);
        }
        aws.register_healthy(&ids[..2]).await;
        let green = aws.target_group("green-tg").await;
        let mut register = aws.elb.register_targets().target_group_arn(&green);
        for id in &ids[2..] {
            register = register.targets(
                aws_sdk_elasticloadbalancingv2::types::TargetDescription::builder()
                    .id(id)
                    .port(i32::from(port))
                    .build(),
            );
        }
        register.send().await.unwrap();
        (aws, ids, green)
    });
    // Every instance healthy on v1 before the run.
    let servers: Vec<HttpServer> = fleet
        .hosts
        .iter()
        .zip(listeners)
        .map(|(h, l)| {
            let file = deploy_record(dir.path(), &h.ip);
            std::fs::write(&file, "v1\n").unwrap();
            HttpServer::serve(l, Vec::new(), Reply::File(file))
        })
        .collect();
    let cloud = Cloud {
        aws,
        ids: fleet
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .zip(ids.iter().cloned())
            .collect(),
        port,
    };
    let mut text = inventory_text(&fleet, &cloud, dir.path());
    text = text.replace(
        "poll_interval = \"200ms\"\n",
        &format!(
            "poll_interval = \"200ms\"\nlistener_arn = \"{}\"\n[lb.pools.blue]\ntarget_group_arn = \"{}\"\n[lb.pools.green]\ntarget_group_arn = \"{green}\"\n",
            cloud.aws.listener, cloud.aws.tg
        ),
    );
    for (i, h) in fleet.hosts.iter().enumerate() {
        let pool = if i < 2 { "blue" } else { "green" };
        text = text.replace(
            &format!("name = \"{}\"\n", h.name),
            &format!("name = \"{}\"\npool = \"{pool}\"\n", h.name),
        );
    }
    std::fs::write(dir.path().join("rollscript.toml"), &text).unwrap();
    let script = repo().join("scripts/blue_green.rhai").display().to_string();
    let weights = |rt: &tokio::runtime::Runtime| rt.block_on(forward_weights(&cloud.aws));
    assert_eq!(
        weights(&rt),
        vec![(cloud.aws.tg.clone(), 1)],
        "blue takes the traffic"
    );

    let out = rollscript_in(
        dir.path(),
        &[
            "run",
            &script,
            "-i",
            "rollscript.toml",
            "--yes",
            "--var",
            "version=v2",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let ctx = format!("{stderr}\nmoto:\n{}", cloud.aws.moto.stderr());
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    let mut want = vec![(cloud.aws.tg.clone(), 0), (green.clone(), 100)];
    want.sort();
    assert_eq!(
        weights(&rt),
        want,
        "the listener forwards to green only\n{ctx}"
    );
    for (i, h) in fleet.hosts.iter().enumerate() {
        let record = std::fs::read_to_string(deploy_record(dir.path(), &h.ip)).unwrap();
        let expect = if i < 2 { "v1\n" } else { "v1\nv2\n" };
        assert_eq!(record, expect, "deploys of {}\n{ctx}", h.name);
    }
    assert!(
        stderr.contains("traffic on green"),
        "the run says where the traffic is\n{ctx}"
    );

    // Back: one listener change, no deploy.
    let back = rollscript_in(
        dir.path(),
        &[
            "run",
            &script,
            "-i",
            "rollscript.toml",
            "--yes",
            "--var",
            "switch_back=true",
        ],
    );
    let bctx = String::from_utf8_lossy(&back.stderr).to_string();
    assert_eq!(back.status.code(), Some(0), "{bctx}");
    let mut want = vec![(cloud.aws.tg.clone(), 100), (green.clone(), 0)];
    want.sort();
    assert_eq!(
        weights(&rt),
        want,
        "the listener forwards to blue again\n{bctx}"
    );
    assert!(
        !bctx.contains("deploy"),
        "switch_back deploys nothing\n{bctx}"
    );
    drop(servers);
}
