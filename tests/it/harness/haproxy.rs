//! A throwaway HAProxy on loopback: its own config and admin socket in a
//! temp dir, `-db` in the foreground, stopped by PID on drop.
//!
//! The backend has `retries 0` and no `option redispatch` (TESTING.md: with
//! them a careless rollout still shows zero client errors, so tests would
//! prove nothing). Health checks run every 100 ms against `/health`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::backend::wait_until;
use super::{find_program, free_port, Proc};

pub struct Haproxy {
    /// The admin socket (`stats socket … level admin`).
    pub socket: PathBuf,
    /// The same runtime API on TCP, `127.0.0.1:PORT`.
    pub api_addr: String,
    /// The HTTP frontend.
    pub port: u16,
    pub backend: String,
    pub dir: TempDir,
    proc: Proc,
}

impl Haproxy {
    /// Starts HAProxy with one backend holding `servers` (name, port on
    /// 127.0.0.1), and waits until its socket answers and every server whose
    /// port is listening is UP.
    pub fn start(backend: &str, servers: &[(&str, u16)]) -> Haproxy {
        // A port `free_port` picked can be taken by a concurrent test before
        // HAProxy binds it; HAProxy then exits, and we start over.
        for _ in 0..5 {
            if let Some(h) = Self::try_start(backend, servers) {
                for (name, p) in servers {
                    if std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok() {
                        h.wait_status(name, "UP");
                    }
                }
                return h;
            }
        }
        panic!("haproxy did not start in 5 attempts");
    }

    /// None when HAProxy exited before its admin socket answered.
    fn try_start(backend: &str, servers: &[(&str, u16)]) -> Option<Haproxy> {
        let haproxy = find_program("haproxy").expect("haproxy is not installed");
        let dir = tempfile::Builder::new().prefix("hap").tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let port = free_port("127.0.0.1");
        let api_addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let mut cfg = format!(
            "global\n\
             \x20   stats socket {sock} mode 600 level admin\n\
             \x20   stats socket ipv4@{api_addr} level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 120s\n\
             \x20   timeout server 120s\n\
             \x20   retries 0\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   default_backend {backend}\n\
             backend {backend}\n\
             \x20   balance roundrobin\n\
             \x20   option httpchk GET /health\n\
             \x20   default-server inter 100ms fall 2 rise 2\n",
            sock = socket.display(),
        );
        for (name, p) in servers {
            cfg.push_str(&format!("    server {name} 127.0.0.1:{p} check\n"));
        }
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, &cfg).unwrap();
        let log = File::create(dir.path().join("haproxy.log")).unwrap();
        let proc = Proc::spawn(
            "haproxy",
            Command::new(haproxy)
                .arg("-f")
                .arg(&cfg_path)
                .arg("-db")
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let mut h = Haproxy {
            socket,
            api_addr,
            port,
            backend: backend.to_string(),
            dir,
            proc,
        };
        // HAProxy answers on its socket only once every listener is bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.try_cmd("show info").is_err() {
            if let Ok(Some(_)) = h.proc.child.try_wait() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not start:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(h)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// One runtime-API command; the reply, trimmed.
    pub fn cmd(&self, line: &str) -> String {
        self.try_cmd(line)
            .unwrap_or_else(|e| panic!("haproxy admin socket, `{line}`: {e}"))
    }

    pub fn try_cmd(&self, line: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    }

    /// `show stat` field `field` (e.g. `status`, `scur`, `weight`) of `server`.
    pub fn stat(&self, server: &str, field: &str) -> String {
        let csv = self.cmd(&format!("show stat {} 4 -1", self.backend));
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("not CSV: {csv}"))
            .split(',')
            .collect();
        let col = header
            .iter()
            .position(|h| *h == field)
            .unwrap_or_else(|| panic!("no field {field}"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&server))
            .unwrap_or_else(|| panic!("no server {server} in {csv}"))[col]
            .to_string()
    }

    pub fn status(&self, server: &str) -> String {
        self.stat(server, "status")
    }

    pub fn wait_status(&self, server: &str, want: &str) {
        wait_until(
            &format!("haproxy server {server} to be {want}"),
            Duration::from_secs(15),
            || self.status(server) == want,
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}
