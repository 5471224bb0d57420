//! The nginx provider against a real nginx 1.22 on loopback: the load
//! balancer contract (`lb_contract.rs`), `down` + reload with a request in
//! flight, drains per upstream server (connections counted with `ss`), weights, blue/green,
//! rejected configs restored — and the same through the CLI.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rollscript::config::{Instance, Inventory};
use rollscript::primitives::{ErrorKind, LbOp, LoadBalancer, MemberState, Transport};
use rollscript::providers::local::LocalTransport;
use rollscript::providers::nginx::NginxLb;

use crate::harness::backend::Backend;
use crate::harness::fleet::upstream_weight;
use crate::harness::http::get;
use crate::harness::nginx::Nginx;
use crate::harness::{rollscript, wait_until, SHIFT_WEB_1};
use crate::lb_contract::{self, Subject};

const WAIT: Duration = Duration::from_secs(30);

struct Fleet {
    backends: Vec<Backend>,
    nginx: Nginx,
    inv: Arc<Inventory>,
    lb: Arc<NginxLb>,
}

impl Fleet {
    fn start(n: usize) -> Fleet {
        Self::with(n, "")
    }

    /// `extra_lb_toml` goes into `[lb]` (e.g. `run_on`); pools are added when
    /// it mentions them: web-1 and web-2 blue, the rest green.
    fn with(n: usize, extra_lb_toml: &str) -> Fleet {
        let backends: Vec<Backend> = (1..=n)
            .map(|i| Backend::start(&format!("web-{i}")))
            .collect();
        let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
        let nginx = Nginx::start(&ports);
        let inv = Arc::new(inventory(&nginx, &backends, extra_lb_toml));
        let local: Arc<dyn Transport> = Arc::new(LocalTransport);
        // `run_on` goes "over ssh": here a local shell stands in for the
        // ssh transport, so the remote scripts run for real.
        let lb = Arc::new(NginxLb::new(inv.clone(), local.clone(), local));
        Fleet {
            backends,
            nginx,
            inv,
            lb,
        }
    }

    fn inst(&self, name: &str) -> Instance {
        self.inv.instance(name).unwrap().clone()
    }

    fn traffic(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let (status, body) = get(self.nginx.port, "/").unwrap();
                assert_eq!(status, 200, "{body}");
                body.trim().to_string()
            })
            .collect()
    }

    fn addr(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.inst(name).port.unwrap())
    }

    /// How many reloads nginx's master has begun.
    fn reloads(&self) -> usize {
        self.nginx.error_log().matches("(SIGHUP) received").count()
    }
}

fn inventory(nginx: &Nginx, backends: &[Backend], extra_lb_toml: &str) -> Inventory {
    let pools = extra_lb_toml.contains("[lb.pools");
    let mut text = format!(
        "[app]\nname = \"credit_radar\"\n\n[health]\nport = 4000\n\n\
         [lb]\nkind = \"nginx\"\nupstream_file = \"{}\"\nupstream = \"backend\"\n\
         test_command = \"{}\"\nreload_command = \"{}\"\n\
         drain_timeout = \"30s\"\n{extra_lb_toml}\n",
        nginx.upstream_file.display(),
        nginx.test_command,
        nginx.reload_command
    );
    for b in backends {
        text.push_str(&format!(
            "[[instances]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            b.name, b.port
        ));
        if pools {
            let pool = if ["web-1", "web-2"].contains(&b.name.as_str()) {
                "blue"
            } else {
                "green"
            };
            text.push_str(&format!("pool = \"{pool}\"\n"));
        }
        text.push('\n');
    }
    let path = nginx.dir().join("rollscript.toml");
    std::fs::write(&path, text).unwrap();
    Inventory::load(&path).unwrap()
}

/// The `server` lines of the upstream file, trimmed.
fn servers(file: &Path) -> Vec<String> {
    servers_of(&std::fs::read_to_string(file).unwrap())
}

