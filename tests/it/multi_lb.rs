//! Issue 16: the seed's real topologies. Several load balancers per fleet
//! (an HAProxy pair), the drain policy at `drain_timeout` with a request
//! held open, health checked on the host, nginx drains per upstream server.
//!
//! Every test runs a real fleet (demo/app.py over its own sshd) behind real
//! HAProxy or nginx that neither retry nor redispatch, and asserts what an
//! operator sees: failed requests, the LB's state sampled during the run,
//! versions, the journal, the exit code and the message.

use std::time::Duration;

use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::http::get;
use crate::harness::journal::Journal;
use crate::harness::one_fleet_at_a_time;
use crate::harness::run::{Finished, Running};
use crate::harness::wait_until;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);
/// Load before the run starts and after it ends.
const LEAD: Duration = Duration::from_millis(800);

fn rolling(inventory: &std::path::Path) -> Vec<String> {
    vec![
        "run".into(),
        "scripts/rolling.rhai".into(),
        "-i".into(),
        inventory.display().to_string(),
        "--yes".into(),
        "--var".into(),
        "version=v2".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn all_v2(fleet: &Fleet) -> Vec<(String, String)> {
    fleet
        .names()
        .into_iter()
        .map(|n| (n, "v2".to_string()))
        .collect()
}

/// Statuses once HAProxy has finished the checks under way (`UP 1/2` after
/// `ready` from maint turns `UP` at the next check).
fn settled(statuses: impl Fn() -> Vec<(String, String)>) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let s = statuses();
        if !s.iter().any(|(_, st)| st.contains('/')) || std::time::Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn haproxy_states(h: &crate::harness::haproxy::Haproxy, fleet: &Fleet) -> Vec<(String, String)> {
    let st = h.statuses();
    fleet
        .names()
        .into_iter()
        .map(|n| {
            let s = st.get(&n).cloned().unwrap_or_else(|| "missing".into());
            (n, s)
        })
        .collect()
}

#[test]
fn rolling_behind_an_haproxy_pair_has_zero_failed_requests_on_either_and_counts_capacity_across_both(
) {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).haproxy_pair().start();
    // Two in service of three: one at a time, and only when on both LBs.
    let inv = fleet
        .inventory()
        .min_in_service(2)
        .write(&fleet.path("rollscript.toml"));
    let text = std::fs::read_to_string(&inv).unwrap();
    assert_eq!(text.matches("[[lb]]").count(), 2, "{text}");

    let load1 = fleet.load();
    let load2 = fleet.load2();
    let sampler = fleet.sampler();
    std::thread::sleep(LEAD);
    let from = load1.elapsed();
    let run = Running::start(&strs(&rolling(&inv))).wait(RUN_TIMEOUT);
    let to = load1.elapsed();
    std::thread::sleep(LEAD);
    let timeline = sampler.stop();
    let (l1, l2) = (load1.stop(), load2.stop());
    let ctx = format!(
        "{}\n--- load 1\n{}\n--- load 2\n{}\n--- lb (both)\n{}",
        run.dump(),
        l1.summary(),
        l2.summary(),
        timeline.render()
    );

    assert_eq!(run.code, Some(0), "{ctx}");
    assert!(
        run.stderr
            .contains("rolling deploy done: all 3 instances updated"),
        "{ctx}"
    );
    assert!(l1.failures().is_empty(), "failed through HAProxy 1:\n{ctx}");
    assert!(l2.failures().is_empty(), "failed through HAProxy 2:\n{ctx}");
    let secs = (to - from).as_secs_f64();
    for (n, l) in [(1, &l1), (2, &l2)] {
        let during = l.sent_between(from, to);
        assert!(
            during as f64 >= secs * 50.0 * 0.6,
            "only {during} requests through HAProxy {n} during the {secs:.1}s run:\n{ctx}"
        );
    }
    // Sampled every 10 ms on both: never fewer than 2 in service on both.
    assert!(timeline.count() > 50, "{ctx}");
    assert_eq!(timeline.failed_reads(), 0, "{ctx}");
    assert_eq!(
        timeline.min_in_service(),
        2,
        "capacity across both LBs dropped:\n{ctx}"
    );
    // Each instance was really taken out of both (drained on each).
    for name in fleet.names() {
        assert!(
            timeline.saw(&name, "MAINT|MAINT"),
            "{name} never out of both LBs at once:\n{ctx}"
        );
    }
    assert_eq!(fleet.versions(), all_v2(&fleet), "{ctx}");
    let up: Vec<(String, String)> = fleet
        .names()
        .into_iter()
        .map(|n| (n, "UP".to_string()))
        .collect();
    assert_eq!(
        settled(|| haproxy_states(fleet.haproxy(), &fleet)),
        up,
        "{ctx}"
    );
    assert_eq!(
        settled(|| haproxy_states(fleet.haproxy2(), &fleet)),
        up,
        "{ctx}"
    );
    // Plan steps and journal records name the LB.
    let j = fleet.journal();
    let intents = j.of_type("intent");
    assert!(
        intents.iter().any(|r| {
            let t = r["text"].as_str().unwrap_or_default();
            r["op"] == "deregister" && t.contains("haproxy-1: ") && t.contains("haproxy-2: ")
        }),
        "{ctx}"
    );
}

#[test]
fn a_plan_behind_two_load_balancers_names_each_in_its_steps() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 2).haproxy_pair().start();
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));
    let out = fleet.exec(
        "plan",
        {
            let mut c = crate::harness::rollscript();
            c.current_dir(crate::harness::repo())
                .args(["plan", "scripts/rolling.rhai", "-i"])
                .arg(&inv);
            c
        },
        RUN_TIMEOUT,
    );
    assert_eq!(out.code, Some(0), "{}", out.dump());
    eprintln!("{}", out.stdout);
    assert!(
        out.stdout
            .contains("haproxy-1: haproxy web/web-1: drain; haproxy-2: haproxy web/web-1: drain"),
        "{}",
        out.dump()
    );
}

