//! The ssh transport against real sshd's on loopback: one master per host
//! reused by every command, sessions bounded below MaxSessions, timeouts that
//! stop the command on the host, argv quoting, large output, and one error
//! kind per way a connection fails — through the Rust API and end to end
//! through the CLI.

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollscript::config::{Instance, Inventory};
use rollscript::primitives::{ActionError, Cmd, ErrorKind, ExecOutput, Transport};
use rollscript::providers::ssh::{SshTransport, SESSIONS_PER_HOST};

use crate::harness::http::{HttpServer, Reply};
use crate::harness::sshd::{keygen, next_ip, SshFleet};
use crate::harness::{alive, free_port, rollscript, wait_until};

const LONG: Duration = Duration::from_secs(60);

fn sh(line: &str) -> Cmd {
    Cmd::Shell(line.to_string())
}

fn inst(inv: &Inventory, name: &str) -> Instance {
    inv.instance(name).unwrap().clone()
}

async fn run(t: &SshTransport, inv: &Inventory, name: &str, line: &str) -> ExecOutput {
    t.exec(&inst(inv, name), &sh(line), LONG)
        .await
        .unwrap_or_else(|e| panic!("{name}: {line}: {e}"))
}

async fn fail(t: &SshTransport, inv: &Inventory, name: &str, line: &str) -> ActionError {
    match t.exec(&inst(inv, name), &sh(line), LONG).await {
        Ok(out) => panic!("{name}: {line}: expected an error, got {out:?}"),
        Err(e) => e,
    }
}

