//! Who holds a deploy lock, whether that holder is provably gone, and the
//! lock of the local state backend.
//!
//! A [`Holder`] records user, host, pid, the boot id
//! (`/proc/sys/kernel/random/boot_id`), the process's start time (so a pid
//! reused by another process is not taken for the holder), the run id, when
//! and the redacted command line. A holder is provably gone when it ran on
//! this host and the boot id differs (it is from before a reboot), or its
//! pid is not running, or that pid is now another process. On another host
//! nothing can be proven: the local lock says so, the PostgreSQL lease
//! expires.
//!
//! # The local lock file
//!
//! `.rollscript/locks/<identity>.lock` (see [`crate::state`]), 0600 in a 0700
//! folder, held with `flock(2)`: the kernel releases it the moment its
//! holder dies, so two runs taking over a dead holder's lock at once cannot
//! both believe they hold it — each takes the flock first and only the one
//! that got it reads, judges and rewrites the holder. After taking the flock
//! a taker checks that the path still names the file it locked (a release
//! or a `--force` may have replaced it meanwhile) and starts over if not.
//!
//! The file is removed on release. Removing and `--force` replacing the file
//! happen under a second flock, on `<identity>.guard` (never removed), so a
//! releasing holder never deletes a lock file another run just put there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::journal::now;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub user: String,
    pub host: String,
    pub pid: u32,
    /// The holder's boot (`/proc/sys/kernel/random/boot_id`); empty in locks
    /// written before it was recorded.
    #[serde(default)]
    pub boot_id: String,
    /// The holder process's start, in clock ticks after boot
    /// (`/proc/PID/stat` field 22); 0 when unknown.
    #[serde(default)]
    pub proc_start: u64,
    pub started: String,
    /// The command line, secrets redacted.
    pub command: String,
    #[serde(default)]
    pub run: Option<String>,
}

/// What can be told about a holder from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its process runs on this host.
    Alive,
    /// Certainly gone, and why.
    Gone(String),
    /// Cannot be told from this host, and why.
    Unknown(String),
}

impl Holder {
    pub fn me(run: Option<String>) -> Self {
        let pid = std::process::id();
        Self {
            user: current_user(),
            host: hostname(),
            pid,
            boot_id: boot_id(),
            proc_start: process_start(pid).unwrap_or(0),
            started: now(),
            command: crate::redact::redact_args(std::env::args()).join(" "),
            run,
        }
    }

    /// Whether this holder's process still runs, as far as this host can tell.
    pub fn liveness(&self) -> Liveness {
        if self.host != hostname() {
            return Liveness::Unknown(format!(
                "it runs on {}: this host cannot tell whether it is still running",
                self.host
            ));
        }
        let boot = boot_id();
        if !self.boot_id.is_empty() && !boot.is_empty() && self.boot_id != boot {
            return Liveness::Gone("it is from before this host's last reboot".into());
        }
        if !process_alive(self.pid) {
            return Liveness::Gone("that process is no longer running".into());
        }
        if self.proc_start != 0 && process_start(self.pid) != Some(self.proc_start) {
            return Liveness::Gone(format!("pid {} is now another process", self.pid));
        }
        Liveness::Alive
    }

    pub fn is_gone(&self) -> bool {
        matches!(self.liveness(), Liveness::Gone(_))
    }

    pub fn describe(&self) -> String {
        format!(
            "held by {}@{} (pid {}) since {}: {}",
            self.user, self.host, self.pid, self.started, self.command
        )
    }

    pub fn is_me(&self) -> bool {
        self.pid == std::process::id() && self.host == hostname() && self.boot_id == boot_id()
    }
}

pub fn current_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }))
}

/// The host name recorded in locks and journals. `ROLLSCRIPT_HOSTNAME`
/// overrides it: for tests playing "another machine", and for operators
/// whose containers all share one name.
pub fn hostname() -> String {
    if let Ok(h) = std::env::var("ROLLSCRIPT_HOSTNAME") {
        if !h.trim().is_empty() {
            return h.trim().to_string();
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// This boot's id (Linux); empty elsewhere.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// When process `pid` started, in clock ticks after boot.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The holder of a lock another run has, and what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldBy {
    pub holder: Holder,
    /// Why it counts as held: "that process is still running", "its lease
    /// expires in 12s unless renewed".
    pub note: String,
}

#[derive(Debug)]
pub enum LockError {
    /// Someone else holds it.
    Held(HeldBy),
    /// The lock is free but earlier runs wait for it (PostgreSQL, FIFO).
    Queued(usize),
    /// The lock cannot be used (`where` names the file or the database).
    Io(String, String),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Held(h) => write!(
                f,
                "another run holds the deploy lock: {} ({})\n  wait with --lock-wait 10m, or if that run is gone, `rollscript recover` (it says whose lock it is; --force takes it over)",
                h.holder.describe(),
                h.note
            ),
            Self::Queued(n) => write!(
                f,
                "the deploy lock is free, but {n} earlier run(s) are waiting for it: wait your turn with --lock-wait 10m"
            ),
            Self::Io(at, e) => write!(f, "cannot use the deploy lock {at}: {e}"),
        }
    }
}

