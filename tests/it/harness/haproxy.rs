//! The one HAProxy of the tests: its own config and admin sockets in a
//! folder, `-db` in the foreground, stopped by PID on drop — for the
//! provider tests (servers on 127.0.0.1 in front of in-process backends) and
//! for the fleet (servers on 127.0.1.x in front of demo/app.py instances).
//!
//! The backend never hides a careless rollout (TESTING.md): `retries 0`, no
//! `option redispatch`, `http-reuse never`. HAProxy checks every server with
//! `option httpchk GET /health` (or another path) every 100 ms, down after
//! 2 failures, up after 2 passes. The runtime API answers at admin level on
//! a unix socket and on TCP (`127.0.0.1:PORT`), and at user level on
//! `user.sock` beside them.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{find_program, free_port, wait_until, Proc};

/// One `server` line.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    /// `ip:port`.
    pub addr: String,
    /// Starts in maintenance (`disabled`).
    pub disabled: bool,
}

impl Server {
    pub fn new(name: &str, addr: &str) -> Self {
        Self {
            name: name.to_string(),
            addr: addr.to_string(),
            disabled: false,
        }
    }
}

pub struct Haproxy {
    /// The HTTP frontend on 127.0.0.1.
    pub port: u16,
    /// The admin socket (`stats socket … level admin`).
    pub socket: PathBuf,
    /// The same runtime API on TCP, `127.0.0.1:PORT`.
    pub api_addr: String,
    pub backend: String,
    servers: Vec<Server>,
    check_path: String,
    dir: PathBuf,
    proc: Option<Proc>,
    _tmp: Option<TempDir>,
}

impl Haproxy {
    /// HAProxy in a temp dir of its own, one backend of `servers` (name,
    /// port on 127.0.0.1); waits until every server whose port listens is UP.
    pub fn start(backend: &str, servers: &[(&str, u16)]) -> Haproxy {
        let tmp = tempfile::Builder::new().prefix("hap").tempdir().unwrap();
        let servers: Vec<Server> = servers
            .iter()
            .map(|(n, p)| Server::new(n, &format!("127.0.0.1:{p}")))
            .collect();
        let mut h = Self::start_in(tmp.path(), backend, &servers, "/health");
        h._tmp = Some(tmp);
        h
    }

    /// HAProxy with its files in `dir`, checking servers on `check_path`.
    pub fn start_in(dir: &Path, backend: &str, servers: &[Server], check_path: &str) -> Haproxy {
        let mut h = Haproxy {
            port: 0,
            socket: dir.join("admin.sock"),
            api_addr: String::new(),
            backend: backend.to_string(),
            servers: servers.to_vec(),
            check_path: check_path.to_string(),
            dir: dir.to_path_buf(),
            proc: None,
            _tmp: None,
        };
        h.restart();
        h
    }

    /// The same runtime API at `level user` (reads only: `set server` is
    /// "Permission denied"), the socket a careless haproxy.cfg gives.
    pub fn user_socket(&self) -> PathBuf {
        self.dir.join("user.sock")
    }

