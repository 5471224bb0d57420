//! On-host drain detection for ELBv2 targets (issue 20), end to end: the
//! shipped `scripts/rolling.rhai` against real app instances (demo/app.py,
//! each host its own sshd) registered in a target group in moto — patched
//! to keep a deregistered target `draining` for the group's whole
//! `deregistration_delay`, as an ALB does — with an emulated ALB data plane
//! in front of the fleet (`harness::alb`) carrying the load.
//!
//! What is asserted is what an operator cares about: zero failed requests
//! through the ALB, the drains' times and what ended them in the journal,
//! every target healthy again in the target group, the run's wall time.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::sync::MutexGuard;
use std::time::{Duration, SystemTime};

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;

use crate::harness::alb::Alb;
use crate::harness::cloud::{self as aws, rollscript_against_moto, CloudSpec, REGION};
use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::http::get;
use crate::harness::journal::Journal;
use crate::harness::load::Load;
use crate::harness::run::Finished;
use crate::harness::{one_fleet_at_a_time, repo, wait_until};

/// A fleet of app instances behind an (emulated) ALB, its target group in moto.
/// Fields drop in order: the ALB stops reading moto before moto stops.
struct AlbFleet {
    alb: Alb,
    cloud: aws::Cloud,
    rt: tokio::runtime::Runtime,
    /// Instance name → EC2 instance id.
    ids: BTreeMap<String, String>,
    fleet: Fleet,
    _one: MutexGuard<'static, ()>,
}

/// One drain as the journal's `drained` record tells it.
#[derive(Debug, Clone)]
struct Drain {
    ended_by: String,
    waited_ms: u64,
    saved_ms: Option<u64>,
    delay_ms: Option<u64>,
    /// When the record was written: the drain's end.
    at: SystemTime,
}

impl AlbFleet {
    /// `n` instances, every one a healthy target of a target group whose
    /// deregistration delay is `delay_s`, the ALB routing to all of them.
    fn start(n: usize, delay_s: u64) -> AlbFleet {
        let one = one_fleet_at_a_time();
        let mut fleet = FleetSpec::new(LbKind::Haproxy, n).start();
        // HAProxy's own health checks would be connections on the hosts: the
        // emulated ALB below is this fleet's load balancer.
        fleet.stop_haproxy();
        let mut ports: Vec<u16> = fleet.instances.iter().map(|i| i.port).collect();
        ports.sort_unstable();
        ports.dedup();
        // On loopback every "host" shares one kernel: `ss` on web-1 sees
        // web-2's sockets too, so the instances must not share a port.
        assert_eq!(ports.len(), n, "two instances on one port: {ports:?}");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cloud = rt.block_on(aws::Cloud::start_with(CloudSpec {
            net: "127.0",
            target_group: "drain-tg",
            alb: "drain-alb",
            port: 80,
            deregistration_delay: delay_s,
        }));
        let mut ids = BTreeMap::new();
        rt.block_on(async {
            let mut register = cloud.elb.register_targets().target_group_arn(&cloud.tg);
            for inst in &fleet.instances {
                let id = cloud
                    .instance(&cloud.subnet, &inst.ip, Some(&inst.name))
                    .await;
                register = register.targets(
                    TargetDescription::builder()
                        .id(&id)
                        .port(i32::from(inst.port))
                        .build(),
                );
                ids.insert(inst.name.clone(), id);
            }
            register.send().await.unwrap();
        });
        let addresses = ids
            .iter()
            .map(|(name, id)| (id.clone(), fleet.instance(name).ip.clone()))
            .collect();
        let alb = Alb::start(cloud.elb.clone(), &cloud.tg, addresses);
        // moto reports `initial` for a second after a register.
        alb.wait_routing_to(n);
        AlbFleet {
            alb,
            cloud,
            rt,
            ids,
            fleet,
            _one: one,
        }
    }

    fn id(&self, name: &str) -> &str {
        &self.ids[name]
    }

