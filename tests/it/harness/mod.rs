//! Starts real components on loopback for the integration tests and stops
//! them by PID when the test ends, passes or fails (every handle kills its
//! process on drop).
//!
//! - [`fleet`]: the one test fleet — demo/app.py instances over their own
//!   sshd, HAProxy or nginx in front, deploy faults, load and LB sampler.
//! - [`haproxy`], [`nginx`], [`sshd`], [`postgres`], [`moto`], [`cloud`]:
//!   one starter per real component.
//! - [`http`]: the one HTTP client, and a scripted HTTP server; [`backend`]:
//!   an in-process app for the provider tests.
//! - [`inventory`]: a fleet's rollscript.toml, to adjust and write.
//! - [`run`], [`journal`], [`load`], [`sampler`], [`apiproxy`]: a rollscript
//!   process, its journal, traffic through the LB, the LB watched every
//!   10 ms, a runtime-API proxy that loses replies.

#![allow(dead_code)]

#[cfg(feature = "aws")]
pub mod alb;
pub mod apiproxy;
pub mod backend;
#[cfg(feature = "aws")]
pub mod cloud;
pub mod fleet;
pub mod haproxy;
pub mod http;
pub mod inventory;
pub mod journal;
pub mod load;
pub mod moto;
pub mod nginx;
pub mod postgres;
pub mod prometheus;
pub mod run;
pub mod sampler;
pub mod sshd;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process started by a test; killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we own.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port free on `ip` right now.
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `addr`, or panics naming `what`.
pub fn wait_for_port(addr: SocketAddr, what: &str, timeout: Duration) {
    wait_until(&format!("{what} to listen on {addr}"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    });
}

/// Waits until `path` exists (a unix socket, a pid file).
pub fn wait_for_path(path: &Path, what: &str, timeout: Duration) {
    wait_until(
        &format!("{what} to create {}", path.display()),
        timeout,
        || path.exists(),
    );
}

/// Polls `cond` every 10 ms until it holds, or panics naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- processes a test started but does not hold a handle to ------------------------

/// (state, parent pid) from /proc/PID/stat.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Running and not a zombie. The "remote" hosts are local sshd's, so their
/// processes are visible here too.
pub fn alive(pid: u32) -> bool {
    stat_of(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

/// Live processes (this one excepted) whose command line contains `needle`
/// (a test's own temp dir, so only processes the test started match).
pub fn pids_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != me && alive(pid) && cmdline.contains(needle)).then_some(pid)
        })
        .collect()
}

/// Every live process below `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parent: BTreeMap<u32, u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| alive(*p))
                .filter_map(|p| stat_of(p).map(|(_, pp)| (p, pp)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, pp) in &parent {
            if *pp == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// SIGTERM to each, up to `grace` for all to go, then SIGKILL.
pub fn stop_pids(pids: &[u32], grace: Duration) {
    for &p in pids {
        // SAFETY: kill(2) on processes this test started.
        unsafe {
            libc::kill(p as i32, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|p| alive(**p)) {
        // SAFETY: as above.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
}

/// Finds a program on PATH or in the sbin folders Debian installs daemons to.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// The rollscript binary under test.
pub fn rollscript() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rollscript"));
    c.env_remove("ROLLSCRIPT_INVENTORY").env("NO_COLOR", "1");
    c
}

/// A script giving web-1 20 % of the traffic by LB weight (the HAProxy and
/// nginx weight tests).
pub const SHIFT_WEB_1: &str =
    "let got = shift_traffic([instances()[0]], \"20%\");\ninfo(`web-1 takes ${got}`);\n";

/// Holds the fleet lock: the end-to-end fleets (strategies, safety) run one
/// at a time, so a timing-sensitive check is not starved by another fleet's
/// deploy on a 2-core machine. A failed test poisons the mutex; the next one
/// runs anyway.
pub fn one_fleet_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLEETS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLEETS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The repository root (for scripts/, examples/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
