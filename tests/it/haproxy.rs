//! The HAProxy provider against a real HAProxy 2.6 on loopback: the load
//! balancer contract (`lb_contract.rs`), drains that wait for the request in
//! flight, health-check verdicts, weights, stats, blue/green switches,
//! address matching, the operator's errors — and the same through the CLI.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rollscript::config::{Instance, Inventory};
use rollscript::primitives::{ErrorKind, LbOp, LoadBalancer, MemberState};
use rollscript::providers::haproxy::HaproxyLb;

use crate::harness::backend::Backend;
use crate::harness::haproxy::Haproxy;
use crate::harness::http::get;
use crate::harness::sampler::haproxy_in_service;
use crate::harness::{rollscript, wait_until, Proc, SHIFT_WEB_1};
use crate::lb_contract::{self, Subject};

const WAIT: Duration = Duration::from_secs(30);

/// Backends `web-1..=n`, an HAProxy in front of them (servers named like
/// the instances unless `names` says otherwise), and the inventory.
struct Fleet {
    backends: Vec<Backend>,
    haproxy: Haproxy,
    inv: Arc<Inventory>,
    lb: Arc<HaproxyLb>,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        let names: Vec<String> = (1..=n).map(|i| format!("web-{i}")).collect();
        Self::with_server_names(&names, "")
    }

    /// `server_names[i]` is the HAProxy name of backend `web-{i+1}`;
    /// `extra_toml` is appended to the inventory (pools).
    fn with_server_names(server_names: &[String], extra_toml: &str) -> Fleet {
        let backends: Vec<Backend> = (1..=server_names.len())
            .map(|i| Backend::start(&format!("web-{i}")))
            .collect();
        let servers: Vec<(&str, u16)> = server_names
            .iter()
            .zip(&backends)
            .map(|(n, b)| (n.as_str(), b.port))
            .collect();
        let haproxy = Haproxy::start("credit_radar", &servers);
        let inv = Arc::new(inventory(
            haproxy.dir(),
            &haproxy.socket.display().to_string(),
            &backends,
            extra_toml,
        ));
        let lb = Arc::new(HaproxyLb::new(inv.clone()));
        Fleet {
            backends,
            haproxy,
            inv,
            lb,
        }
    }

    fn inst(&self, name: &str) -> Instance {
        self.inv.instance(name).unwrap().clone()
    }

    /// `n` requests through HAProxy; the names of the backends that answered.
    fn traffic(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let (status, body) = get(self.haproxy.port, "/").unwrap();
                assert_eq!(status, 200, "{body}");
                body.trim().to_string()
            })
            .collect()
    }
}