fn read_pid(path: &Path) -> u32 {
    wait_until(
        "the command wrote its pid file",
        Duration::from_secs(10),
        || std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n')),
    );
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

// ---- commands ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_returns_status_stdout_and_stderr_without_the_pgid_marker() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    let out = run(&t, &inv, "h1", "echo out; echo err >&2; exit 3").await;
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    // A missing program is status 127 like any shell's, not a transport error.
    let out = run(&t, &inv, "h1", "no-such-program-anywhere").await;
    assert_eq!(out.status, 127);
    assert!(
        out.stderr.contains("no-such-program-anywhere"),
        "{}",
        out.stderr
    );
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_by_a_signal_exits_255_and_says_so() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    let out = run(&t, &inv, "h1", "echo before; kill -KILL $$").await;
    assert_eq!(out.status, 255);
    assert_eq!(out.stdout, "before\n");
    assert_eq!(
        out.stderr,
        "rollscript: the remote command was killed by a signal (no exit status)\n"
    );
    // The connection survived it.
    assert_eq!(run(&t, &inv, "h1", "echo after").await.stdout, "after\n");
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_a_run_reuses_one_master_connection_until_close() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    for i in 0..5 {
        assert_eq!(
            run(&t, &inv, "h1", &format!("echo {i}")).await.stdout,
            format!("{i}\n")
        );
    }
    let host = &fleet.hosts[0];
    assert_eq!(host.connections(), 1, "{}", host.log_text());
    assert_eq!(
        host.log_text().matches("Starting session: command").count(),
        5
    );
    t.close().await;
    wait_until(
        "the master disconnected after close",
        Duration::from_secs(10),
        || host.log_text().contains("Disconnected from user root"),
    );
    assert_eq!(host.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_values_arrive_intact_whatever_they_contain() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    let canary = fleet.path("pwned");
    let values = [
        "plain".to_string(),
        "with space".into(),
        "it's".into(),
        "\"double\"".into(),
        "a;echo injected".into(),
        format!("$(touch {})", canary.display()),
        format!("`touch {}`", canary.display()),
        "line1\nline2".into(),
        String::new(),
        "*".into(),
        "~".into(),
        "-n".into(),
        "back\\slash".into(),
        "tab\there".into(),
        "héllo ✓".into(),
        "$HOME".into(),
    ];
    let mut argv = vec!["printf".to_string(), "[%s]".to_string()];
    argv.extend(values.iter().cloned());
    let out = t
        .exec(&inst(&inv, "h1"), &Cmd::Argv(argv), LONG)
        .await
        .unwrap();
    let expected: String = values.iter().map(|v| format!("[{v}]")).collect();
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert_eq!(out.stdout, expected);
    assert!(!canary.exists(), "a value ran as code on the host");
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_output_are_streamed_and_kept_within_bounds() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    // 8 MB on stdout (80,000 lines of 100 digits) while 1 MB goes to stderr.
    let digits = "0123456789".repeat(10);
    let line = format!(
        "yes {digits} | head -n 10000 | tr 0-9 e >&2 & yes {digits} | head -n 80000; echo the-end; wait"
    );
    let out = run(&t, &inv, "h1", &line).await;
    assert_eq!(out.status, 0);
    assert!(
        out.stdout.len() < 5_000_000,
        "kept {} bytes",
        out.stdout.len()
    );
    assert!(out.stdout.ends_with("\nthe-end\n"));
    // What was kept plus what was dropped is exactly what the command printed.
    let (head, rest) = out.stdout.split_once("\n[… ").expect("an omission note");
    let (omitted, tail) = rest.split_once(" bytes of output omitted …]\n").unwrap();
    let omitted: usize = omitted.parse().unwrap();
    assert_eq!(
        head.len() + omitted + tail.len(),
        80_000 * 101 + "the-end\n".len()
    );
    assert_eq!(out.stderr.len(), 10_000 * 101);
    t.close().await;
}

// ---- concurrency ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_commands_on_one_host_all_succeed_within_max_sessions() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = Arc::new(SshTransport::new(inv.clone()));
    let trace = fleet.path("trace");
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (t, inv, trace) = (t.clone(), inv.clone(), trace.clone());
            tokio::spawn(async move {
                let line = format!(
                    "echo + >> {tr}; sleep 0.2; echo - >> {tr}; echo {i}",
                    tr = trace.display()
                );
                run(&t, &inv, "h1", &line).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await.unwrap();
        assert_eq!((out.status, out.stdout), (0, format!("{i}\n")));
    }
    // The sessions open at once on the host never exceeded our bound (and so
    // never reached sshd's MaxSessions of 10).
    let mut open = 0i32;
    let mut peak = 0;
    for l in std::fs::read_to_string(&trace).unwrap().lines() {
        open += if l == "+" { 1 } else { -1 };
        peak = peak.max(open);
    }
    assert!(peak <= SESSIONS_PER_HOST as i32, "peak {peak}");
    assert_eq!(fleet.hosts[0].connections(), 1);
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_a_lower_max_sessions_still_runs_every_command() {
    // Hardened servers lower MaxSessions; sessions it refuses wait for a free one.
    let fleet = SshFleet::start_with(1, "MaxSessions 2");
    let inv = fleet.inventory().load();
    let t = Arc::new(SshTransport::new(inv.clone()));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (t, inv) = (t.clone(), inv.clone());
            tokio::spawn(async move { run(&t, &inv, "h1", &format!("sleep 0.2; echo {i}")).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().stdout, format!("{i}\n"));
    }
    assert_eq!(fleet.hosts[0].connections(), 1);
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_bounds_hosts_being_connected_to_at_once() {
    let ip = next_ip();
    let silent = TcpListener::bind((ip.as_str(), 0)).unwrap();
    let fleet = SshFleet::start(1);
    let inv = fleet
        .inventory()
        .ssh("max_parallel", "1")
        .ssh_str("connect_timeout", "1s")
        .instance("mute", &ip, silent.local_addr().unwrap().port())
        .load();
    let t = Arc::new(SshTransport::new(inv.clone()));
    let mute = {
        let (t, inv) = (t.clone(), inv.clone());
        tokio::spawn(async move {
            let e = fail(&t, &inv, "mute", "true").await;
            (e.kind, Instant::now())
        })
    };
    // Once the mute host's connect is under way, it holds the only slot...
    let (_conn, _) = tokio::task::spawn_blocking(move || silent.accept().unwrap())
        .await
        .unwrap();
    let h1 = {
        let (t, inv) = (t.clone(), inv.clone());
        tokio::spawn(async move {
            run(&t, &inv, "h1", "true").await;
            Instant::now()
        })
    };
    let (kind, mute_failed) = mute.await.unwrap();
    let h1_done = h1.await.unwrap();
    // ...so h1 is connected to only after the mute host gave up.
    assert_eq!(kind, ErrorKind::ConnectTimeout);
    assert!(h1_done > mute_failed);
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_in_parallel_on_several_hosts_with_one_connection_each() {
    let fleet = SshFleet::start(4);
    let inv = fleet.inventory().load();
    let t = Arc::new(SshTransport::new(inv.clone()));
    let mut tasks = Vec::new();
    for h in &fleet.hosts {
        for i in 0..5 {
            let (t, inv, name) = (t.clone(), inv.clone(), h.name.clone());
            tasks.push(tokio::spawn(async move {
                let out = run(&t, &inv, &name, &format!("echo {name}-{i} $SSH_CONNECTION")).await;
                (name, i, out)
            }));
        }
    }
    for task in tasks {
        let (name, i, out) = task.await.unwrap();
        let host = fleet.hosts.iter().find(|h| h.name == name).unwrap();
        // SSH_CONNECTION names the server address: the command ran on its own host.
        let words: Vec<&str> = out.stdout.split_whitespace().collect();
        assert_eq!(words[0], format!("{name}-{i}"));
        assert_eq!(
            (words[3], words[4]),
            (host.ip.as_str(), host.port.to_string().as_str())
        );
    }
    for h in &fleet.hosts {
        assert_eq!(h.connections(), 1, "{}", h.name);
    }
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_died_is_replaced_by_the_next_command() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    run(&t, &inv, "h1", "true").await;
    // Kill the master by the PID ss shows connected to this sshd.
    let h = &fleet.hosts[0];
    let ss = std::process::Command::new("ss")
        .args(["-Htnp", "state", "established", "dst"])
        .arg(format!("{}:{}", h.ip, h.port))
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    let pid: i32 = ss
        .split("pid=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ssh master in ss output: {ss}"));
    // SAFETY: kill(2) on the ssh master this test's transport started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    wait_until("the master exited", Duration::from_secs(10), || {
        !alive(pid as u32)
    });
    let out = run(&t, &inv, "h1", "echo again").await;
    assert_eq!(out.stdout, "again\n");
    assert_eq!(h.connections(), 2);
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_on_one_connect_share_its_failure() {
    // A listener that never accepts: TCP completes, no SSH banner ever comes.
    let ip = next_ip();
    let silent = TcpListener::bind((ip.as_str(), 0)).unwrap();
    let fleet = SshFleet::start(0);
    let inv = fleet
        .inventory()
        .ssh_str("connect_timeout", "1s")
        .instance("mute", &ip, silent.local_addr().unwrap().port())
        .load();
    let t = Arc::new(SshTransport::new(inv.clone()));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (t, inv) = (t.clone(), inv.clone());
            tokio::spawn(async move { fail(&t, &inv, "mute", "true").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().kind, ErrorKind::ConnectTimeout);
    }
    // One attempt was made, not five in a row.
    silent.set_nonblocking(true).unwrap();
    let attempts = std::iter::from_fn(|| silent.accept().ok()).count();
    assert_eq!(attempts, 1);
}

// ---- timeouts ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_timeout_is_stopped_on_the_host() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    let pidfile = fleet.path("sleep.pid");
    let line = format!(
        "echo starting >&2; sleep 300 & echo $! > {}; wait",
        pidfile.display()
    );
    let err = t
        .exec(&inst(&inv, "h1"), &sh(&line), Duration::from_secs(1))
        .await
        .unwrap_err();
    let pid = read_pid(&pidfile);
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert_eq!(err.host.as_deref(), Some("h1"));
    assert_eq!(err.command.as_deref(), Some(line.as_str()));
    assert!(
        err.message
            .starts_with("command timed out after 1s and was stopped on the host (process group "),
        "{}",
        err.message
    );
    assert!(
        err.message
            .ends_with(" sent SIGTERM, then SIGKILL after 3s)"),
        "{}",
        err.message
    );
    assert_eq!(err.stderr, vec!["starting".to_string()]);
    wait_until("the remote sleep is gone", Duration::from_secs(10), || {
        !alive(pid)
    });
    // The connection is still good for the next command.
    assert_eq!(run(&t, &inv, "h1", "echo next").await.stdout, "next\n");
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone());
    let pidfile = fleet.path("stubborn.pid");
    // `trap '' TERM` makes the shell and its children ignore SIGTERM.
    let line = format!(
        "trap '' TERM; sleep 300 & echo $! > {}; wait",
        pidfile.display()
    );
    let err = t
        .exec(&inst(&inv, "h1"), &sh(&line), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout);
    let pid = read_pid(&pidfile);
    wait_until("the remote sleep is gone", Duration::from_secs(10), || {
        !alive(pid)
    });
    t.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_abandoned_by_cancellation_is_stopped_before_close_returns() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = Arc::new(SshTransport::new(inv.clone()));
    let pidfile = fleet.path("abandoned.pid");
    let line = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let task = {
        let (t, inv) = (t.clone(), inv.clone());
        tokio::spawn(async move { t.exec(&inst(&inv, "h1"), &sh(&line), LONG).await })
    };
    let pid = tokio::task::spawn_blocking(move || read_pid(&pidfile))
        .await
        .unwrap();
    assert!(alive(pid));
    // What Ctrl-C does: the effects layer drops the exec future.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    t.close().await;
    wait_until("the remote sleep is gone", Duration::from_secs(10), || {
        !alive(pid)
    });
}