#[test]
fn a_host_parked_on_one_lb_of_the_pair_is_left_as_found_on_both() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).haproxy_pair().start();
    let h2 = fleet.haproxy2();
    assert_eq!(h2.cmd("set server web/web-2 state maint"), "");
    let inv = fleet
        .inventory()
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));
    let r = Running::start(&strs(&rolling(&inv))).wait(RUN_TIMEOUT);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert!(
        r.stderr
            .contains("web-2: out of rotation before the run (MAINT): left as found"),
        "{}",
        r.dump()
    );
    assert_eq!(fleet.version("web-2"), "v1", "{}", r.dump());
    assert_eq!(fleet.version("web-1"), "v2", "{}", r.dump());
    assert_eq!(fleet.version("web-3"), "v2", "{}", r.dump());
    // Untouched on both: UP on the first, MAINT on the second.
    assert_eq!(fleet.haproxy().status("web-2"), "UP");
    assert_eq!(h2.status("web-2"), "MAINT");
}

#[test]
fn a_failed_deploy_behind_the_pair_is_compensated_on_both_lbs() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).haproxy_pair().start();
    let deploy = fleet.wrapper(
        "deploy-fails-on-web-2.sh",
        "[ \"$NAME\" = web-2 ] && { echo 'disk full' >&2; exit 7; }\nexec \"$bin/deploy.sh\" \"$@\"",
    );
    let inv = fleet
        .inventory()
        .deploy(&deploy)
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));
    let load1 = fleet.load();
    let load2 = fleet.load2();
    let r = Running::start(&strs(&rolling(&inv))).wait(RUN_TIMEOUT);
    std::thread::sleep(LEAD);
    let (l1, l2) = (load1.stop(), load2.stop());
    let ctx = format!(
        "{}\n--- load 1\n{}\n--- load 2\n{}",
        r.dump(),
        l1.summary(),
        l2.summary()
    );
    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(
        l1.failures().is_empty() && l2.failures().is_empty(),
        "{ctx}"
    );
    // web-2 rolled back and put back, on both LBs.
    let up: Vec<(String, String)> = fleet
        .names()
        .into_iter()
        .map(|n| (n, "UP".to_string()))
        .collect();
    assert_eq!(
        settled(|| haproxy_states(fleet.haproxy(), &fleet)),
        up,
        "{ctx}"
    );
    assert_eq!(
        settled(|| haproxy_states(fleet.haproxy2(), &fleet)),
        up,
        "{ctx}"
    );
    let j = fleet.journal();
    assert!(
        j.compensations()
            .iter()
            .any(|(name, restored, _)| name == "web-2" && *restored),
        "{:?}\n{ctx}",
        j.compensations()
    );
}

