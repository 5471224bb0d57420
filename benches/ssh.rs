//! What the ssh transport costs, against real sshd's on loopback
//! (`cargo bench --bench ssh`; prints median/min/max):
//!
//! 1. per command on an open master: the transport's `exec("true")` next to
//!    plain OpenSSH multiplexing (`ssh -S sock … true` on a ControlMaster)
//!    on the same host — the target is at most 5 ms more;
//! 2. the first command to a host, connect included (and a plain one-shot
//!    `ssh host true` for reference);
//! 3. 100 commands over 10 hosts at once, cold (connects included) and warm.

#[path = "../tests/it/harness/mod.rs"]
mod harness;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::sshd::{SshFleet, SshHost};
use harness::{wait_for_path, Proc};
use rollscript::config::Inventory;
use rollscript::primitives::{Cmd, Transport};
use rollscript::providers::ssh::SshTransport;

const TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fleet = SshFleet::start(10);
    let inv = fleet.inventory().load();
    println!(
        "ssh transport benchmark: {} sshd's on loopback, OpenSSH client {}",
        fleet.hosts.len(),
        ssh_version()
    );

    per_command(&rt, &fleet, &inv);
    first_command(&rt, &fleet, &inv);
    fan_out(&rt, &inv);
}

/// 1. Overhead per command on an already open master.
fn per_command(rt: &tokio::runtime::Runtime, fleet: &SshFleet, inv: &Arc<Inventory>) {
    const N: usize = 200;
    let h1 = inv.instance("h1").unwrap().clone();
    let t = SshTransport::new(inv.clone());
    let truth = Cmd::Shell("true".into());
    let ours = rt.block_on(async {
        t.exec(&h1, &truth, TIMEOUT).await.unwrap(); // connect, warm up
        let mut v = Vec::with_capacity(N);
        for _ in 0..N {
            let t0 = Instant::now();
            let out = t.exec(&h1, &truth, TIMEOUT).await.unwrap();
            v.push(t0.elapsed());
            assert_eq!(out.status, 0);
        }
        v
    });
    rt.block_on(t.close());

    let host = &fleet.hosts[0];
    let sock = fleet.path("raw-mux.sock");
    // The same mux protocol as a ControlPersist master, but kept in the
    // foreground (ControlPersist would fork it away) under `Proc`, so it is
    // killed by PID at the end.
    let _master = Proc::spawn(
        "raw ssh master",
        Command::new("ssh")
            .args(client_args(fleet, host))
            .arg("-S")
            .arg(&sock)
            .args(["-M", "-N", "-o", "ControlPersist=no"])
            .arg(format!("root@{}", host.ip))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_path(&sock, "the raw ssh master", Duration::from_secs(10));
    let raw: Vec<Duration> = (0..N)
        .map(|_| {
            let t0 = Instant::now();
            let st = Command::new("ssh")
                .args(client_args(fleet, host))
                .arg("-S")
                .arg(&sock)
                .arg(format!("root@{}", host.ip))
                .arg("true")
                .stdin(Stdio::null())
                .status()
                .unwrap();
            let d = t0.elapsed();
            assert!(st.success());
            d
        })
        .collect();

    println!("\n1. one command (`true`) on an open master, {N} runs");
    let (o, r) = (stats(&ours), stats(&raw));
    report("rollscript exec (native mux)", o);
    report("ssh -S sock (OpenSSH mux)", r);
    let diff = o.0.as_secs_f64() * 1e3 - r.0.as_secs_f64() * 1e3;
    println!(
        "   overhead vs OpenSSH mux: {diff:+.2} ms per command (median; target <= +5 ms): {}",
        if diff <= 5.0 { "ok" } else { "OVER TARGET" }
    );
}

/// 2. The first command to a host pays for the connection.
fn first_command(rt: &tokio::runtime::Runtime, fleet: &SshFleet, inv: &Arc<Inventory>) {
    const N: usize = 20;
    let h2 = inv.instance("h2").unwrap().clone();
    let truth = Cmd::Shell("true".into());
    let ours: Vec<Duration> = (0..N)
        .map(|_| {
            rt.block_on(async {
                let t = SshTransport::new(inv.clone());
                let t0 = Instant::now();
                t.exec(&h2, &truth, TIMEOUT).await.unwrap();
                let d = t0.elapsed();
                t.close().await;
                d
            })
        })
        .collect();
    let host = &fleet.hosts[1];
    let plain: Vec<Duration> = (0..N)
        .map(|_| {
            let t0 = Instant::now();
            let st = Command::new("ssh")
                .args(client_args(fleet, host))
                .arg(format!("root@{}", host.ip))
                .arg("true")
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            t0.elapsed()
        })
        .collect();
    println!("\n2. first command to a host, connect included, {N} runs");
    report("rollscript exec (master + command)", stats(&ours));
    report("ssh host true (one-shot, no mux)", stats(&plain));
}

/// 3. 100 commands spread over 10 hosts, all at once.
fn fan_out(rt: &tokio::runtime::Runtime, inv: &Arc<Inventory>) {
    const ROUNDS: usize = 10;
    let names: Vec<String> = inv.instances.iter().map(|i| i.name.clone()).collect();
    let hundred = |t: Arc<SshTransport>| {
        let inv = inv.clone();
        let names = names.clone();
        async move {
            let t0 = Instant::now();
            let runs = (0..100).map(|i| {
                let t = t.clone();
                let inst = inv.instance(&names[i % names.len()]).unwrap().clone();
                async move {
                    let out = t
                        .exec(&inst, &Cmd::Shell(format!("echo {i}")), TIMEOUT)
                        .await
                        .unwrap();
                    assert_eq!(out.stdout, format!("{i}\n"));
                }
            });
            futures::future::join_all(runs).await;
            t0.elapsed()
        }
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..ROUNDS {
        rt.block_on(async {
            let t = Arc::new(SshTransport::new(inv.clone()));
            cold.push(hundred(t.clone()).await);
            warm.push(hundred(t.clone()).await);
            t.close().await;
        });
    }
    println!("\n3. 100 commands over 10 hosts in parallel, {ROUNDS} rounds");
    report("cold (10 connects included)", stats(&cold));
    report("warm (masters open)", stats(&warm));
}

/// Client options equal to what the transport uses for the fleet.
fn client_args(fleet: &SshFleet, host: &SshHost) -> Vec<String> {
    vec![
        "-F".into(),
        fleet.ssh_config.display().to_string(),
        "-i".into(),
        fleet.client_key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", fleet.known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-p".into(),
        host.port.to_string(),
    ]
}

/// (median, min, max)
fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn report(what: &str, (median, min, max): (Duration, Duration, Duration)) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "   {what:<38} median {:>8.2} ms   min {:>8.2} ms   max {:>8.2} ms",
        ms(median),
        ms(min),
        ms(max)
    );
}

fn ssh_version() -> String {
    Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default()
}
