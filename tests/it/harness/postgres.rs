//! A throwaway PostgreSQL on 127.0.0.1 for the migration tests: `initdb`
//! into a temp dir, then `postgres -D DIR/data -k DIR -h 127.0.0.1 -p PORT`
//! in the foreground, stopped by PID on drop (fast shutdown, then SIGKILL).
//!
//! PostgreSQL refuses to run as root, so both run as the `postgres` user
//! (Debian's package creates it) through `setpriv`, which execs: the PID we
//! hold is the postmaster's own, not a wrapper's. The temp dir is chowned to
//! that user. Authentication is `trust`, on loopback only.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

pub struct Postgres {
    pub port: u16,
    pub dir: TempDir,
    pub log: PathBuf,
    child: Child,
}

impl Postgres {
    /// initdb + start; waits until the server accepts connections.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let (uid, gid) =
            user_ids("postgres").expect("the `postgres` user exists (apt-get install postgresql)");
        let dir = tempfile::Builder::new().prefix("rs-pg-").tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let out = as_postgres(&bin.join("initdb"), dir.path())
            .args(["-D"])
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A port free now may be taken before postgres binds it: try another.
        for _ in 0..5 {
            let port = free_port("127.0.0.1");
            let _ = fs::remove_file(&log);
            let file = fs::File::create(&log).unwrap();
            std::os::unix::fs::chown(&log, Some(uid), Some(gid)).unwrap();
            let mut child = as_postgres(&bin.join("postgres"), dir.path())
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                // A test database: durability buys nothing, and costs time.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("postgres starts");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if text.contains("ready to accept connections") {
                    return Postgres {
                        port,
                        dir,
                        log,
                        child,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    if text.contains("could not bind") || text.contains("already in use") {
                        break;
                    }
                    panic!("postgres exited at start:\n{text}");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("postgres did not get ready within 30s:\n{text}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("postgres: no free port found");
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients
        // instead of waiting for them (SIGTERM would wait).
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/usr/lib/postgresql/<newest>/bin`.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (apt-get install postgresql)")
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .expect("no /usr/lib/postgresql/*/bin/postgres")
}

/// `program`, run as the postgres user (setpriv execs it: same PID).
fn as_postgres(program: &Path, cwd: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program)
    .current_dir(cwd)
    .env("HOME", cwd)
    .stdin(Stdio::null());
    c
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; the
    // two fields are copied out at once, before any other call could reuse it.
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}
