//! The deploy lock: one run per inventory at a time.
//!
//! A file `.rollscript/lock` beside the inventory, created with `O_EXCL` so
//! two runs can never both believe they hold it. It records who holds it; a
//! lock whose process is gone (same host, pid not alive) is stale and is
//! taken over with a message. It is released when the run ends, and by
//! `recover` or `unlock` after a crash.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::journal::{now, state_dir};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub started: String,
    pub command: String,
    #[serde(default)]
    pub run: Option<String>,
}

impl Holder {
    pub fn me(run: Option<String>) -> Self {
        Self {
            user: current_user(),
            host: hostname(),
            pid: std::process::id(),
            started: now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            run,
        }
    }

    /// Whether the holder's process is certainly gone: only knowable on the
    /// same host.
    pub fn is_stale(&self) -> bool {
        self.host == hostname() && !process_alive(self.pid)
    }

    pub fn describe(&self) -> String {
        format!(
            "held by {}@{} (pid {}) since {}: {}",
            self.user, self.host, self.pid, self.started, self.command
        )
    }
}

pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[derive(Debug)]
pub enum LockError {
    /// Someone else holds it.
    Held(Holder),
    Io(PathBuf, std::io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Held(h) => write!(
                f,
                "another run holds the deploy lock: {}\n  wait with --lock-wait 10m, or if that run is gone, `rollscript unlock`",
                h.describe()
            ),
            Self::Io(p, e) => write!(f, "cannot use the deploy lock {}: {e}", p.display()),
        }
    }
}

pub fn lock_path(inventory: &Path) -> PathBuf {
    state_dir(inventory).join("lock")
}

/// Reads the current holder, if any.
pub fn holder(inventory: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(lock_path(inventory)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct DeployLock {
    path: PathBuf,
    released: bool,
}

impl DeployLock {
    /// Takes the lock, waiting up to `wait` for another run to finish.
    pub fn acquire(
        inventory: &Path,
        run: Option<String>,
        wait: Duration,
    ) -> Result<Self, LockError> {
        let path = lock_path(inventory);
        std::fs::create_dir_all(path.parent().unwrap())
            .map_err(|e| LockError::Io(path.clone(), e))?;
        let deadline = Instant::now() + wait;
        let mut announced = false;
        loop {
            match Self::try_create(&path, &Holder::me(run.clone())) {
                Ok(lock) => return Ok(lock),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(LockError::Io(path, e)),
            }
            let Some(h) = holder(inventory) else {
                // Vanished or half-written by a racing run: look again.
                if Instant::now() >= deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    if holder(inventory).is_none() && path.exists() {
                        // Unreadable lock file: treat as held, say so.
                        return Err(LockError::Io(
                            path,
                            std::io::Error::other("the lock file is unreadable; inspect and remove it, or `rollscript unlock`"),
                        ));
                    }
                }
                continue;
            };
            if h.is_stale() {
                warn!(
                    "taking over a stale deploy lock: {} — that process is no longer running",
                    h.describe()
                );
                // Rename first so only one of two racing takers removes it.
                let grave = path.with_extension(format!("stale.{}", std::process::id()));
                if std::fs::rename(&path, &grave).is_ok() {
                    let _ = std::fs::remove_file(&grave);
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(LockError::Held(h));
            }
            if !announced {
                warn!("waiting for the deploy lock: {}", h.describe());
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn try_create(path: &Path, me: &Holder) -> std::io::Result<Self> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        f.write_all(
            serde_json::to_string_pretty(me)
                .expect("serialises")
                .as_bytes(),
        )?;
        f.sync_all()?;
        Ok(Self {
            path: path.to_path_buf(),
            released: false,
        })
    }

    pub fn release(&mut self) {
        if !self.released {
            let _ = std::fs::remove_file(&self.path);
            self.released = true;
        }
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        self.release();
    }
}

/// Removes the lock if this process holds it (a run stopping at once).
pub fn force_unlock_if_mine(inventory: &Path) -> std::io::Result<()> {
    if holder(inventory).is_some_and(|h| h.pid == std::process::id() && h.host == hostname()) {
        std::fs::remove_file(lock_path(inventory))?;
    }
    Ok(())
}

/// Removes the lock regardless of holder (`rollscript unlock`, `recover`).
pub fn force_unlock(inventory: &Path) -> std::io::Result<Option<Holder>> {
    let h = holder(inventory);
    match std::fs::remove_file(lock_path(inventory)) {
        Ok(()) => Ok(h),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_sees_the_holder_and_a_dead_holder_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("rollscript.toml");
        let mut first = DeployLock::acquire(&inv, Some("r1".into()), Duration::ZERO).unwrap();
        match DeployLock::acquire(&inv, None, Duration::ZERO) {
            Err(LockError::Held(h)) => {
                assert_eq!(h.pid, std::process::id());
                assert_eq!(h.run.as_deref(), Some("r1"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        first.release();
        assert!(holder(&inv).is_none());

        // A lock left by a process that no longer exists is taken over.
        let mut dead = Holder::me(None);
        dead.pid = 4_000_000; // above pid_max: never alive
        std::fs::write(lock_path(&inv), serde_json::to_string(&dead).unwrap()).unwrap();
        assert!(dead.is_stale());
        let lock = DeployLock::acquire(&inv, None, Duration::ZERO).unwrap();
        assert_eq!(holder(&inv).unwrap().pid, std::process::id());
        drop(lock);
        assert!(!lock_path(&inv).exists());
    }
}
