//! The one nginx of the tests, with its own prefix (config, pid, logs and
//! temp paths in a folder), `daemon off`, stopped by PID on drop.
//!
//! The upstream block lives in `upstream.conf`, the include rollscript owns;
//! `proxy_next_upstream off` so a request sent to a server going away fails
//! instead of being retried elsewhere (TESTING.md: retries hide a careless
//! rollout). One worker: weighted round robin is then exact.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
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
    dir: PathBuf,
    proc: Proc,
    _tmp: Option<TempDir>,
}

impl Nginx {
    /// nginx in a temp dir of its own, proxying to `servers` (ports on 127.0.0.1).
    pub fn start(servers: &[u16]) -> Nginx {
        let tmp = tempfile::Builder::new().prefix("ngx").tempdir().unwrap();
        let servers: Vec<(String, bool)> = servers
            .iter()
            .map(|p| (format!("127.0.0.1:{p}"), false))
            .collect();
        let mut n = Self::start_in(tmp.path(), &servers);
        n._tmp = Some(tmp);
        n
    }

    /// nginx with its files in `dir`, upstream `backend` holding `servers`
    /// (`ip:port`, marked down); waits until its worker runs and it listens.
    pub fn start_in(dir: &Path, servers: &[(String, bool)]) -> Nginx {
        let upstream_file = dir.join("upstream.conf");
        let mut up = String::from("upstream backend {\n");
        for (addr, down) in servers {
            let down = if *down { " down" } else { "" };
            up.push_str(&format!("    server {addr}{down};\n"));
        }
        up.push_str("}\n");
        fs::write(&upstream_file, up).unwrap();
        // A port free now may be taken by a concurrent test before nginx
        // binds it; nginx then exits, and we start over.
        for _ in 0..5 {
            if let Some(n) = Self::try_start(dir, &upstream_file) {
                return n;
            }
        }
        panic!("nginx did not start in 5 attempts");
    }

    /// None when nginx exited before it listened.
    fn try_start(dir: &Path, upstream_file: &Path) -> Option<Nginx> {
        let nginx = find_program("nginx").expect("nginx is installed (tools/setup)");
        let d = dir.display().to_string();
        let port = free_port("127.0.0.1");
        let conf = format!(
            "daemon off;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n\
             \x20   access_log {d}/access.log;\n\
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
             \x20           # A request sent to a server going away fails: no retry hides it.\n\
             \x20           proxy_next_upstream off;\n\
             \x20           proxy_read_timeout 120s;\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n"
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        let base = format!(
            "{} -p {d}/ -c {d}/nginx.conf -e {d}/error.log",
            nginx.display()
        );
        let log = fs::File::create(dir.join("stderr.log")).unwrap();
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
            upstream_file: upstream_file.to_path_buf(),
            test_command: format!("{base} -t"),
            reload_command: format!("{base} -s reload"),
            dir: dir.to_path_buf(),
            proc,
            _tmp: None,
        };
        // The master binds before it forks its worker: a worker and a
        // listener mean the port is ours (a bind that fails is retried,
        // then nginx exits).
        let deadline = Instant::now() + Duration::from_secs(15);
        while n.workers().is_empty() || TcpStream::connect(("127.0.0.1", port)).is_err() {
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

    /// The folder holding nginx.conf, the upstream file and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The master's PID (nginx runs in the foreground).
    pub fn master(&self) -> u32 {
        self.proc.pid()
    }

    /// The master's worker processes: (pid, title), from /proc.
    pub fn workers(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let status = fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            if ppid != Some(self.master()) {
                continue;
            }
            let title = fs::read(e.path().join("cmdline")).unwrap_or_default();
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
        fs::read_to_string(&self.upstream_file).unwrap()
    }

    /// The upstream's servers: (address, marked down).
    pub fn servers(&self) -> Vec<(String, bool)> {
        super::sampler::parse_upstream(&self.upstream())
            .into_iter()
            .map(|s| (s.name, !s.in_service))
            .collect()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Marks the server at `addr` down in the upstream file, as an operator
    /// would, and reloads nginx (test, then reload).
    pub fn mark_down(&self, addr: &str) {
        let text = self.upstream();
        let line = format!("server {addr};");
        assert!(text.contains(&line), "no {line} in:\n{text}");
        fs::write(
            &self.upstream_file,
            text.replace(&line, &format!("server {addr} down;")),
        )
        .unwrap();
        for cmd in [&self.test_command, &self.reload_command] {
            let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