/// A run killed with SIGKILL mid-deploy behind the pair left web-1 out of
/// both HAProxies; `recover` rolls it back and puts it back on both.
#[test]
fn recover_after_a_kill_behind_the_pair_puts_the_instance_back_on_both_lbs() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).haproxy_pair().start();
    let deploy = fleet.wrapper(
        "deploy-then-linger.sh",
        "\"$bin/deploy.sh\" \"$1\"\nmark deployed-$NAME\nwait_for go-$NAME",
    );
    let inv = fleet
        .inventory()
        .deploy(&deploy)
        .min_in_service(1)
        .write(&fleet.path("rollscript.toml"));
    let run = Running::start(&strs(&rolling(&inv)));
    fleet.wait_ctl("deployed-web-1", Duration::from_secs(60));
    run.signal(libc::SIGKILL);
    let killed = run.wait(Duration::from_secs(30));
    fleet.touch("go-web-1");
    assert_eq!(
        (
            fleet.haproxy().status("web-1"),
            fleet.haproxy2().status("web-1")
        ),
        ("MAINT".to_string(), "MAINT".to_string()),
        "out of both after the kill\n{}",
        killed.dump()
    );

    let inv_s = inv.display().to_string();
    let rec = Running::start(&["recover", "-i", &inv_s, "--yes"]).wait(RUN_TIMEOUT);
    let ctx = rec.dump();
    assert_eq!(rec.code, Some(0), "{ctx}");
    assert!(rec.stdout.contains("web-1: back in service"), "{ctx}");
    let up: Vec<(String, String)> = fleet
        .names()
        .into_iter()
        .map(|n| (n, "UP".to_string()))
        .collect();
    assert_eq!(
        settled(|| haproxy_states(fleet.haproxy(), &fleet)),
        up,
        "{ctx}"
    );
    assert_eq!(
        settled(|| haproxy_states(fleet.haproxy2(), &fleet)),
        up,
        "{ctx}"
    );
    assert_eq!(fleet.version("web-1"), "v1", "rolled back\n{ctx}");
}

// ---- drain policy -------------------------------------------------------------------

/// Holds `/slow?ms=20000` through the LB until HAProxy shows one on web-1
/// at least a second old; returns the client threads.
fn hold_on_web_1(fleet: &Fleet) -> Vec<std::thread::JoinHandle<Result<(u16, String), String>>> {
    let lb = fleet.lb_addr();
    let held = || {
        fleet.haproxy().cmd("show sess").lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.contains(&"srv=web-1")
                && words
                    .iter()
                    .any(|w| w.starts_with("age=") && *w != "age=0s")
        })
    };
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(std::thread::spawn(move || {
            crate::harness::http::get_within(lb, "/slow?ms=20000", Duration::from_secs(40))
        }));
        std::thread::sleep(Duration::from_millis(1100));
        if held() {
            break;
        }
    }
    assert!(held(), "no slow request held on web-1");
    slow
}

fn drain_timeout_run(policy: &str) -> (Fleet, Finished, Journal) {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = fleet
        .inventory()
        .set("lb", "drain_timeout", "\"3s\"")
        .set("lb", "on_drain_timeout", &format!("\"{policy}\""))
        .write(&fleet.path("rollscript.toml"));
    let slow = hold_on_web_1(&fleet);
    let started = std::time::Instant::now();
    let run = Running::start(&strs(&rolling(&inv))).wait(RUN_TIMEOUT);
    let took = started.elapsed();
    eprintln!("on_drain_timeout = {policy}: the run took {took:?}");
    for t in slow {
        let _ = t.join();
    }
    let j = fleet.journal();
    (fleet, run, j)
}

