//! The local state backend (the default): `.rollscript/` beside the
//! inventory. Journals are `runs/<run>.jsonl`; the deploy lock of an
//! identity is `locks/<app>-<fingerprint>.lock` (see [`crate::lock`]), so
//! the inventories of one folder each have their own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{HeldLock, Identity, JournalMirror, LockStatus, StateBackend, StateError, StoredRun};
use crate::journal::state_dir;
use crate::lock::{self, DeployLock, FileState, HeldBy, Holder, Liveness, LockError};

pub struct LocalState {
    dir: PathBuf,
    identity: Identity,
}

impl LocalState {
    pub fn new(inventory: &Path, identity: Identity) -> Self {
        Self {
            dir: state_dir(inventory),
            identity,
        }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir
            .join("locks")
            .join(format!("{}.lock", self.identity.key()))
    }
}

impl StateBackend for LocalState {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn lock(
        &self,
        me: &Holder,
        wait: Duration,
        force: bool,
    ) -> Result<Box<dyn HeldLock>, LockError> {
        // The state folder is private: create it 0700 before `locks/` in it.
        lock::create_private_dir(&self.dir)
            .map_err(|e| LockError::Io(self.dir.display().to_string(), e.to_string()))?;
        let l = DeployLock::acquire(&self.lock_path(), me, wait, force)?;
        Ok(Box::new(LocalLock(l)))
    }

    fn lock_status(&self) -> Result<Option<LockStatus>, StateError> {
        Ok(match lock::file_state(&self.lock_path()) {
            FileState::Free | FileState::Unreadable => None,
            FileState::Held(h) => Some(LockStatus::Live(HeldBy {
                holder: h,
                note: "that process holds it now".into(),
            })),
            FileState::Left(h) => Some(match h.liveness() {
                Liveness::Gone(why) => LockStatus::Stale(h, why),
                Liveness::Alive => LockStatus::Live(HeldBy {
                    holder: h,
                    note: "that process is still running".into(),
                }),
                Liveness::Unknown(why) => LockStatus::Live(HeldBy {
                    holder: h,
                    note: why,
                }),
            }),
        })
    }

    fn break_lock(&self) -> Result<Option<Holder>, StateError> {
        lock::remove(&self.lock_path()).map_err(|e| {
            StateError::Io(format!("cannot remove {}: {e}", self.lock_path().display()))
        })
    }

    fn mirror(&self) -> Option<Arc<dyn JournalMirror>> {
        None
    }

    fn remote_runs(&self) -> Result<Vec<StoredRun>, StateError> {
        Ok(Vec::new())
    }

    fn control(&self) -> Arc<dyn super::control::ControlChannel> {
        Arc::new(super::control::LocalControl::new(&self.dir))
    }
}

struct LocalLock(DeployLock);

impl HeldLock for LocalLock {
    // flock(2) cannot be lost while the process lives.
    fn on_lost(&mut self, _f: Box<dyn Fn(String) + Send + Sync>) {}

    fn release(&mut self) {
        self.0.release();
    }
}