/// The `server` lines of an upstream file's text, trimmed.
fn servers_of(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_survives_the_reload_and_no_new_request_reaches_the_down_server() {
    let fleet = Fleet::start(2);
    let [(old_worker, _)] = fleet.nginx.workers()[..] else {
        panic!("one worker expected: {:?}", fleet.nginx.workers());
    };
    let port = fleet.nginx.port;
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
    assert!(
        servers(&fleet.nginx.upstream_file)
            .contains(&format!("server {} down;", fleet.addr(&victim.name))),
        "{}",
        fleet.nginx.upstream()
    );
    assert_eq!(
        fleet.lb.state(&inst).await.unwrap(),
        MemberState::OutOfService
    );
    let workers = fleet.nginx.workers();
    assert!(
        workers.contains(&(old_worker, "nginx: worker process is shutting down".into())),
        "the old worker finishes the request in flight: {workers:?}"
    );

    let hits_before = victim.hits();
    let served = fleet.traffic(6);
    assert!(served.iter().all(|s| *s == other.name), "{served:?}");
    assert_eq!(
        victim.hits(),
        hits_before,
        "no new request reached the down server"
    );

    let drain = fleet.lb.wait_drained(&inst, WAIT);
    tokio::pin!(drain);
    // The backend holds the request until released: the old worker stays.
    let held = tokio::time::timeout(Duration::from_millis(300), &mut drain).await;
    assert!(
        held.is_err(),
        "drain ended with a request in flight: {held:?}"
    );
    victim.release_slow();
    drain.await.unwrap();
    assert_eq!(
        victim.slow_done(),
        1,
        "the drain returned only after the request in flight had finished"
    );
    assert!(
        fleet
            .nginx
            .workers()
            .iter()
            .all(|(pid, _)| *pid != old_worker),
        "the old worker has exited"
    );
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
        let addr = self.addr(name);
        let servers = self.nginx.servers();
        let (_, down) = servers
            .iter()
            .find(|(a, _)| *a == addr)
            .unwrap_or_else(|| panic!("no server {addr} in:\n{}", self.nginx.upstream()));
        !down
    }

    async fn weight(&self, name: &str) -> u32 {
        upstream_weight(&self.nginx.upstream(), &self.addr(name)).unwrap()
    }

    fn served(&self, n: usize) -> Option<Vec<String>> {
        Some(self.traffic(n))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_the_load_balancer_contract() {
    lb_contract::check(&Fleet::start(3)).await;
}

/// What the contract does not cover: a wait before the register names the
/// missing step, and the register writes the server line back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_in_service_before_register_says_so_and_register_restores_the_line() {
    let fleet = Fleet::start(2);
    let web1 = fleet.inst("web-1");
    fleet.lb.deregister(&web1).await.unwrap();
    fleet.lb.wait_drained(&web1, WAIT).await.unwrap();
    let e = fleet.lb.wait_in_service(&web1, WAIT).await.unwrap_err();
    assert!(e.message.contains("register(inst) first"), "{e}");

    fleet.backends[0].set_version("web-1 v2");
    fleet.lb.register(&web1).await.unwrap();
    fleet.lb.wait_in_service(&web1, WAIT).await.unwrap();
    assert_eq!(
        servers(&fleet.nginx.upstream_file),
        [
            format!("server {};", fleet.addr("web-1")),
            format!("server {};", fleet.addr("web-2"))
        ]
    );
    let served = fleet.traffic(4);
    assert!(served.contains(&"web-1 v2".to_string()), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_nginx_rejects_is_rolled_back_and_its_message_reported() {
    let fleet = Fleet::start(2);
    // An operator's typo in a parameter rollscript keeps as written.
    let broken = fleet.nginx.upstream().replace(
        &format!("server {};", fleet.addr("web-2")),
        &format!("server {} max_fails=abc;", fleet.addr("web-2")),
    );
    std::fs::write(&fleet.nginx.upstream_file, &broken).unwrap();
    let reloads = fleet.reloads();

    let e = fleet.lb.deregister(&fleet.inst("web-1")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lb);
    assert_eq!(e.host.as_deref(), Some("web-1"));
    let file = fleet.nginx.upstream_file.display().to_string();
    assert_eq!(
        e.message,
        format!("nginx test failed after rewriting {file}: nginx: [emerg] invalid parameter \"max_fails=abc\" in {file}:7; {file} restored")
    );
    assert_eq!(
        e.command.as_deref(),
        Some(fleet.nginx.test_command.as_str())
    );
    assert_eq!(e.status, Some(1));
    assert_eq!(fleet.nginx.upstream(), broken, "the file is as it was");
    assert_eq!(fleet.reloads(), reloads, "nginx was not reloaded");
    let served = fleet.traffic(4);
    assert!(
        served.contains(&"web-1".to_string()),
        "web-1 still serves: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_command_leaves_the_file_and_nginx_as_they_were() {
    let fleet = Fleet::with(2, "");
    // Same fleet, but a test_command that refuses everything.
    let text = std::fs::read_to_string(&fleet.inv.path).unwrap().replace(
        &format!("test_command = \"{}\"", fleet.nginx.test_command),
        "test_command = \"echo 'config says no' >&2; exit 3\"",
    );
    std::fs::write(&fleet.inv.path, text).unwrap();
    let inv = Arc::new(Inventory::load(&fleet.inv.path).unwrap());
    let local: Arc<dyn Transport> = Arc::new(LocalTransport);
    let lb = NginxLb::new(inv.clone(), local.clone(), local);
    let before = fleet.nginx.upstream();

    let e = lb.set_weight(&fleet.inst("web-1"), 5).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Lb);
    assert_eq!(
        e.message,
        format!(
            "nginx test failed after rewriting {f}: config says no; {f} restored",
            f = fleet.nginx.upstream_file.display()
        )
    );
    assert_eq!(e.status, Some(3));
    assert_eq!(e.stderr, ["config says no"]);
    assert_eq!(fleet.nginx.upstream(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_are_written_and_nginx_balances_by_them() {
    let fleet = Fleet::start(2);
    let web1 = fleet.inst("web-1");
    fleet.lb.set_weight(&web1, 3).await.unwrap();
    assert_eq!(
        servers(&fleet.nginx.upstream_file),
        [
            format!("server {} weight=3;", fleet.addr("web-1")),
            format!("server {};", fleet.addr("web-2"))
        ]
    );
    let served = fleet.traffic(8);
    let to_web1 = served.iter().filter(|s| *s == "web-1").count();
    assert_eq!((to_web1, 8 - to_web1), (6, 2), "{served:?}");

    // Down and back keeps the weight: the file is the state.
    fleet.lb.deregister(&web1).await.unwrap();
    fleet.lb.register(&web1).await.unwrap();
    assert_eq!(
        servers(&fleet.nginx.upstream_file)[0],
        format!("server {} weight=3;", fleet.addr("web-1"))
    );

    let e = fleet.lb.set_weight(&web1, 0).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("use deregister(inst)"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_pool_leaves_only_the_target_pool_up() {
    let fleet = Fleet::with(4, "[lb.pools.blue]\n[lb.pools.green]\n");
    fleet.lb.switch_pool("blue").await.unwrap();
    let only = |served: Vec<String>, pool: [&str; 2]| {
        assert!(
            served.iter().all(|s| pool.contains(&s.as_str())),
            "{served:?}"
        );
    };
    only(fleet.traffic(6), ["web-1", "web-2"]);

    fleet.lb.switch_pool("green").await.unwrap();
    assert_eq!(
        servers(&fleet.nginx.upstream_file),
        [
            format!("server {} down;", fleet.addr("web-1")),
            format!("server {} down;", fleet.addr("web-2")),
            format!("server {};", fleet.addr("web-3")),
            format!("server {};", fleet.addr("web-4")),
        ]
    );
    only(fleet.traffic(6), ["web-3", "web-4"]);
    // The old pool drains like a deregistered instance.
    fleet
        .lb
        .wait_drained(&fleet.inst("web-1"), WAIT)
        .await
        .unwrap();

    fleet.lb.switch_pool("blue").await.unwrap();
    only(fleet.traffic(6), ["web-1", "web-2"]);
    assert_eq!(
        fleet.lb.describe_switch("green"),
        format!(
            "nginx: upstream backend: up {}, {} (pool green), down {}, {}, test, reload",
            fleet.addr("web-3"),
            fleet.addr("web-4"),
            fleet.addr("web-1"),
            fleet.addr("web-2")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_remote_lb_host_the_same_cycle_runs_as_shell_scripts() {
    let fleet = Fleet::with(2, "run_on = \"web-1\"\n");
    let port = fleet.nginx.port;
    let slow = std::thread::spawn(move || get(port, "/slow?ms=60000"));
    wait_until("the slow request to reach a backend", WAIT, || {
        fleet.backends.iter().any(|b| b.slow_in_flight() == 1)
    });
    let victim = fleet
        .backends
        .iter()
        .find(|b| b.slow_in_flight() == 1)
        .unwrap();
    let inst = fleet.inst(&victim.name);
    assert_eq!(
        fleet.lb.describe(LbOp::Deregister, &inst),
        format!(
            "nginx on web-1: mark {} down, test, reload",
            fleet.addr(&victim.name)
        )
    );

    fleet.lb.deregister(&inst).await.unwrap();
    assert_eq!(
        fleet.lb.state(&inst).await.unwrap(),
        MemberState::OutOfService
    );
    // Counted on the LB host over ssh; past its bound it names the server.
    let e = fleet
        .lb
        .wait_drained(&inst, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DrainTimeout);
    assert!(
        e.message.starts_with(&format!(
            "1 connection(s) from nginx on web-1 to {} still open after 300ms",
            fleet.addr(&victim.name)
        )),
        "{e}"
    );
    victim.release_slow();
    fleet.lb.wait_drained(&inst, WAIT).await.unwrap();
    assert_eq!(victim.slow_done(), 1);
    assert_eq!(slow.join().unwrap().unwrap().0, 200);

    fleet.lb.register(&inst).await.unwrap();
    fleet.lb.wait_in_service(&inst, WAIT).await.unwrap();
    let served = fleet.traffic(4);
    assert!(served.contains(&victim.name), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_timeout_names_the_connections_still_open_to_that_server() {
    let fleet = Fleet::start(2);
    let port = fleet.nginx.port;
    let slow = std::thread::spawn(move || get(port, "/slow?ms=60000"));
    wait_until("the slow request to reach a backend", WAIT, || {
        fleet.backends.iter().any(|b| b.slow_in_flight() == 1)
    });
    let victim = fleet
        .backends
        .iter()
        .find(|b| b.slow_in_flight() == 1)
        .unwrap();
    let inst = fleet.inst(&victim.name);
    fleet.lb.deregister(&inst).await.unwrap();
    let e = fleet
        .lb
        .wait_drained(&inst, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::DrainTimeout);
    assert_eq!(
        e.message,
        format!("1 connection(s) from nginx to {a} still open after 300ms; {a} is marked down, so it gets no new ones. Raise lb.drain_timeout, or set nginx's worker_shutdown_timeout for long-lived connections (websockets, streaming)", a = fleet.addr(&victim.name))
    );
    // A retry waits for the same server.
    victim.release_slow();
    fleet.lb.wait_drained(&inst, WAIT).await.unwrap();
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
}

#[test]
fn plan_texts_say_what_nginx_will_do() {
    let fleet = Fleet::start(1);
    let web1 = fleet.inst("web-1");
    let a = fleet.addr("web-1");
    let texts: Vec<String> = [
        LbOp::Deregister,
        LbOp::WaitDrained {
            timeout: Duration::from_secs(120),
        },
        LbOp::Register,
        LbOp::WaitInService { timeout: WAIT },
        LbOp::SetWeight(10),
    ]
    .into_iter()
    .map(|op| fleet.lb.describe(op, &web1))
    .collect();
    assert_eq!(
        texts,
        [
            format!("nginx: mark {a} down, test, reload"),
            format!("nginx: wait for its connections to {a} to finish (≤ 120s)"),
            format!("nginx: mark {a} up, test, reload"),
            format!("nginx: check {a} is up in upstream backend"),
            format!("nginx: set {a} weight=10, test, reload"),
        ]
    );
}

const CYCLE_EVERY_INSTANCE: &str = "for inst in instances() {\n    deregister(inst);\n    wait_drained(inst);\n    register(inst);\n    wait_in_service(inst);\n}\n";

#[test]
fn the_cli_cycles_every_instance_through_nginx_and_plan_touches_nothing() {
    let fleet = Fleet::start(3);
    let dir = fleet.nginx.dir();
    std::fs::write(dir.join("cycle.rhai"), CYCLE_EVERY_INSTANCE).unwrap();
    let file_before = fleet.nginx.upstream();
    let reloads = fleet.reloads();

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
        format!("nginx: mark {} down, test, reload", fleet.addr("web-1")),
        format!(
            "nginx: wait for its connections to {} to finish (≤ 30s)",
            fleet.addr("web-1")
        ),
        format!("nginx: mark {} up, test, reload", fleet.addr("web-3")),
    ] {
        assert!(plan.contains(&step), "missing {step:?} in\n{plan}");
    }
    assert_eq!(fleet.nginx.upstream(), file_before, "plan wrote nothing");
    assert_eq!(fleet.reloads(), reloads, "plan reloaded nothing");

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
        fleet.nginx.error_log()
    );
    assert_eq!(
        fleet.reloads(),
        reloads + 6,
        "a reload per deregister and register"
    );
    assert_eq!(
        servers(&fleet.nginx.upstream_file),
        ["web-1", "web-2", "web-3"].map(|n| format!("server {};", fleet.addr(n)))
    );
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
fn shift_traffic_rewrites_the_weights_in_one_reload_and_a_failed_run_puts_them_back() {
    let fleet = Fleet::start(3);
    let dir = fleet.nginx.dir();
    let file_before = fleet.nginx.upstream();
    std::fs::write(dir.join("shift.rhai"), SHIFT_WEB_1).unwrap();
    std::fs::write(
        dir.join("shift_fail.rhai"),
        format!("{SHIFT_WEB_1}fail(\"gate_failed\", \"the gate says no\");\n"),
    )
    .unwrap();
    let reloads = fleet.reloads();

    let out = rollscript()
        .current_dir(dir)
        .args(["run", "shift.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        servers(&fleet.nginx.upstream_file),
        [
            format!("server {} weight=128;", fleet.addr("web-1")),
            format!("server {} weight=256;", fleet.addr("web-2")),
            format!("server {} weight=256;", fleet.addr("web-3")),
        ]
    );
    assert_eq!(fleet.reloads(), reloads + 1, "three weights, one reload");
    let served = fleet.traffic(10);
    let to_web1 = served.iter().filter(|s| *s == "web-1").count();
    assert_eq!(to_web1, 2, "web-1 served {to_web1} of 10: {served:?}");

    let out = rollscript()
        .current_dir(dir)
        .args(["run", "shift_fail.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("putting them back as configured"),
        "{stderr}"
    );
    assert_eq!(
        servers(&fleet.nginx.upstream_file),
        servers_of(&file_before),
        "no weight= left"
    );
}