// ---- connect errors ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_names_host_and_port() {
    let ip = next_ip();
    let port = free_port(&ip);
    let fleet = SshFleet::start(0);
    let inv = fleet.inventory().instance("closed", &ip, port).load();
    let t = SshTransport::new(inv.clone());
    let e = fail(&t, &inv, "closed", "true").await;
    assert_eq!(e.kind, ErrorKind::ConnectionRefused);
    assert_eq!(e.host.as_deref(), Some("closed"));
    assert_eq!(
        e.message,
        format!("connection refused by {ip} port {port}: no sshd is listening there; check that sshd is running and the port (ssh.port, or ssh_port on the instance)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_sends_the_banner_is_a_connect_timeout() {
    let ip = next_ip();
    let silent = TcpListener::bind((ip.as_str(), 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let fleet = SshFleet::start(0);
    let inv = fleet
        .inventory()
        .ssh_str("connect_timeout", "1s")
        .instance("mute", &ip, port)
        .load();
    let t = SshTransport::new(inv.clone());
    let e = fail(&t, &inv, "mute", "true").await;
    assert_eq!(e.kind, ErrorKind::ConnectTimeout);
    assert_eq!(e.host.as_deref(), Some("mute"));
    assert_eq!(
        e.message,
        format!("no SSH answer from {ip} port {port} within 1s (ssh: Connection timed out during banner exchange): check the address, firewalls or security groups and that sshd is up, or raise ssh.connect_timeout")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_host_does_not_accept_is_an_auth_failure_naming_the_key() {
    let fleet = SshFleet::start(1);
    let wrong = fleet.path("wrong_key");
    keygen(&wrong);
    let inv = fleet
        .inventory()
        .ssh_str("identity", &wrong.display().to_string())
        .load();
    let t = SshTransport::new(inv.clone());
    let e = fail(&t, &inv, "h1", "true").await;
    let h = &fleet.hosts[0];
    assert_eq!(e.kind, ErrorKind::AuthFailed);
    assert_eq!(e.host.as_deref(), Some("h1"));
    assert_eq!(
        e.message,
        format!(
            "authentication failed for root@{ip} with key {k}: the server refused it; add {k}.pub to ~/.ssh/authorized_keys of root on the host, or set ssh.identity to the key it accepts",
            ip = h.ip,
            k = wrong.display()
        )
    );

    let missing = fleet.path("no_such_key");
    let inv = fleet
        .inventory()
        .ssh_str("identity", &missing.display().to_string())
        .load();
    let t = SshTransport::new(inv.clone());
    let e = fail(&t, &inv, "h1", "true").await;
    assert_eq!(e.kind, ErrorKind::AuthFailed);
    assert_eq!(
        e.message,
        format!(
            "authentication failed for root@{ip}: the key ssh.identity = {k} cannot be read (No such file or directory (os error 2)); point ssh.identity at the deploy key",
            ip = h.ip,
            k = missing.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_refused_naming_the_known_hosts_file() {
    let fleet = SshFleet::start(1);
    let empty = fleet.path("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let inv = fleet
        .inventory()
        .ssh_str("known_hosts", &empty.display().to_string())
        .load();
    let t = SshTransport::new(inv.clone());
    let e = fail(&t, &inv, "h1", "true").await;
    let h = &fleet.hosts[0];
    assert_eq!(e.kind, ErrorKind::HostKeyUnknown);
    assert_eq!(e.host.as_deref(), Some("h1"));
    assert_eq!(
        e.message,
        format!(
            "the host key of [{ip}]:{port} is not in {kh} and host-key checking is strict: verify the host's key fingerprint, then add it (ssh-keyscan -p {port} {ip} >> {kh}), or set ssh.host_key_checking = \"accept-new\" to trust hosts on first contact",
            ip = h.ip,
            port = h.port,
            kh = empty.display()
        )
    );
    // Never silently accepted: the file is untouched.
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_trusts_a_first_contact_and_records_the_key() {
    let fleet = SshFleet::start(1);
    let kh = fleet.path("fresh_known_hosts");
    std::fs::write(&kh, "").unwrap();
    let inv = fleet
        .inventory()
        .ssh_str("known_hosts", &kh.display().to_string())
        .ssh_str("host_key_checking", "accept-new")
        .load();
    let t = SshTransport::new(inv.clone());
    assert_eq!(run(&t, &inv, "h1", "echo hi").await.stdout, "hi\n");
    t.close().await;
    let h = &fleet.hosts[0];
    let recorded = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(recorded, h.known_hosts_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_even_with_accept_new() {
    let fleet = SshFleet::start(1);
    let h = &fleet.hosts[0];
    let other = keygen(&fleet.path("impostor_key"));
    let kh = fleet.path("stale_known_hosts");
    std::fs::write(&kh, format!("[{}]:{} {other}\n", h.ip, h.port)).unwrap();
    let expected = format!(
        "the host key of [{ip}]:{port} has CHANGED since it was recorded in {kh}:1: this can be a man-in-the-middle attack, or the host was rebuilt; rollscript never accepts a changed key. If the change is expected, verify the new key, remove the old one (ssh-keygen -f {kh} -R '[{ip}]:{port}') and add the new one",
        ip = h.ip,
        port = h.port,
        kh = kh.display()
    );
    for policy in ["strict", "accept-new"] {
        let inv = fleet
            .inventory()
            .ssh_str("known_hosts", &kh.display().to_string())
            .ssh_str("host_key_checking", policy)
            .load();
        let t = SshTransport::new(inv.clone());
        let e = fail(&t, &inv, "h1", "true").await;
        assert_eq!(e.kind, ErrorKind::HostKeyChanged, "{policy}");
        assert_eq!(e.host.as_deref(), Some("h1"));
        assert_eq!(e.message, expected, "{policy}");
    }
    assert_eq!(h.log_text().matches("Accepted publickey").count(), 0);
}

/// A name that cannot resolve, without a DNS query leaving the machine: glibc
/// refuses to build a query with a label over 63 bytes.
fn unresolvable() -> String {
    format!("{}.invalid", "a".repeat(64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_host_name_is_a_dns_error() {
    let fleet = SshFleet::start(0);
    let name = unresolvable();
    let inv = fleet.inventory().instance("ghost", &name, 22).load();
    let t = SshTransport::new(inv.clone());
    let e = fail(&t, &inv, "ghost", "true").await;
    assert_eq!(e.kind, ErrorKind::Dns);
    assert_eq!(e.host.as_deref(), Some("ghost"));
    assert_eq!(
        e.message,
        format!("host name {name} does not resolve (ssh: Name or service not known): check the instance's host in the inventory, or DNS")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ssh_program_is_ssh_missing() {
    let fleet = SshFleet::start(1);
    let inv = fleet.inventory().load();
    let t = SshTransport::new(inv.clone()).with_program("/nonexistent/bin/ssh");
    let e = fail(&t, &inv, "h1", "true").await;
    assert_eq!(e.kind, ErrorKind::SshMissing);
    assert_eq!(e.host.as_deref(), Some("h1"));
    assert_eq!(
        e.message,
        "the ssh program /nonexistent/bin/ssh does not exist: install the OpenSSH client or fix the path"
    );
    assert_eq!(fleet.hosts[0].connections(), 0);
}

// ---- end to end through the CLI -------------------------------------------------

/// Writes `script` next to `inventory` in `dir` and runs `rollscript ARGS`.
fn cli(dir: &Path, script: &str, inventory: &str, args: &[&str], path_env: Option<&str>) -> Output {
    std::fs::write(dir.join("script.rhai"), script).unwrap();
    std::fs::write(dir.join("inv.toml"), inventory).unwrap();
    let mut c = rollscript();
    c.current_dir(dir).args(args);
    if let Some(p) = path_env {
        c.env("PATH", p);
    }
    c.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const DEPLOY_SCRIPT: &str = r#"
fn deploy_one(inst) {
    let target = `${var("dir")}/${inst.name}.version`;
    ssh(inst, ["sh", "-c", "printf '%s\n' \"$1\" > \"$2\"", "deploy", var("version"), target]);
    let seen = ssh(inst, ["cat", target]).stdout;
    health(inst);
    seen
}
let results = parallel(instances(), 3, |inst| deploy_one(inst));
info(`deployed: ${results}`);
"#;

#[test]
fn a_script_deploys_to_three_local_sshd_hosts_and_health_checks_them() {
    let fleet = SshFleet::start(3);
    let work = tempfile::tempdir().unwrap();
    // Each app answers 503 until its version file exists, then serves it.
    let apps: Vec<HttpServer> = fleet
        .hosts
        .iter()
        .map(|h| {
            HttpServer::always(
                &h.ip,
                Reply::File(work.path().join(format!("{}.version", h.name))),
            )
        })
        .collect();
    let mut inv = fleet.inventory().extra(
        "[health]\npath = \"/health\"\nexpect_body = \"v2.0\"\ntimeout = \"1s\"\ninterval = \"100ms\"\nretries = 20\nhealthy_threshold = 2\n",
    );
    inv.instances = fleet
        .hosts
        .iter()
        .zip(&apps)
        .map(|(h, app)| {
            format!(
                "[[instances]]\nname = \"{}\"\nhost = \"{}\"\nssh_port = {}\nhealth_port = {}\n",
                h.name,
                h.ip,
                h.port,
                app.port()
            )
        })
        .collect();
    let dir_var = format!("dir={}", work.path().display());
    let out = cli(
        work.path(),
        DEPLOY_SCRIPT,
        &inv.text(),
        &[
            "run",
            "script.rhai",
            "-i",
            "inv.toml",
            "--yes",
            "--var",
            "version=v2.0",
            "--var",
            &dir_var,
        ],
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(r#"deployed: ["v2.0\n", "v2.0\n", "v2.0\n"]"#),
        "{err}"
    );
    for (h, app) in fleet.hosts.iter().zip(&apps) {
        let version =
            std::fs::read_to_string(work.path().join(format!("{}.version", h.name))).unwrap();
        assert_eq!(version, "v2.0\n");
        assert!(
            app.requests() >= 2,
            "{} was health-checked {} times",
            h.name,
            app.requests()
        );
        // Two commands, one connection: the master was reused within the run.
        assert_eq!(h.connections(), 1, "{}", h.name);
        assert!(err.contains(&format!("{} healthy after", h.name)), "{err}");
    }
}

#[test]
fn a_refused_connection_fails_the_run_with_the_host_and_what_to_do() {
    let ip = next_ip();
    let port = free_port(&ip);
    let fleet = SshFleet::start(0);
    let work = tempfile::tempdir().unwrap();
    let inv = fleet.inventory().instance("web-1", &ip, port);
    let out = cli(
        work.path(),
        "ssh(instances()[0], \"true\");",
        &inv.text(),
        &["run", "script.rhai", "-i", "inv.toml", "--yes"],
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("connection_refused"), "{err}");
    assert!(
        err.contains(&format!(
            "web-1: connection refused by {ip} port {port}: no sshd is listening there"
        )),
        "{err}"
    );
}

#[test]
fn without_ssh_on_path_the_run_says_to_install_the_openssh_client() {
    let fleet = SshFleet::start(1);
    let work = tempfile::tempdir().unwrap();
    let out = cli(
        work.path(),
        "ssh(instances()[0], \"true\");",
        &fleet.inventory().text(),
        &["run", "script.rhai", "-i", "inv.toml", "--yes"],
        Some("/nonexistent"),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ssh_missing"), "{err}");
    assert!(
        err.contains("h1: no `ssh` program found on PATH: install the OpenSSH client (e.g. apt-get install openssh-client) on the machine running rollscript"),
        "{err}"
    );
    assert_eq!(fleet.hosts[0].connections(), 0);
}

#[test]
fn a_failing_remote_command_shows_its_status_and_stderr() {
    let fleet = SshFleet::start(1);
    let work = tempfile::tempdir().unwrap();
    let out = cli(
        work.path(),
        "ssh(instances()[0], \"echo preparing; echo 'disk full' >&2; exit 4\");",
        &fleet.inventory().text(),
        &["run", "script.rhai", "-i", "inv.toml", "--yes"],
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("command_failed"), "{err}");
    assert!(err.contains("h1: command failed (exit status 4)"), "{err}");
    assert!(err.contains("disk full"), "{err}");
    // Output was streamed with the host prefix as it arrived.
    assert!(err.contains("h1| preparing"), "{err}");
    assert!(err.contains("h1!| disk full"), "{err}");
}

#[test]
fn a_remote_timeout_through_the_cli_stops_the_command() {
    let fleet = SshFleet::start(1);
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("cli-sleep.pid");
    let script = format!(
        "ssh(instances()[0], \"sleep 300 & echo $! > {}; wait\");",
        pidfile.display()
    );
    let out = cli(
        work.path(),
        &script,
        // The inventory's limit applies to every command without its own.
        &fleet.inventory().ssh_str("command_timeout", "1s").text(),
        &["run", "script.rhai", "-i", "inv.toml", "--yes"],
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error[timeout]"), "{err}");
    assert!(
        err.contains("h1: command timed out after 1s and was stopped on the host"),
        "{err}"
    );
    let pid = read_pid(&pidfile);
    wait_until("the remote sleep is gone", Duration::from_secs(10), || {
        !alive(pid)
    });
}

#[test]
fn plan_describes_ssh_steps_without_connecting() {
    let fleet = SshFleet::start(2);
    let work = tempfile::tempdir().unwrap();
    let out = cli(
        work.path(),
        "for inst in instances() { ssh(inst, [\"./deploy.sh\", \"v 2\"]); }",
        &fleet.inventory().text(),
        &["plan", "script.rhai", "-i", "inv.toml"],
        None,
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for h in &fleet.hosts {
        assert!(
            plan.contains(&format!("ssh root@{}: ./deploy.sh 'v 2'", h.ip)),
            "{plan}"
        );
        assert_eq!(h.connections(), 0, "plan connected to {}", h.name);
    }
}
