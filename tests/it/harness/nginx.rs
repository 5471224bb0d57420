//! A throwaway nginx on loopback with its own prefix (config, pid, logs and
//! temp paths in a temp dir), `daemon off`, stopped by PID on drop.
//!
//! The upstream block lives in `upstream.conf`, the include rollscript owns;
//! `proxy_next_upstream off` so a request sent to a dead server fails
//! instead of being retried elsewhere (TESTING.md: retries hide a careless
//! rollout). One worker: weighted round robin is then exact.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{find_program, free_port, Proc};

pub struct Nginx {
    /// The HTTP listener on 127.0.0.1.
    pub port: u16,
    pub upstream_file: PathBuf,
    /// `nginx -p DIR/ -c DIR/nginx.conf -e DIR/error.log -t`
    pub test_command: String,
    /// The same with `-s reload`.
    pub reload_command: String,
    pub dir: TempDir,
    proc: Proc,
}

impl Nginx {
    /// Starts nginx proxying to upstream `backend`, whose include file holds
    /// `servers` (ports on 127.0.0.1), and waits until its worker runs.
    pub fn start(servers: &[u16]) -> Nginx {
        // A port `free_port` picked can be taken by a concurrent test before
        // nginx binds it; nginx then exits, and we start over.
        for _ in 0..5 {
            if let Some(n) = Self::try_start(servers) {
                return n;
            }
        }
        panic!("nginx did not start in 5 attempts");
    }

    /// None when nginx exited before starting its worker.
    fn try_start(servers: &[u16]) -> Option<Nginx> {
        let nginx = find_program("nginx").expect("nginx is not installed");
        let dir = tempfile::Builder::new().prefix("ngx").tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port("127.0.0.1");
        let upstream_file = dir.path().join("upstream.conf");
        let mut up = String::from("upstream backend {\n");
        for p in servers {
            up.push_str(&format!("    server 127.0.0.1:{p};\n"));
        }
        up.push_str("}\n");
        std::fs::write(&upstream_file, up).unwrap();
        let conf = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/client_temp;\n\
             \x20   proxy_temp_path {d}/proxy_temp;\n\
             \x20   fastcgi_temp_path {d}/fastcgi_temp;\n\
             \x20   uwsgi_temp_path {d}/uwsgi_temp;\n\
             \x20   scgi_temp_path {d}/scgi_temp;\n\
             \x20   include {d}/upstream.conf;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       location / {{\n\
             \x20           proxy_pass http://backend;\n\
             \x20           proxy_next_upstream off;\n\
             \x20           proxy_read_timeout 120s;\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let base = format!(
            "{} -p {d}/ -c {d}/nginx.conf -e {d}/error.log",
            nginx.display()
        );
        let log = File::create(dir.path().join("stderr.log")).unwrap();
        let proc = Proc::spawn(
            "nginx",
            Command::new(&nginx)
                .args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
                .args(["-e", &format!("{d}/error.log")])
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let mut n = Nginx {
            port,
            upstream_file,
            test_command: format!("{base} -t"),
            reload_command: format!("{base} -s reload"),
            dir,
            proc,
        };
        // The master binds before it forks its worker: a worker means the
        // port is ours (a bind that fails is retried, then nginx exits).
        let deadline = Instant::now() + Duration::from_secs(15);
        while !n
            .workers()
            .iter()
            .any(|(_, t)| t == "nginx: worker process")
        {
            if let Ok(Some(_)) = n.proc.child.try_wait() {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start:\n{}",
                n.error_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(n)
    }

    /// The master's PID (nginx runs in the foreground).
    pub fn master(&self) -> u32 {
        self.proc.pid()
    }

    /// The master's worker processes: (pid, title), from /proc.
    pub fn workers(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            if ppid != Some(self.master()) {
                continue;
            }
            let title = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let title = String::from_utf8_lossy(&title)
                .replace('\0', " ")
                .trim()
                .to_string();
            if title.starts_with("nginx: worker") {
                out.push((pid, title));
            }
        }
        out
    }

    pub fn upstream(&self) -> String {
        std::fs::read_to_string(&self.upstream_file).unwrap()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}