    /// The fleet's inventory with `[lb]` the target group in moto, each
    /// instance with its EC2 id and its own port, `lb` keys set over it.
    fn write_inventory(&self, lb: &[(&str, &str)]) {
        let keys = format!(
            "kind = \"aws\"\ntarget_group_arn = \"{}\"\nregion = \"{REGION}\"\nendpoint = \"{}\"\npoll_interval = \"200ms\"\n",
            self.cloud.tg,
            self.cloud.moto.endpoint()
        );
        let mut inv = self.fleet.inventory().lb_section(&keys);
        for (name, id) in &self.ids {
            inv = inv.set_instance(name, "id", &format!("\"{id}\""));
        }
        for (k, v) in lb {
            inv = inv.set("lb", k, v);
        }
        inv.write(&self.fleet.inventory_path());
    }

    /// `rollscript run scripts/rolling.rhai --var version=v2` to its end.
    fn rolling_deploy(&self) -> Finished {
        let mut cmd = rollscript_against_moto(self.fleet.root());
        cmd.current_dir(repo())
            .args([
                "run",
                "scripts/rolling.rhai",
                "--yes",
                "--var",
                "version=v2",
            ])
            .arg("-i")
            .arg(self.fleet.inventory_path());
        self.fleet.exec("rolling", cmd, Duration::from_secs(300))
    }

    /// What DescribeTargetHealth lists: (instance name, port, state), sorted.
    fn targets(&self) -> Vec<(String, i32, String)> {
        let by_id: BTreeMap<&str, &str> = self
            .ids
            .iter()
            .map(|(n, i)| (i.as_str(), n.as_str()))
            .collect();
        let mut rows: Vec<(String, i32, String)> = self
            .rt
            .block_on(self.cloud.targets())
            .into_iter()
            .map(|(id, port, state)| (by_id[id.as_str()].to_string(), port, state))
            .collect();
        rows.sort();
        rows
    }

    fn all_healthy(&self) -> Vec<(String, i32, String)> {
        self.fleet
            .instances
            .iter()
            .map(|i| (i.name.clone(), i32::from(i.port), "healthy".to_string()))
            .collect()
    }

    /// The journal's `drained` records, by instance.
    fn drains(&self) -> BTreeMap<String, Drain> {
        let j: Journal = self.fleet.journal();
        let ms = |v: &serde_json::Value| v.as_u64();
        j.of_type("drained")
            .into_iter()
            .map(|r| {
                (
                    r["instance"].as_str().unwrap().to_string(),
                    Drain {
                        ended_by: r["ended_by"].as_str().unwrap().to_string(),
                        waited_ms: ms(&r["waited_ms"]).unwrap(),
                        saved_ms: ms(&r["saved_ms"]),
                        delay_ms: ms(&r["deregistration_delay_ms"]),
                        at: humantime::parse_rfc3339(r["at"].as_str().unwrap()).unwrap(),
                    },
                )
            })
            .collect()
    }

    /// When the journal recorded the intent of `op` on `instance`.
    fn intent_at(&self, instance: &str, op: &str) -> SystemTime {
        let j = self.fleet.journal();
        let r = j
            .of_type("intent")
            .into_iter()
            .find(|r| r["instance"] == instance && r["op"] == op)
            .unwrap_or_else(|| panic!("no {op} of {instance} in the journal:\n{}", j.dump()));
        humantime::parse_rfc3339(r["at"].as_str().unwrap()).unwrap()
    }