#[test]
fn a_request_held_past_drain_timeout_is_closed_and_the_deploy_goes_on_with_proceed() {
    let _one = one_fleet_at_a_time();
    let (fleet, run, j) = drain_timeout_run("proceed");
    let ctx = run.dump();
    assert_eq!(run.code, Some(0), "{ctx}");
    assert!(
        run.stderr
            .contains("web-1: drain_timeout 3s reached: closed ")
            && run.stderr.contains("connection(s) still open and went on"),
        "{ctx}"
    );
    assert_eq!(fleet.versions(), all_v2(&fleet), "{ctx}");
    // Journalled: the close, on web-1, before the deploy went on.
    let ops = j.ops("web-1");
    let close = ops.iter().position(|o| o == "close_connections");
    let ssh = ops.iter().position(|o| o == "ssh");
    assert!(
        close.is_some() && ssh.is_some() && close < ssh,
        "web-1's steps: {ops:?}\n{ctx}"
    );
    let up: Vec<(String, String)> = fleet
        .names()
        .into_iter()
        .map(|n| (n, "UP".to_string()))
        .collect();
    assert_eq!(settled(|| fleet.lb_states()), up, "{ctx}");
}

#[test]
fn a_request_held_past_drain_timeout_stops_the_deploy_with_fail() {
    let _one = one_fleet_at_a_time();
    let (fleet, run, j) = drain_timeout_run("fail");
    let ctx = run.dump();
    assert_eq!(run.code, Some(1), "{ctx}");
    assert!(
        run.stderr
            .contains("session(s) still open and 0 queued on HAProxy server web/web-1 after 3s")
            && run
                .stderr
                .contains("(lb.on_drain_timeout = \"fail\"; \"proceed\" closes them and goes on)"),
        "{ctx}"
    );
    assert!(
        !j.ops("web-1").contains(&"close_connections".to_string()),
        "{ctx}"
    );
    // Nothing was deployed; web-1 was put back (compensation).
    assert_eq!(fleet.version("web-1"), "v1", "{ctx}");
    assert_eq!(get(fleet.lb_addr(), "/health").map(|r| r.0), Ok(200));
    wait_until("web-1 back UP", Duration::from_secs(10), || {
        fleet.haproxy().status("web-1") == "UP"
    });
}

// ---- health on the host -------------------------------------------------------------

