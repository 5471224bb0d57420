//! The master pool: one `ssh -M` per host, shared by every command to it,
//! and the per-host session cap. A host's master is connected once however
//! many commands ask at the same time; a session slot is held from before a
//! session opens until after it closes, so the cap is never overshot.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openssh::Session;
use tokio::sync::{Notify, Semaphore};
use tracing::debug;

use super::exec::error_chain;
use super::{SshTransport, SESSIONS_PER_HOST};
use crate::config::Instance;
use crate::primitives::{ActionError, ActionResult};

/// One host's connection state.
pub(super) struct Host {
    conn: tokio::sync::Mutex<MasterSlot>,
    /// Connection attempts finished; lets concurrent callers share the
    /// outcome of one attempt instead of each trying (and timing out) in turn.
    attempts: AtomicU64,
    /// std Mutex: nothing is awaited while it is held.
    sessions: Mutex<Sessions>,
    /// Signalled whenever one of this host's sessions ends.
    freed: Notify,
    /// The one session kept back for stopping timed-out commands.
    pub(super) stop_slot: Semaphore,
}

/// Sessions open on a host, and how many may be.
struct Sessions {
    /// Slots held, including sessions still being opened.
    open: usize,
    /// Sessions the server has accepted and not yet closed.
    established: usize,
    /// [`SESSIONS_PER_HOST`], lowered when the server's `MaxSessions` turns
    /// out to be smaller (it refused a session while others were open).
    cap: usize,
}

#[derive(Default)]
struct MasterSlot {
    master: Option<MasterRef>,
    failure: Option<ActionError>,
}

impl Host {
    pub(super) fn new() -> Self {
        Self {
            conn: tokio::sync::Mutex::new(MasterSlot::default()),
            attempts: AtomicU64::new(0),
            sessions: Mutex::new(Sessions {
                open: 0,
                established: 0,
                cap: SESSIONS_PER_HOST,
            }),
            freed: Notify::new(),
            stop_slot: Semaphore::new(1),
        }
    }

    /// Waits for a session slot under the host's cap.
    pub(super) async fn open_session(self: &Arc<Self>) -> SessionSlot {
        loop {
            // Registered before the check, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.sessions.lock().unwrap();
                if s.open < s.cap {
                    s.open += 1;
                    return SessionSlot {
                        host: self.clone(),
                        established: false,
                    };
                }
            }
            freed.await;
        }
    }

    /// Closes the host's master, if it has one and no command still uses it.
    pub(super) async fn close(&self, name: &str) {
        let master = self.conn.lock().await.master.take();
        if let Some(MasterRef(master)) = master {
            // Still shared only if a command outlived the run; its last
            // user's drop then asks the master to exit.
            if let Ok(mut master) = Arc::try_unwrap(master) {
                if let Some(session) = master.session.take() {
                    // The master stops accepting sessions and exits once
                    // the last one ends.
                    if let Err(e) = session.close().await {
                        debug!(instance = %name, "ssh: closing the master: {}", error_chain(&e));
                    }
                }
            }
        }
    }

    /// The server refused a session: learn its limit from the sessions it
    /// has open for us, less one so a stop still fits. Returns that count.
    pub(super) fn refused(&self) -> usize {
        let mut s = self.sessions.lock().unwrap();
        let established = s.established;
        if established > 0 {
            s.cap = s.cap.min(established.saturating_sub(1).max(1));
        }
        established
    }
}

/// One session slot on a host, given back on drop.
pub(super) struct SessionSlot {
    host: Arc<Host>,
    established: bool,
}

impl SessionSlot {
    pub(super) fn established(&mut self) {
        self.host.sessions.lock().unwrap().established += 1;
        self.established = true;
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut s = self.host.sessions.lock().unwrap();
        s.open -= 1;
        if self.established {
            s.established -= 1;
        }
        drop(s);
        self.host.freed.notify_waiters();
    }
}