    fn context(&self, run: &Finished) -> String {
        // Every connection on the instances' ports now: what a drain saw.
        let ss: String = self
            .fleet
            .instances
            .iter()
            .map(|i| {
                let out = std::process::Command::new("ss")
                    .args(["-Htnp", "state", "established"])
                    .arg(format!("( sport = :{} )", i.port))
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| e.to_string());
                format!("{} ({}):\n{out}", i.name, i.addr())
            })
            .collect();
        format!(
            "{}\njournal:\n{}\nmoto:\n{}\nconnections now:\n{ss}",
            run.dump(),
            self.fleet.journal().dump(),
            self.cloud.moto.stderr()
        )
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn with_a_120s_deregistration_delay_a_rolling_deploy_drains_on_the_host_in_seconds_with_zero_failed_requests(
) {
    let f = AlbFleet::start(3, 120);
    f.write_inventory(&[]);
    // 50 requests a second through the ALB, a quarter of them held 200 ms:
    // every drain has requests in flight to wait for.
    let load = Load::start(f.alb.addr, 50, Duration::from_secs(120));
    let run = f.rolling_deploy();
    let report = load.stop();
    let ctx = f.context(&run);
    assert_eq!(run.code, Some(0), "{ctx}");
    assert!(
        report.failures().is_empty(),
        "requests failed through the ALB:\n{}\n{ctx}",
        report.summary()
    );
    for name in f.fleet.names() {
        assert!(
            f.alb.forwarded(f.id(&name)) > 0,
            "{name} took no traffic\n{ctx}"
        );
        assert_eq!(f.fleet.version(&name), "v2", "{name}\n{ctx}");
    }

    // Each drain ended on the host, a second or so after its last request,
    // and says it saved the rest of the 120 s delay.
    let drains = f.drains();
    assert_eq!(
        drains.keys().cloned().collect::<Vec<_>>(),
        f.fleet.names(),
        "{ctx}"
    );
    for (name, d) in &drains {
        assert_eq!(d.ended_by, "host", "{name}: {d:?}\n{ctx}");
        assert_eq!(d.delay_ms, Some(120_000), "{name}: {d:?}");
        assert!(
            (1_000..10_000).contains(&d.waited_ms),
            "{name} drained in {} ms\n{ctx}",
            d.waited_ms
        );
        // (Both rounded down to the millisecond.)
        let saved = d.saved_ms.unwrap_or_default();
        assert!(saved.abs_diff(120_000 - d.waited_ms) <= 1, "{name}: {d:?}");
    }
    for name in f.fleet.names() {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{name} drained in ")))
            .unwrap_or_else(|| panic!("no drain line for {name}\n{ctx}"));
        assert!(
            line.contains(": no connection on the host for 1s, ")
                && line.contains(" before the deregistration delay (120s)"),
            "{line}"
        );
        assert!(
            run.stderr.contains(&format!("drain {name}: ")),
            "no summary line for {name}'s drain\n{ctx}"
        );
    }
    assert!(
        run.stderr.contains("ended by the host's connections"),
        "{ctx}"
    );
    // Seconds, not the 3 × 120 s the target group's delay alone would take.
    assert!(
        run.took < Duration::from_secs(90),
        "the deploy took {:.1}s\n{ctx}",
        secs(run.took)
    );
    // Each target was registered again while still `draining` in the target
    // group, and is healthy now.
    assert_eq!(f.targets(), f.all_healthy(), "{ctx}");
}

#[test]
fn a_request_held_5s_on_one_instance_delays_only_that_instance_s_drain() {
    let f = AlbFleet::start(3, 120);
    f.write_inventory(&[]);
    let web1 = f.id("web-1").to_string();
    // Through the ALB, pinned to web-1 (the first the rolling deploy takes
    // out), sent before the run starts: in flight when web-1 is deregistered.
    let alb = f.alb.addr;
    let held = std::thread::spawn(move || {
        let answer = get(alb, &format!("/slow?ms=5000&alb_target={web1}"));
        (answer, SystemTime::now())
    });
    wait_until(
        "the held request to reach web-1",
        Duration::from_secs(5),
        || f.alb.open(f.id("web-1")) == 1,
    );
    let sent = SystemTime::now();
    let load = Load::start(f.alb.addr, 20, Duration::from_secs(120));
    let run = f.rolling_deploy();
    let report = load.stop();
    let (answer, answered) = held.join().unwrap();
    let ctx = f.context(&run);
    assert_eq!(run.code, Some(0), "{ctx}");
    let (status, body) = answer.unwrap_or_else(|e| panic!("the held request failed: {e}\n{ctx}"));
    assert_eq!(
        (status, body.trim()),
        (200, "version=v1"),
        "the held request was answered by the old release, in full"
    );
    assert!(
        report.failures().is_empty(),
        "requests failed through the ALB:\n{}\n{ctx}",
        report.summary()
    );

    let drains = f.drains();
    let deregistered = f.intent_at("web-1", "deregister");
    assert!(
        deregistered.duration_since(sent).unwrap_or_default() < Duration::from_secs(3),
        "web-1 was deregistered {:.1}s after the held request reached it: too late to tell\n{ctx}",
        secs(deregistered.duration_since(sent).unwrap_or_default())
    );
    // What was left of the held request when web-1 was deregistered.
    let left = answered.duration_since(deregistered).unwrap();
    let w1 = &drains["web-1"];
    assert_eq!(w1.ended_by, "host", "{w1:?}\n{ctx}");
    // The drain ended after the request did (1 s of settle later, give or
    // take a poll), not before it and not at the 120 s delay.
    let after_answer = w1.at.duration_since(answered).unwrap_or_else(|e| {
        panic!(
            "web-1's drain ended {:?} before its last request\n{ctx}",
            e.duration()
        )
    });
    assert!(
        after_answer < Duration::from_secs(3),
        "web-1's drain ended {:.1}s after its last request\n{ctx}",
        secs(after_answer)
    );
    assert!(
        Duration::from_millis(w1.waited_ms) >= left,
        "web-1 drained in {} ms, while the held request had {:.1}s to go\n{ctx}",
        w1.waited_ms,
        secs(left)
    );
    // The others: no long request, a second of settle and a poll or two.
    for name in ["web-2", "web-3"] {
        let d = &drains[name];
        assert_eq!(d.ended_by, "host", "{name}: {d:?}\n{ctx}");
        assert!(
            d.waited_ms + 2_000 < w1.waited_ms && d.waited_ms < 3_500,
            "{name} drained in {} ms, web-1 in {} ms\n{ctx}",
            d.waited_ms,
            w1.waited_ms
        );
    }
    assert_eq!(f.targets(), f.all_healthy(), "{ctx}");
}

#[test]
fn drain_detect_lb_waits_for_the_deregistration_delay_as_before() {
    let delay_s = 8;
    let f = AlbFleet::start(2, delay_s);
    f.write_inventory(&[("drain_detect", "\"lb\"")]);
    let load = Load::start(f.alb.addr, 20, Duration::from_secs(120));
    let run = f.rolling_deploy();
    let report = load.stop();
    let ctx = f.context(&run);
    assert_eq!(run.code, Some(0), "{ctx}");
    assert!(
        report.failures().is_empty(),
        "requests failed through the ALB:\n{}\n{ctx}",
        report.summary()
    );
    let drains = f.drains();
    assert_eq!(drains.len(), 2, "{ctx}");
    let delay_ms = delay_s * 1000;
    for (name, d) in &drains {
        assert_eq!(d.ended_by, "lb", "{name}: {d:?}\n{ctx}");
        // moto ends `draining` at the delay; rollscript sees it at its next poll.
        assert!(
            (delay_ms - 300..delay_ms + 3_000).contains(&d.waited_ms),
            "{name} drained in {} ms against a delay of {delay_ms} ms\n{ctx}",
            d.waited_ms
        );
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{name} drained in ")))
            .unwrap_or_else(|| panic!("no drain line for {name}\n{ctx}"));
        assert!(
            line.contains(": the load balancer reports it unused"),
            "{line}"
        );
    }
    assert!(
        !run.stderr.contains("connection on the host"),
        "drain_detect = \"lb\" asked the hosts\n{ctx}"
    );
    assert_eq!(f.targets(), f.all_healthy(), "{ctx}");
}