/// Processes a test started (socat forwarders), killed and reaped on drop.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Each instance's health port only its own host reaches: a forwarder on
/// `127.0.0.1:P` (the host's localhost) to the app, and nothing on the
/// instance's address at P, so the deploy machine's GET of
/// `http://{host}:P/health` is refused. Returns the forwarders and an
/// inventory with `health_port = P` per instance.
fn health_port_only_on_the_host(
    fleet: &Fleet,
) -> (Children, crate::harness::inventory::FleetInventory) {
    let mut children = Children(Vec::new());
    let mut inv = fleet.inventory();
    for i in &fleet.instances {
        let p = crate::harness::free_port("127.0.0.1");
        let child = std::process::Command::new("socat")
            .arg(format!("TCP-LISTEN:{p},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("TCP:{}", i.addr()))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("socat runs");
        children.0.push(child);
        wait_until(
            &format!("{}'s on-host health port", i.name),
            Duration::from_secs(10),
            || get(format!("127.0.0.1:{p}"), "/health").is_ok_and(|(s, _)| s == 200),
        );
        let from_here = get(format!("{}:{p}", i.ip), "/health");
        assert!(
            from_here.as_ref().is_err_and(|e| e.contains("refused")),
            "{}:{p} must be refused from the deploy machine: {from_here:?}",
            i.ip
        );
        std::fs::write(
            fleet.path("ctl").join(format!("hport-{}", i.name)),
            p.to_string(),
        )
        .unwrap();
        inv = inv.set_instance(&i.name, "health_port", &p.to_string());
    }
    (children, inv)
}

/// A script that only checks health: `health(inst)` for each instance.
fn health_only(fleet: &Fleet) -> std::path::PathBuf {
    let p = fleet.path("health_only.rhai");
    std::fs::write(
        &p,
        "for inst in instances() {\n    let r = health(inst);\n    print(`${inst.name} healthy: ${r.url}`);\n}\n",
    )
    .unwrap();
    p
}

fn run_script(script: &std::path::Path, inv: &std::path::Path) -> Finished {
    Running::start(&[
        "run",
        &script.display().to_string(),
        "-i",
        &inv.display().to_string(),
        "--yes",
    ])
    .wait(RUN_TIMEOUT)
}

#[test]
fn health_via_ssh_gates_a_deploy_on_a_host_whose_health_port_the_deploy_machine_cannot_reach() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 2).start();
    let (_fwd, inv) = health_port_only_on_the_host(&fleet);
    let script = health_only(&fleet);

    // From the deploy machine: refused, the check fails.
    let http = inv.clone().write(&fleet.path("http/rollscript.toml"));
    let r = run_script(&script, &http);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(r.stderr.contains("connection refused"), "{}", r.dump());

    // On the host, over ssh: curl against localhost passes.
    let ssh = inv
        .clone()
        .set("health", "via", "\"ssh\"")
        .write(&fleet.path("rollscript.toml"));
    let r = run_script(&script, &ssh);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    let port1 = std::fs::read_to_string(fleet.path("ctl/hport-web-1")).unwrap();
    assert!(
        r.stderr
            .contains(&format!("web-1 healthy: http://localhost:{port1}/health")),
        "{}",
        r.dump()
    );

    // A rolling deploy gated by it: every instance on v2, health checked on the host.
    let r = Running::start(&strs(&rolling(&ssh))).wait(RUN_TIMEOUT);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert_eq!(fleet.versions(), all_v2(&fleet), "{}", r.dump());
    let j = only_new_journal(&fleet);
    let health: Vec<String> = j
        .of_type("intent")
        .iter()
        .filter(|x| x["op"] == "health")
        .map(|x| x["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        health.len() >= 2
            && health
                .iter()
                .all(|t| t.starts_with("ssh web-") && t.contains(": curl http://localhost:")),
        "{health:?}"
    );
}

/// The newest journal of the default inventory.
fn only_new_journal(fleet: &Fleet) -> Journal {
    let paths = fleet.journals();
    Journal::read(paths.last().expect("a run journal"))
}

#[test]
fn health_command_on_the_host_is_the_verdict_and_gates_the_deploy() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 2).start();
    let (_fwd, inv) = health_port_only_on_the_host(&fleet);
    // The seed's health_check.sh: curl on localhost; unhealthy while
    // ctl/sick-NAME exists.
    let check = fleet.wrapper(
        "health_check.sh",
        "[ -e \"$ctl/sick-$NAME\" ] && { echo \"$NAME: sick\" >&2; exit 3; }\n\
         curl -fsS -o /dev/null --max-time 2 \"http://localhost:$(cat \"$ctl/hport-$NAME\")/health\"",
    );
    let inv = inv.set("health", "command", &format!("\"{check}\""));
    // Three tries for the script's own checks (no app is booting then).
    let three = inv
        .clone()
        .set("health", "retries", "3")
        .write(&fleet.path("three/rollscript.toml"));
    let inv = inv.write(&fleet.path("rollscript.toml"));
    let script = health_only(&fleet);

    let r = run_script(&script, &three);
    assert_eq!(r.code, Some(0), "{}", r.dump());

    fleet.touch("sick-web-2");
    let r = run_script(&script, &three);
    assert_eq!(r.code, Some(1), "{}", r.dump());
    assert!(
        r.stderr
            .contains(&format!("{check} on web-2 not healthy after 3 attempts"))
            && r.stderr
                .contains("expected exit 0, 2 in a row; saw 3× exit 3: web-2: sick"),
        "{}",
        r.dump()
    );
    std::fs::remove_file(fleet.path("ctl/sick-web-2")).unwrap();

    let r = Running::start(&strs(&rolling(&inv))).wait(RUN_TIMEOUT);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert_eq!(fleet.versions(), all_v2(&fleet), "{}", r.dump());
}