/// A running `ssh -M` and the directory holding its control socket and log.
pub(super) struct Master {
    /// Some until `close`; taken only from a uniquely owned `Master`.
    pub(super) session: Option<Session>,
    pub(super) dir: PathBuf,
    pub(super) program: PathBuf,
}

impl Master {
    pub(super) fn ctl(&self) -> PathBuf {
        self.dir.join("m")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.session.take().is_some() {
            // Not closed by `close` (a panic, an early return): ask the master
            // to exit now rather than idle for `MASTER_IDLE`. Blocking, but
            // only on this abnormal path.
            let _ = std::process::Command::new(&self.program)
                .arg("-S")
                .arg(self.ctl())
                .args(["-O", "exit", "rollscript"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shared master, usable as openssh's session handle.
#[derive(Clone)]
pub(super) struct MasterRef(Arc<Master>);

impl Deref for MasterRef {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.0
            .session
            .as_ref()
            .expect("a shared master is open until close")
    }
}

impl SshTransport {
    /// The host's master, connecting if there is none. Callers that arrive
    /// while a connect is under way share its outcome, success or failure.
    pub(super) async fn master(&self, inst: &Instance, host: &Host) -> ActionResult<MasterRef> {
        let asked = host.attempts.load(Ordering::SeqCst);
        let mut slot = host.conn.lock().await;
        if let Some(m) = &slot.master {
            return Ok(m.clone());
        }
        if host.attempts.load(Ordering::SeqCst) > asked {
            if let Some(e) = &slot.failure {
                return Err(e.clone());
            }
        }
        let result = {
            let _permit = self.connects.acquire().await.expect("never closed");
            self.connect(inst).await
        };
        host.attempts.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(m) => {
                let m = MasterRef(Arc::new(m));
                slot.master = Some(m.clone());
                slot.failure = None;
                Ok(m)
            }
            Err(e) => {
                slot.failure = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Connects the host's master ahead of its first command, unless it has
    /// one. A failure is not kept: that command connects again and reports
    /// it at its own turn. A command arriving meanwhile waits for this
    /// connect and shares its master.
    pub(super) async fn warm_master(&self, inst: &Instance, host: &Host) {
        let mut slot = host.conn.lock().await;
        if slot.master.is_some() {
            return;
        }
        let result = {
            let _permit = self.connects.acquire().await.expect("never closed");
            self.connect(inst).await
        };
        match result {
            Ok(m) => {
                slot.master = Some(MasterRef(Arc::new(m)));
                slot.failure = None;
                debug!(instance = %inst.name, "ssh: master opened ahead of its first command");
            }
            Err(e) => {
                debug!(instance = %inst.name, "ssh: opening ahead failed, tried again at its turn: {e}")
            }
        }
    }

    /// Drops `dead` as the host's master (it exited: idle, network loss), so
    /// the next command connects afresh.
    pub(super) async fn forget(&self, host: &Host, dead: &MasterRef) {
        let mut slot = host.conn.lock().await;
        if slot
            .master
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(&m.0, &dead.0))
        {
            slot.master = None;
        }
    }
}

/// Where control directories go: the temp dir when its path is short enough
/// for a socket (ssh binds `<path>.<16 random chars>` before renaming),
/// else `/tmp`.
pub(super) fn control_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    if tmp.as_os_str().len() <= 48 {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

/// A fresh, private (0700) directory `<root>/rs<pid>.<n>`; `mkdir` refuses an
/// existing path, so nobody else's directory or symlink is ever used.
pub(super) fn make_control_dir(root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("rs{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_socket_paths_fit_the_unix_limit() {
        let dir = make_control_dir(&control_root()).unwrap();
        // ssh binds `<ControlPath>.<16 chars>` first; sun_path holds 107 bytes.
        assert!(
            dir.join("m").as_os_str().len() + 17 < 108,
            "{}",
            dir.display()
        );
        std::fs::remove_dir(dir).unwrap();
    }
}