    /// The folder holding haproxy.cfg, the socket and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.proc
            .as_ref()
            .map(Proc::pid)
            .expect("haproxy is running")
    }

    /// Stops HAProxy (SIGTERM, by PID): its runtime API goes away.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// (Re)starts HAProxy on the same socket and servers, and waits until
    /// every server that starts enabled and whose address listens is UP. A
    /// port picked free may be taken before HAProxy binds it (tests run
    /// side by side): it then exits and another is tried.
    pub fn restart(&mut self) {
        self.stop();
        let haproxy = find_program("haproxy").expect("haproxy is installed (tools/setup)");
        for _ in 0..5 {
            self.port = free_port("127.0.0.1");
            self.api_addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
            let cfg = self.dir.join("haproxy.cfg");
            fs::write(&cfg, self.config()).unwrap();
            let _ = fs::remove_file(&self.socket);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .unwrap();
            let mut proc = Proc::spawn(
                "haproxy",
                Command::new(&haproxy)
                    .arg("-db")
                    .arg("-f")
                    .arg(&cfg)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            );
            // HAProxy answers on its socket once every listener is bound.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            while self.try_cmd("show info").is_err() {
                if let Ok(Some(_)) = proc.child.try_wait() {
                    exited = true;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not start:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            if exited {
                continue;
            }
            self.proc = Some(proc);
            for s in self.servers.clone() {
                let listening = s.addr.parse().ok().is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
                });
                if !s.disabled && listening {
                    self.wait_status(&s.name, "UP");
                }
            }
            return;
        }
        panic!("haproxy did not start in 5 attempts:\n{}", self.log());
    }

    fn config(&self) -> String {
        let mut cfg = format!(
            "# Written by tests/it/harness/haproxy.rs. retries 0, no `option redispatch`,\n\
             # no connection reuse: a request sent to a server going away fails visibly.\n\
             global\n\
             \x20   stats socket {sock} mode 600 level admin\n\
             \x20   stats socket ipv4@{api} level admin\n\
             \x20   stats socket {user_sock} mode 600 level user\n\
             \x20   maxconn 2000\n\
             \x20   log stdout format short local0 info\n\
             defaults\n\
             \x20   mode http\n\
             \x20   log global\n\
             \x20   option httplog\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 120s\n\
             \x20   timeout server 120s\n\
             \x20   retries 0\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   default_backend {be}\n\
             backend {be}\n\
             \x20   balance roundrobin\n\
             \x20   retries 0\n\
             \x20   http-reuse never\n\
             \x20   option httpchk GET {check}\n\
             \x20   default-server check inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2\n",
            sock = self.socket.display(),
            user_sock = self.user_socket().display(),
            api = self.api_addr,
            port = self.port,
            be = self.backend,
            check = self.check_path,
        );
        for s in &self.servers {
            let disabled = if s.disabled { " disabled" } else { "" };
            cfg.push_str(&format!("    server {} {}{disabled}\n", s.name, s.addr));
        }
        cfg
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("haproxy.log")
    }

    /// HAProxy's own output: alerts, server state changes, request logs.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// One runtime-API command; the reply, trimmed.
    pub fn cmd(&self, line: &str) -> String {
        self.try_cmd(line)
            .unwrap_or_else(|e| panic!("haproxy admin socket, `{line}`: {e}"))
    }

    pub fn try_cmd(&self, line: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    }

    /// `show stat` of the backend: server name → field → value.
    pub fn stats(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let csv = self.cmd(&format!("show stat {} 4 -1", self.backend));
        let mut lines = csv.lines();
        let header: Vec<String> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("`show stat` is not CSV: {csv}"))
            .split(',')
            .map(str::to_string)
            .collect();
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let fields: BTreeMap<String, String> = header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_string))
                    .collect();
                (fields["svname"].clone(), fields)
            })
            .collect()
    }

    /// `show stat` field `field` (`status`, `scur`, `weight`, `hrsp_5xx`, …) of `server`.
    pub fn stat(&self, server: &str, field: &str) -> String {
        let stats = self.stats();
        let row = stats
            .get(server)
            .unwrap_or_else(|| panic!("no server {server} in backend {}: {stats:?}", self.backend));
        row.get(field)
            .unwrap_or_else(|| panic!("no field {field} in `show stat`"))
            .clone()
    }

    /// A numeric `show stat` field (0 when empty).
    pub fn counter(&self, server: &str, field: &str) -> u64 {
        self.stat(server, field).parse().unwrap_or(0)
    }

    /// `UP`, `UP 1/2`, `DRAIN`, `MAINT`, `DOWN`, …
    pub fn status(&self, server: &str) -> String {
        self.stat(server, "status")
    }

    /// Every server's status (the backend's own row left out).
    pub fn statuses(&self) -> BTreeMap<String, String> {
        self.stats()
            .into_iter()
            .filter(|(s, _)| s != "BACKEND")
            .map(|(s, row)| (s, row.get("status").cloned().unwrap_or_default()))
            .collect()
    }

    /// Waits (up to 30 s) until `server`'s status is `want`.
    pub fn wait_status(&self, server: &str, want: &str) {
        wait_until(
            &format!("haproxy server {server} to be {want}"),
            Duration::from_secs(30),
            || self.status(server) == want,
        );
    }
}