// ---- nginx: drains per upstream server ---------------------------------------------------

/// Established connections from nginx (this machine) to `addr`.
fn connections_to(addr: &str) -> usize {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .args(["dst", host])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// A `/slow?ms=20000` request through nginx held on `name`. nginx picks
/// the server, in turn (one worker, equal weights: round robin): short
/// `/slow?ms=400` probes, each seen with `ss` and answered, until one lands
/// on the server before `name`; the next request is `name`'s. (An abandoned
/// request would not do: the app would still hold it and delay its restart.)
fn hold_through_nginx_on(fleet: &Fleet, name: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addrs: Vec<String> = fleet.instances.iter().map(|i| i.addr()).collect();
    let target = addrs
        .iter()
        .position(|a| *a == fleet.instance(name).addr())
        .unwrap();
    let before = &addrs[(target + addrs.len() - 1) % addrs.len()];
    let send = |ms: u32| {
        let mut s = std::net::TcpStream::connect(fleet.lb_addr()).unwrap();
        s.write_all(format!("GET /slow?ms={ms} HTTP/1.0\r\nHost: fleet\r\n\r\n").as_bytes())
            .unwrap();
        let mut landed = None;
        wait_until(
            "the request to reach a server",
            Duration::from_secs(5),
            || {
                landed = addrs.iter().find(|a| connections_to(a) > 0).cloned();
                landed.is_some()
            },
        );
        (s, landed.unwrap())
    };
    for _ in 0..6 {
        let (mut s, landed) = send(400);
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        if landed == *before {
            let (held, landed) = send(20_000);
            assert_eq!(landed, addrs[target], "nginx's round robin skipped {name}");
            return held;
        }
    }
    panic!("no probe landed on the server before {name}");
}

#[test]
fn on_nginx_a_connection_held_on_web_3_does_not_slow_the_drains_of_web_1_and_web_2() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Nginx, 3).start();
    let inv = fleet
        .inventory()
        .min_in_service(2)
        .write(&fleet.path("rollscript.toml"));
    let web3 = fleet.instance("web-3").addr();
    let mut held = hold_through_nginx_on(&fleet, "web-3");
    let started = std::time::Instant::now();
    let run = fleet.spawn("run", {
        let mut c = crate::harness::rollscript();
        c.current_dir(crate::harness::repo())
            .args(strs(&rolling(&inv)));
        c
    });
    wait_until("web-1 and web-2 on v2", Duration::from_secs(60), || {
        fleet.version("web-1") == "v2" && fleet.version("web-2") == "v2"
    });
    let both_done = started.elapsed();
    // Still held: the request on web-3 has not been answered, and nginx
    // still has its connection to web-3 open.
    held.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut held, &mut buf);
    if matches!(read, Ok(n) if n > 0) {
        let r = run.wait(RUN_TIMEOUT);
        panic!(
            "the held request was already answered {both_done:?} after the start: {:?}\n{}",
            String::from_utf8_lossy(&buf),
            r.dump()
        );
    }
    assert_eq!(connections_to(&web3), 1, "nginx's connection to web-3");
    eprintln!("web-1 and web-2 on v2 {both_done:?} after the start, web-3's request still held");
    held.set_nonblocking(false).unwrap();
    let r = run.wait(RUN_TIMEOUT);
    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert_eq!(fleet.versions(), all_v2(&fleet), "{}", r.dump());
    // web-3's own drain waited for its request: the client got its answer.
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut held, &mut body);
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "the held request: {body:?}"
    );
}