impl std::error::Error for LockError {}

// ---- the local lock file ----------------------------------------------------------

/// What a local lock file says now.
#[derive(Debug, Clone, PartialEq)]
pub enum FileState {
    Free,
    /// A holder whose flock is taken: it is running (wherever it is).
    Held(Holder),
    /// A holder recorded but no flock: judged by [`Holder::liveness`].
    Left(Holder),
    /// A file that names no holder (torn write, or a run starting now).
    Unreadable,
}

/// Reads `path` without taking it: the flock is looked up in `/proc/locks`,
/// so looking (`runs`, `unlock`) never makes a run starting now see the lock
/// as held.
pub fn file_state(path: &Path) -> FileState {
    let Ok(meta) = std::fs::metadata(path) else {
        return FileState::Free;
    };
    let locked = match flocked(&meta) {
        Some(locked) => locked,
        // No /proc/locks: try the flock itself.
        None => match File::open(path) {
            Ok(f) if try_flock(&f) => {
                unflock(&f);
                false
            }
            Ok(_) => true,
            Err(_) => return FileState::Free,
        },
    };
    let holder = read_holder(path);
    match (holder, locked) {
        (Some(h), true) => FileState::Held(h),
        (Some(h), false) => FileState::Left(h),
        (None, true) => FileState::Unreadable,
        (None, false) => FileState::Free,
    }
}

