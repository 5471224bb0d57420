//! Starts real components on loopback for the integration tests and stops
//! them by PID when the test ends, passes or fails (every handle kills its
//! process on drop).

#![allow(dead_code)]

pub mod apiproxy;
pub mod backend;
pub mod faultfleet;
pub mod fleet;
pub mod haproxy;
pub mod http;
pub mod moto;
pub mod nginx;
pub mod postgres;
pub mod sampler;
pub mod sshd;

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
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what} did not start listening on {addr} within {timeout:?}");
}

/// Waits until `path` exists (a unix socket, a pid file).
pub fn wait_for_path(path: &Path, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "{what} did not create {} within {timeout:?}",
        path.display()
    );
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