/// An inventory for `backends` behind the HAProxy at `socket`, written to
/// `dir/rollscript.toml` (the CLI tests run against the same file).
fn inventory(dir: &Path, socket: &str, backends: &[Backend], extra_toml: &str) -> Inventory {
    let mut text = format!(
        "[app]\nname = \"credit_radar\"\n\n[health]\nport = 4000\npath = \"/health\"\n\n\
         [lb]\nkind = \"haproxy\"\nsocket = \"{socket}\"\nbackend = \"credit_radar\"\n\
         drain_timeout = \"30s\"\nregister_timeout = \"30s\"\n{extra_toml}\n"
    );
    for b in backends {
        text.push_str(&format!(
            "[[instances]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            b.name, b.port
        ));
        if extra_toml.contains("[lb.pools") {
            let pool = if b.name == "web-1" || b.name == "web-2" {
                "blue"
            } else {
                "green"
            };
            text.push_str(&format!("pool = \"{pool}\"\n"));
        }
        text.push('\n');
    }
    let path = dir.join("rollscript.toml");
    std::fs::write(&path, &text).unwrap();
    Inventory::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_request_in_flight_then_puts_the_server_in_maint() {
    let fleet = Fleet::start(2);
    let port = fleet.haproxy.port;
    let slow = std::thread::spawn(move || get(port, "/slow?ms=60000"));
    wait_until("the slow request to reach a backend", WAIT, || {
        fleet.backends.iter().any(|b| b.slow_in_flight() == 1)
    });
    let (victim, other) = if fleet.backends[0].slow_in_flight() == 1 {
        (&fleet.backends[0], &fleet.backends[1])
    } else {
        (&fleet.backends[1], &fleet.backends[0])
    };
    let inst = fleet.inst(&victim.name);

    fleet.lb.deregister(&inst).await.unwrap();
    assert_eq!(fleet.haproxy.status(&victim.name), "DRAIN");
    assert_eq!(fleet.haproxy.stat(&victim.name, "scur"), "1");
    assert_eq!(fleet.lb.state(&inst).await.unwrap(), MemberState::Draining);

    let hits_before = victim.hits();
    let served = fleet.traffic(6);
    assert!(served.iter().all(|s| *s == other.name), "{served:?}");
    assert_eq!(
        victim.hits(),
        hits_before,
        "no new request reached the drained server"
    );

    let drain = fleet.lb.wait_drained(&inst, WAIT);
    tokio::pin!(drain);
    // The backend holds the request until released: the drain cannot end.
    let held = tokio::time::timeout(Duration::from_millis(300), &mut drain).await;
    assert!(
        held.is_err(),
        "drain ended with a request in flight: {held:?}"
    );
    assert_eq!(fleet.haproxy.status(&victim.name), "DRAIN");
    victim.release_slow();
    let report = drain.await.unwrap();
    assert_eq!(
        victim.slow_done(),
        1,
        "the drain returned only after the request in flight had finished"
    );
    assert_eq!(report.connections_at_start, Some(1));
    assert_eq!(fleet.haproxy.status(&victim.name), "MAINT");
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(
        (status, body.trim()),
        (200, format!("{} slow", victim.name).as_str())
    );
}

#[async_trait::async_trait]
impl Subject for Fleet {
    fn lb(&self) -> &dyn LoadBalancer {
        &*self.lb
    }

    fn inventory(&self) -> &Inventory {
        &self.inv
    }

    async fn in_rotation(&self, name: &str) -> bool {
        haproxy_in_service(&self.haproxy.status(name))
    }

    async fn weight(&self, name: &str) -> u32 {
        self.haproxy.stat(name, "weight").parse().unwrap()
    }

    fn served(&self, n: usize) -> Option<Vec<String>> {
        Some(self.traffic(n))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_keeps_the_load_balancer_contract() {
    lb_contract::check(&Fleet::start(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_in_service_fails_with_haproxys_reason_when_checks_mark_it_down() {
    let fleet = Fleet::start(2);
    let web1 = fleet.inst("web-1");
    fleet.lb.deregister(&web1).await.unwrap();
    fleet.lb.wait_drained(&web1, WAIT).await.unwrap();
    fleet.backends[0].set_healthy(false);
    fleet.lb.register(&web1).await.unwrap();
    let e = fleet
        .lb
        .wait_in_service(&web1, Duration::from_secs(600))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::HealthFailed, "{e}");
    assert_eq!(e.host.as_deref(), Some("web-1"));
    assert_eq!(
        e.message,
        "HAProxy's health checks marked credit_radar/web-1 DOWN: Layer7 wrong status (L7STS 503: Service Unavailable)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_from_before_ready_is_not_taken_for_a_new_verdict() {
    // Drained but not in maint: checks go on, and mark it DOWN while the
    // app restarts.
    let fleet = Fleet::start(2);
    let web1 = fleet.inst("web-1");
    fleet.lb.deregister(&web1).await.unwrap();
    fleet.backends[0].set_healthy(false);
    fleet.haproxy.wait_status("web-1", "DOWN");

    // Still failing: reported once the wait is over, with HAProxy's reason.
    fleet.lb.register(&web1).await.unwrap();
    let e = fleet
        .lb
        .wait_in_service(&web1, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::HealthFailed);
    assert_eq!(
        e.message,
        "HAProxy's health checks marked credit_radar/web-1 DOWN (still, after 500ms): Layer7 wrong status (L7STS 503: Service Unavailable)"
    );

    // Healthy again: the stale DOWN gives way to rising checks, then UP.
    fleet.backends[0].set_healthy(true);
    fleet.lb.wait_in_service(&web1, WAIT).await.unwrap();
    assert_eq!(fleet.haproxy.status("web-1"), "UP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_refuses_a_server_still_in_rotation_and_times_out_naming_open_sessions() {
    let fleet = Fleet::start(2);
    let web1 = fleet.inst("web-1");
    let e = fleet.lb.wait_drained(&web1, WAIT).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lb);
    assert!(
        e.message
            .contains("still in rotation (status UP): deregister(inst) first"),
        "{e}"
    );

    let port = fleet.haproxy.port;
    let slow = std::thread::spawn(move || get(port, "/slow?ms=60000"));
    wait_until("a slow request in flight", WAIT, || {
        fleet.backends.iter().any(|b| b.slow_in_flight() == 1)
    });
    let holder = fleet
        .backends
        .iter()
        .find(|b| b.slow_in_flight() == 1)
        .unwrap();
    let inst = fleet.inst(&holder.name);
    fleet.lb.deregister(&inst).await.unwrap();
    let e = fleet
        .lb
        .wait_drained(&inst, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DrainTimeout);
    assert_eq!(
        e.message,
        format!("1 session(s) still open and 0 queued on HAProxy server credit_radar/{} after 300ms; it is left in DRAIN (no new traffic). Raise lb.drain_timeout, or look for long-lived connections (websockets, streaming, slow clients)", holder.name)
    );
    assert_eq!(fleet.haproxy.status(&holder.name), "DRAIN");
    holder.release_slow();
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_weight_and_stats_show_haproxys_own_numbers() {
    let fleet = Fleet::start(2);
    let web1 = fleet.inst("web-1");
    fleet.lb.set_weight(&web1, 7).await.unwrap();
    assert_eq!(fleet.haproxy.stat("web-1", "weight"), "7");

    // Weight 0: registered and checked, but idle.
    fleet.lb.set_weight(&web1, 0).await.unwrap();
    assert!(fleet.traffic(4).iter().all(|s| s == "web-2"));
    fleet.lb.set_weight(&web1, 1).await.unwrap();
    let before = fleet.backends[0].hits();
    fleet.traffic(4);
    let (status, _) = get(fleet.haproxy.port, "/status?code=503").unwrap();
    assert_eq!(status, 503);
    let (status, _) = get(fleet.haproxy.port, "/status?code=503").unwrap();
    assert_eq!(status, 503);
    let web1_hits = fleet.backends[0].hits() - before;
    assert!(web1_hits >= 2, "round robin sent web-1 {web1_hits} of 6");
    // HAProxy frees a session a moment after the client has its response.
    for s in ["web-1", "web-2"] {
        wait_until("no session open", WAIT, || {
            fleet.haproxy.stat(s, "scur") == "0"
        });
    }

    let stats = fleet.lb.stats(&web1).await.unwrap();
    assert_eq!(stats["weight"], 1.0);
    assert_eq!(stats["sessions"], 0.0);
    assert_eq!(stats["queue"], 0.0);
    assert_eq!(stats["requests"], fleet.backends[0].hits() as f64);
    let s2 = fleet.lb.stats(&fleet.inst("web-2")).await.unwrap();
    assert_eq!(stats["http_5xx"] + s2["http_5xx"], 2.0);
    assert_eq!(
        stats["http_2xx"] + stats["http_5xx"],
        fleet.backends[0].hits() as f64
    );
    assert!(stats.contains_key("response_ms"));

    let e = fleet.lb.set_weight(&web1, 300).await.unwrap_err();
    assert!(
        e.message
            .contains("\"Absolute weight can only be between 0 and 256 inclusive.\""),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_is_reported_with_haproxys_reply_and_what_the_backend_holds() {
    let fleet = Fleet::start(1);
    let mut ghost = fleet.inst("web-1");
    ghost.name = "web-9".into();
    ghost.port = Some(1);
    let e = fleet.lb.deregister(&ghost).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lb);
    assert_eq!(e.host.as_deref(), Some("web-9"));
    assert_eq!(
        e.message,
        format!(
            "HAProxy at {} replied \"No such server.\": backend credit_radar has no server named web-9 nor one at 127.0.0.1:1 (its servers: web-1)",
            fleet.haproxy.socket.display()
        )
    );
    assert_eq!(
        e.command.as_deref(),
        Some("set server credit_radar/web-9 state drain")
    );
    assert_eq!(fleet.lb.state(&ghost).await.unwrap(), MemberState::Unknown);
    assert_eq!(
        fleet.haproxy.status("web-1"),
        "UP",
        "nothing else was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_socket_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-such.sock");
    let backend = Backend::start("web-1");
    let inv = Arc::new(inventory(
        dir.path(),
        &socket.display().to_string(),
        std::slice::from_ref(&backend),
        "",
    ));
    let lb = HaproxyLb::new(inv.clone());
    let e = lb.deregister(&inv.instances[0]).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lb);
    assert_eq!(e.host.as_deref(), Some("web-1"));
    assert_eq!(
        e.message,
        format!(
            "cannot connect to HAProxy runtime API at {s}: No such file or directory — is HAProxy running, with `stats socket {s} level admin` in its global section?",
            s = socket.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_named_differently_are_found_by_address() {
    let fleet = Fleet::with_server_names(&["srv-a".into(), "srv-b".into()], "");
    let web2 = fleet.inst("web-2");
    fleet.lb.deregister(&web2).await.unwrap();
    assert_eq!(fleet.haproxy.status("srv-b"), "DRAIN");
    assert_eq!(fleet.haproxy.status("srv-a"), "UP");
    assert_eq!(fleet.lb.state(&web2).await.unwrap(), MemberState::Draining);
    fleet.lb.wait_drained(&web2, WAIT).await.unwrap();
    assert_eq!(fleet.haproxy.status("srv-b"), "MAINT");
    fleet.lb.register(&web2).await.unwrap();
    fleet.lb.wait_in_service(&web2, WAIT).await.unwrap();
    assert_eq!(fleet.haproxy.status("srv-b"), "UP");
    fleet.lb.set_weight(&web2, 5).await.unwrap();
    assert_eq!(fleet.haproxy.stat("srv-b", "weight"), "5");
    assert_eq!(fleet.lb.stats(&web2).await.unwrap()["weight"], 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_api_also_answers_on_tcp() {
    let fleet = Fleet::start(1);
    let inv = Arc::new(inventory(
        fleet.haproxy.dir(),
        &fleet.haproxy.api_addr,
        &fleet.backends,
        "",
    ));
    let lb = HaproxyLb::new(inv.clone());
    lb.deregister(&inv.instances[0]).await.unwrap();
    assert_eq!(fleet.haproxy.status("web-1"), "DRAIN");
    assert_eq!(
        lb.state(&inv.instances[0]).await.unwrap(),
        MemberState::Draining
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_pool_moves_all_traffic_in_one_command_and_back() {
    let names: Vec<String> = (1..=4).map(|i| format!("web-{i}")).collect();
    let fleet = Fleet::with_server_names(&names, "[lb.pools.blue]\n[lb.pools.green]\n");
    // green is the idle pool: deployed, not serving.
    for s in ["web-3", "web-4"] {
        assert_eq!(
            fleet
                .haproxy
                .cmd(&format!("set server credit_radar/{s} state maint")),
            ""
        );
    }
    assert_eq!(
        fleet.lb.describe_switch("green"),
        "haproxy: ready credit_radar/web-3, credit_radar/web-4 (pool green), drain credit_radar/web-1, credit_radar/web-2 — one command"
    );
    let only = |served: Vec<String>, pool: [&str; 2]| {
        assert!(
            served.iter().all(|s| pool.contains(&s.as_str())),
            "{served:?}"
        );
    };
    only(fleet.traffic(4), ["web-1", "web-2"]);

    fleet.lb.switch_pool("green").await.unwrap();
    only(fleet.traffic(6), ["web-3", "web-4"]);
    // `DRAIN 1/2` while a server has one check of slack left after `ready`.
    for s in ["web-1", "web-2"] {
        assert!(fleet.haproxy.status(s).starts_with("DRAIN"), "{s}");
    }

    fleet.lb.switch_pool("blue").await.unwrap();
    only(fleet.traffic(6), ["web-1", "web-2"]);
    for s in ["web-3", "web-4"] {
        assert!(fleet.haproxy.status(s).starts_with("DRAIN"), "{s}");
    }

    // A pool HAProxy knows is dead is not switched to.
    fleet.backends[2].set_healthy(false);
    fleet.backends[3].set_healthy(false);
    fleet.haproxy.wait_status("web-3", "DOWN");
    fleet.haproxy.wait_status("web-4", "DOWN");
    let e = fleet.lb.switch_pool("green").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::HealthFailed);
    assert!(
        e.message.starts_with("refusing to switch to pool green"),
        "{e}"
    );
    only(fleet.traffic(4), ["web-1", "web-2"]);
}

#[test]
fn plan_texts_name_the_backend_server_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start("web-1");
    let inv = Arc::new(inventory(
        dir.path(),
        "/run/haproxy/admin.sock",
        std::slice::from_ref(&backend),
        "",
    ));
    let lb = HaproxyLb::new(inv.clone());
    let web1 = &inv.instances[0];
    let texts: Vec<String> = [
        LbOp::Deregister,
        LbOp::WaitDrained { timeout: WAIT },
        LbOp::Register,
        LbOp::WaitInService { timeout: WAIT },
        LbOp::SetWeight(10),
    ]
    .into_iter()
    .map(|op| lb.describe(op, web1))
    .collect();
    assert_eq!(
        texts,
        [
            "haproxy credit_radar/web-1: drain",
            "haproxy credit_radar/web-1: wait until 0 sessions, then maint",
            "haproxy credit_radar/web-1: ready",
            "haproxy credit_radar/web-1: wait until UP",
            "haproxy credit_radar/web-1: weight 10",
        ]
    );
}

const CYCLE_EVERY_INSTANCE: &str = "for inst in instances() {\n    deregister(inst);\n    wait_drained(inst);\n    register(inst);\n    wait_in_service(inst);\n}\n";

#[test]
fn the_cli_cycles_every_instance_through_haproxy_and_plan_touches_nothing() {
    let fleet = Fleet::start(3);
    let dir = fleet.haproxy.dir();
    std::fs::write(dir.join("cycle.rhai"), CYCLE_EVERY_INSTANCE).unwrap();

    // Plan first, with web-3 in maint: a run would make it ready, a plan must not.
    assert_eq!(
        fleet
            .haproxy
            .cmd("set server credit_radar/web-3 state maint"),
        ""
    );
    let out = rollscript()
        .current_dir(dir)
        .args(["plan", "cycle.rhai", "-i", "rollscript.toml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{plan}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "haproxy credit_radar/web-1: drain",
        "haproxy credit_radar/web-1: wait until 0 sessions, then maint",
        "haproxy credit_radar/web-1: ready",
        "haproxy credit_radar/web-1: wait until UP",
        "haproxy credit_radar/web-3: wait until UP",
    ] {
        assert!(plan.contains(step), "missing {step:?} in\n{plan}");
    }
    assert_eq!(fleet.haproxy.status("web-3"), "MAINT");
    assert_eq!(fleet.haproxy.status("web-1"), "UP");
    assert_eq!(
        fleet
            .haproxy
            .cmd("set server credit_radar/web-3 state ready"),
        ""
    );
    fleet.haproxy.wait_status("web-3", "UP");

    let before: Vec<u64> = fleet.backends.iter().map(|b| b.hits()).collect();
    let out = rollscript()
        .current_dir(dir)
        .args(["run", "cycle.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fleet.haproxy.log()
    );
    for s in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.haproxy.status(s), "UP", "{s} is back in rotation");
    }
    let log = fleet.haproxy.log();
    for s in ["web-1", "web-2", "web-3"] {
        assert!(
            log.contains(&format!(
                "Server credit_radar/{s} is going DOWN for maintenance"
            )),
            "{s} went through maint:\n{log}"
        );
    }
    let after: Vec<u64> = fleet.backends.iter().map(|b| b.hits()).collect();
    assert_eq!(before, after, "the cycle itself sends no traffic");
    let served = fleet.traffic(6);
    for b in &fleet.backends {
        assert!(
            served.contains(&b.name),
            "{} serves again: {served:?}",
            b.name
        );
    }
}

#[test]
fn shift_traffic_weighs_the_canary_and_a_failed_run_puts_the_weights_back() {
    let fleet = Fleet::start(3);
    let dir = fleet.haproxy.dir();
    let weights = || -> Vec<String> {
        ["web-1", "web-2", "web-3"]
            .iter()
            .map(|s| fleet.haproxy.stat(s, "weight"))
            .collect()
    };
    assert_eq!(weights(), ["1", "1", "1"]);
    std::fs::write(dir.join("shift.rhai"), SHIFT_WEB_1).unwrap();
    std::fs::write(
        dir.join("shift_fail.rhai"),
        format!("{SHIFT_WEB_1}fail(\"gate_failed\", \"the gate says no\");\n"),
    )
    .unwrap();

    // A run that succeeds keeps the weights it set: 1 against 2 for 20 %.
    let out = rollscript()
        .current_dir(dir)
        .args(["run", "shift.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("haproxy: weight 128 for web-1, 256 for the other 2 instance(s): 20.0% of the traffic to web-1"),
        "{stderr}"
    );
    assert_eq!(weights(), ["128", "256", "256"]);
    let served = fleet.traffic(50);
    let to_web1 = served.iter().filter(|s| *s == "web-1").count();
    assert!(
        (8..=12).contains(&to_web1),
        "web-1 served {to_web1} of 50: {served:?}"
    );

    // A run that fails after shifting puts every weight back as configured.
    let out = rollscript()
        .current_dir(dir)
        .args(["run", "shift_fail.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the run stopped with the LB weights of 3 instance(s) changed — putting them back as configured"),
        "{stderr}"
    );
    assert_eq!(weights(), ["1", "1", "1"]);
}

#[test]
fn recover_after_a_kill_puts_shifted_weights_back_as_configured() {
    let fleet = Fleet::start(3);
    let dir = fleet.haproxy.dir();
    let weights = || -> Vec<String> {
        ["web-1", "web-2", "web-3"]
            .iter()
            .map(|s| fleet.haproxy.stat(s, "weight"))
            .collect()
    };
    std::fs::write(
        dir.join("shift_then_bake.rhai"),
        format!("{SHIFT_WEB_1}sleep(\"60s\");\n"),
    )
    .unwrap();
    // Stopped by PID on drop, also if an assertion below fails.
    let mut run = Proc::spawn(
        "rollscript run",
        rollscript()
            .current_dir(dir)
            .args([
                "run",
                "shift_then_bake.rhai",
                "-i",
                "rollscript.toml",
                "--yes",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_until("the weights shifted", WAIT, || {
        weights() == ["128", "256", "256"]
    });
    // kill -9: no compensation of its own.
    run.signal(libc::SIGKILL);
    run.child.wait().unwrap();
    assert_eq!(weights(), ["128", "256", "256"]);

    let out = rollscript()
        .current_dir(dir)
        .args(["recover", "-i", "rollscript.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("out of service: none; LB weights changed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("LB weights: 3 instance(s) back as configured"),
        "{stdout}"
    );
    assert_eq!(weights(), ["1", "1", "1"]);
}