/// Whether `/proc/locks` lists a flock on this file; None if it cannot be read.
fn flocked(meta: &std::fs::Metadata) -> Option<bool> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    let ino = meta.ino();
    Some(locks.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:56789 0 EOF`; waiters (`->`) do not hold it.
        if f.get(1) != Some(&"FLOCK") {
            return false;
        }
        let mut id = f.get(5).unwrap_or(&"").split(':');
        let maj = id.next().and_then(|x| u64::from_str_radix(x, 16).ok());
        let min = id.next().and_then(|x| u64::from_str_radix(x, 16).ok());
        let i = id.next().and_then(|x| x.parse::<u64>().ok());
        maj == Some(major) && min == Some(minor) && i == Some(ino)
    }))
}

/// The holder recorded in `path`, if it names one.
pub fn read_holder(path: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Paths of local locks this process holds, for [`force_unlock_if_mine`].
static MINE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A held local lock; released (its file removed) on drop.
#[derive(Debug)]
pub struct DeployLock {
    path: PathBuf,
    file: Option<File>,
}

impl DeployLock {
    /// Takes the lock at `path`, waiting up to `wait` for another run to
    /// finish. A holder that is provably gone is taken over with a message;
    /// with `force`, so is one that cannot be proven gone (said first).
    pub fn acquire(
        path: &Path,
        me: &Holder,
        wait: Duration,
        force: bool,
    ) -> Result<Self, LockError> {
        let io = |e: std::io::Error| LockError::Io(path.display().to_string(), e.to_string());
        let dir = path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(io)?;
        let deadline = Instant::now() + wait;
        let mut announced = false;
        loop {
            match Self::try_take(path, me, force) {
                Ok(Some(lock)) => return Ok(lock),
                // The file was replaced under us: look again.
                Ok(None) => continue,
                Err(Taken::Io(e)) => return Err(io(e)),
                Err(Taken::Busy(held)) => {
                    if Instant::now() >= deadline {
                        return Err(LockError::Held(held));
                    }
                    if !announced {
                        warn!(
                            "waiting for the deploy lock: {} ({})",
                            held.holder.describe(),
                            held.note
                        );
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn try_take(path: &Path, me: &Holder, force: bool) -> Result<Option<Self>, Taken> {
        let created = !path.exists();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(Taken::Io)?;
        if !try_flock(&f) {
            let held = match read_holder(path) {
                Some(h) => HeldBy {
                    holder: h,
                    note: "that process holds it now".into(),
                },
                None => HeldBy {
                    holder: unknown_holder(),
                    note: "a run is taking it now".into(),
                },
            };
            if !force {
                return Err(Taken::Busy(held));
            }
            warn!(
                "--force: taking over the deploy lock {} although that process holds it — it may still be running",
                held.holder.describe()
            );
            return Self::replace(path, me).map(Some).map_err(Taken::Io);
        }
        if !same_file(&f, path) {
            return Ok(None);
        }
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(Taken::Io)?;
        if !text.trim().is_empty() {
            match serde_json::from_str::<Holder>(&text) {
                // Half-written by a taker that died at once: nobody holds it.
                Err(_) => warn!("taking over a deploy lock file that names no holder"),
                Ok(h) => match h.liveness() {
                    Liveness::Gone(why) => warn!(
                        "taking over a stale deploy lock: {} — {why}",
                        h.describe()
                    ),
                    Liveness::Alive | Liveness::Unknown(_) if force => warn!(
                        "--force: taking over the deploy lock {} — its holder cannot be proven gone",
                        h.describe()
                    ),
                    Liveness::Alive => {
                        unflock(&f);
                        return Err(Taken::Busy(HeldBy {
                            holder: h,
                            note: "that process is still running".into(),
                        }));
                    }
                    Liveness::Unknown(why) => {
                        unflock(&f);
                        return Err(Taken::Busy(HeldBy {
                            holder: h,
                            note: why,
                        }));
                    }
                },
            }
        }
        write_holder(&mut f, me).map_err(Taken::Io)?;
        if created {
            sync_dir(path.parent().unwrap_or(Path::new("."))).map_err(Taken::Io)?;
        }
        Ok(Some(Self::held(path, f)))
    }

    /// `--force` over a live flock: a new file, locked and written, renamed
    /// over the old one. The old holder keeps its flock on a file no path
    /// names any more, and its release leaves ours alone.
    fn replace(path: &Path, me: &Holder) -> std::io::Result<Self> {
        let _guard = Guard::take(path)?;
        let tmp = path.with_extension(format!("lock.{}.new", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if !try_flock(&f) {
            return Err(std::io::Error::other("cannot lock a file of its own"));
        }
        write_holder(&mut f, me)?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self::held(path, f))
    }

    fn held(path: &Path, file: File) -> Self {
        MINE.lock().unwrap().push(path.to_path_buf());
        Self {
            path: path.to_path_buf(),
            file: Some(file),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn release(&mut self) {
        let Some(f) = self.file.take() else {
            return;
        };
        MINE.lock().unwrap().retain(|p| p != &self.path);
        // Under the guard: between the check and the unlink nobody can put
        // another run's lock at this path.
        if let Ok(_guard) = Guard::take(&self.path) {
            if same_file(&f, &self.path) && std::fs::remove_file(&self.path).is_ok() {
                let _ = sync_dir(self.path.parent().unwrap_or(Path::new(".")));
            }
        }
        drop(f);
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        self.release();
    }
}

enum Taken {
    Busy(HeldBy),
    Io(std::io::Error),
}

/// Stands in for a holder whose record is not written yet.
fn unknown_holder() -> Holder {
    Holder {
        user: "?".into(),
        host: "?".into(),
        pid: 0,
        boot_id: String::new(),
        proc_start: 0,
        started: "now".into(),
        command: "(a run starting)".into(),
        run: None,
    }
}

/// The flock on `<lock>.guard`, held for the few microseconds of a removal
/// or a replacement; released when dropped (the file closes).
struct Guard {
    _file: File,
}

impl Guard {
    fn take(lock: &Path) -> std::io::Result<Guard> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(lock.with_extension("guard"))?;
        // SAFETY: flock(2) on a descriptor we own; blocking, and only ever
        // held around a rename or an unlink.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Guard { _file: f })
    }
}

fn try_flock(f: &File) -> bool {
    // SAFETY: flock(2) on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn unflock(f: &File) {
    // SAFETY: as above.
    unsafe {
        libc::flock(f.as_raw_fd(), libc::LOCK_UN);
    }
}

/// Whether `path` still names the file `f` has open.
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn write_holder(f: &mut File, me: &Holder) -> std::io::Result<()> {
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(
        serde_json::to_string_pretty(me)
            .expect("serialises")
            .as_bytes(),
    )?;
    f.sync_all()
}

/// `mkdir -p` with new folders 0700, each fsynced into its parent.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_private_dir(parent)?;
    }
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(
        dir.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// fsync of a folder: makes the creation, rename or removal of an entry durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the local locks this process holds (a run stopping at once).
/// A shared (PostgreSQL) lease of this process runs out by itself.
pub fn force_unlock_if_mine(_inventory: &Path) -> std::io::Result<()> {
    let mine: Vec<PathBuf> = std::mem::take(&mut *MINE.lock().unwrap());
    for path in mine {
        if read_holder(&path).is_some_and(|h| h.is_me()) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Removes the lock file at `path` whoever holds it (`unlock --force`);
/// returns who held it.
pub fn remove(path: &Path) -> std::io::Result<Option<Holder>> {
    let h = read_holder(path);
    let _guard = Guard::take(path)?;
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(h)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn me(run: &str) -> Holder {
        Holder::me(Some(run.into()))
    }

    #[test]
    fn second_taker_sees_the_holder_and_a_released_lock_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/app.lock");
        let mut first = DeployLock::acquire(&path, &me("r1"), Duration::ZERO, false).unwrap();
        match DeployLock::acquire(&path, &me("r2"), Duration::ZERO, false) {
            Err(LockError::Held(h)) => {
                assert_eq!(h.holder.pid, std::process::id());
                assert_eq!(h.holder.run.as_deref(), Some("r1"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(
            file_state(&path),
            FileState::Held(read_holder(&path).unwrap())
        );
        first.release();
        assert!(!path.exists());
        assert_eq!(file_state(&path), FileState::Free);
        use std::os::unix::fs::PermissionsExt;
        let lock = DeployLock::acquire(&path, &me("r3"), Duration::ZERO, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(lock);
    }

    #[test]
    fn a_dead_holder_from_before_a_reboot_or_with_a_reused_pid_is_gone() {
        let mut h = me("r");
        assert_eq!(h.liveness(), Liveness::Alive);
        h.pid = 4_000_000; // above pid_max: never alive
        assert_eq!(
            h.liveness(),
            Liveness::Gone("that process is no longer running".into())
        );
        // pid 1 runs, but is not the process that took the lock.
        h.pid = 1;
        assert_eq!(
            h.liveness(),
            Liveness::Gone("pid 1 is now another process".into())
        );
        // Same pid and start, but another boot.
        let mut h = me("r");
        h.boot_id = "00000000-0000-0000-0000-000000000000".into();
        assert_eq!(
            h.liveness(),
            Liveness::Gone("it is from before this host's last reboot".into())
        );
        let mut h = me("r");
        h.host = "elsewhere".into();
        assert!(matches!(h.liveness(), Liveness::Unknown(_)));
    }

    #[test]
    fn a_stale_lock_is_taken_over_and_a_live_one_on_another_host_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.lock");
        let mut dead = me("dead");
        dead.pid = 1;
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        assert_eq!(file_state(&path), FileState::Left(dead.clone()));
        let lock = DeployLock::acquire(&path, &me("new"), Duration::ZERO, false).unwrap();
        assert_eq!(read_holder(&path).unwrap().run.as_deref(), Some("new"));
        drop(lock);

        let mut other = me("other");
        other.host = "machine-b".into();
        std::fs::write(&path, serde_json::to_string(&other).unwrap()).unwrap();
        match DeployLock::acquire(&path, &me("mine"), Duration::ZERO, false) {
            Err(LockError::Held(h)) => {
                assert_eq!(h.holder.host, "machine-b");
                assert!(h.note.contains("runs on machine-b"), "{}", h.note);
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let lock = DeployLock::acquire(&path, &me("mine"), Duration::ZERO, true).unwrap();
        assert_eq!(read_holder(&path).unwrap().run.as_deref(), Some("mine"));
        drop(lock);
    }

    #[test]
    fn force_replaces_a_lock_whose_holder_is_alive_and_its_release_leaves_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.lock");
        let mut stuck = DeployLock::acquire(&path, &me("stuck"), Duration::ZERO, false).unwrap();
        let mut forced = DeployLock::acquire(&path, &me("forced"), Duration::ZERO, true).unwrap();
        assert_eq!(read_holder(&path).unwrap().run.as_deref(), Some("forced"));
        stuck.release();
        assert_eq!(
            file_state(&path),
            FileState::Held(read_holder(&path).unwrap()),
            "the forced lock survives the old holder's release"
        );
        forced.release();
        assert!(!path.exists());
    }

    #[test]
    fn takers_racing_for_a_stale_lock_never_both_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("app.lock"));
        for round in 0..20 {
            let mut dead = me("dead");
            dead.pid = 4_000_000;
            std::fs::write(&*path, serde_json::to_string(&dead).unwrap()).unwrap();
            let n = 6;
            let start = Arc::new(Barrier::new(n));
            let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let threads: Vec<_> = (0..n)
                .map(|i| {
                    let (path, start, inside) = (path.clone(), start.clone(), inside.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let lock = DeployLock::acquire(
                            &path,
                            &me(&format!("t{i}")),
                            Duration::from_secs(30),
                            false,
                        )
                        .unwrap();
                        let was = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(was, 0, "round {round}: two holders at once");
                        assert_eq!(
                            read_holder(&path).unwrap().run,
                            Some(format!("t{i}")),
                            "round {round}: the file names the holder"
                        );
                        std::thread::sleep(Duration::from_millis(2));
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(lock);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!path.exists());
        }
    }
}
