//! Where the deploy lock and the run journals live: the state backend
//! (`[state]` in the inventory), behind [`StateBackend`].
//!
//! # Identity
//!
//! Locks and journals belong to an inventory's [`Identity`]: its canonical
//! path and a fingerprint (sha256) of what it deploys to — the app name,
//! the load balancer target (HAProxy socket and backend, nginx upstream,
//! target group) and the instances (name, host, traffic port, pool).
//!
//! - **The lock is keyed by the fingerprint**, on every backend: two working
//!   copies on two machines have different paths but deploy the same fleet,
//!   so with PostgreSQL they must share one lock; two inventories in one
//!   folder (`staging.toml`, `prod.toml`) describe different fleets and do
//!   not block each other. Editing an inventory's fleet makes a new identity:
//!   finish or recover a run before changing the fleet under it.
//! - **A journal belongs to an inventory** when its run-start record names
//!   the same fingerprint or the same canonical path (so a run whose
//!   inventory was edited since is still recovered from that file). Only
//!   those are listed (`runs`), recovered (`recover`) or re-run
//!   (`--only-failed`).
//!
//! # Backends
//!
//! - [`local`] (default): `.rollscript/` beside the inventory — journals in
//!   `runs/`, locks in `locks/` (flock(2), see [`crate::lock`]).
//! - [`postgres`]: the lock is a lease row per fingerprint, renewed by a
//!   heartbeat, stale on every machine once it expires; every journal record
//!   is written there as well as locally, before the effect. Runs, `recover`
//!   and `unlock` work from any machine with the same inventory and URL.
//!
//! Both keep each run's control requests (`pause`, `resume`, `abort`,
//! `promote`) where its lock is: see [`control`].
//!
//! `ROLLSCRIPT_HOSTNAME` overrides the host name recorded in locks and
//! journals (tests play "another machine" with it; operators whose CI
//! containers share one name can set it per runner).

pub mod control;
pub mod local;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Inventory, LbBackend, StateStore};
use crate::journal::{self, Record, Summary};
use crate::lock::{HeldBy, Holder, LockError};

/// Which runs and which lock belong to an inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The inventory file, canonical (as given when it cannot be resolved).
    pub path: PathBuf,
    /// sha256 (hex) of app name, LB target and instances.
    pub fingerprint: String,
    pub app: String,
}

impl Identity {
    pub fn of(inv: &Inventory) -> Self {
        let path = std::fs::canonicalize(&inv.path).unwrap_or_else(|_| inv.path.clone());
        let mut h = Sha256::new();
        let mut field = |name: &str, value: &str| {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(value.as_bytes());
            h.update([0]);
        };
        field("app", &inv.app.name);
        match &inv.lb.backend {
            LbBackend::None => field("lb", "none"),
            LbBackend::Haproxy { socket, backend } => {
                field("lb", "haproxy");
                field("socket", socket);
                field("backend", backend);
            }
            LbBackend::Nginx {
                upstream_file,
                upstream,
                run_on,
                ..
            } => {
                // The upstream file is resolved against each working copy's
                // folder: only its name is the same everywhere.
                field("lb", "nginx");
                field("upstream", upstream);
                field(
                    "upstream_file",
                    &upstream_file
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                field("run_on", run_on.as_deref().unwrap_or(""));
            }
            LbBackend::Aws {
                target_group_arn,
                region,
                endpoint,
                ..
            } => {
                field("lb", "aws");
                field("target_group_arn", target_group_arn);
                field("region", region.as_deref().unwrap_or(""));
                field("endpoint", endpoint.as_deref().unwrap_or(""));
            }
        }
        for (pool, t) in &inv.lb.pools {
            field("pool", pool);
            field("pool_backend", t.backend.as_deref().unwrap_or(""));
            field("pool_upstream", t.upstream.as_deref().unwrap_or(""));
            field("pool_tg", t.target_group_arn.as_deref().unwrap_or(""));
        }
        let mut instances: Vec<_> = inv.instances.iter().collect();
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        for i in instances {
            field("instance", &i.name);
            field("host", &i.host);
            field("port", &inv.traffic_port(i).to_string());
            field("pool", i.pool.as_deref().unwrap_or(""));
        }
        Self {
            path,
            fingerprint: hex::encode(h.finalize()),
            app: inv.app.name.clone(),
        }
    }

    /// A short name for files: `<app>-<first 16 hex digits>`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.app, &self.fingerprint[..16])
    }

    /// Whether the run summarised by `s` is one of this inventory's.
    /// Journals written before identities were recorded match by path or
    /// by the inventory file's hash.
    pub fn owns(&self, s: &Summary, inventory_hash: &str) -> bool {
        match (&s.identity, &s.inventory_path) {
            (Some(fp), _) if *fp == self.fingerprint => true,
            (_, Some(p)) => Path::new(p) == self.path,
            (None, None) => {
                let recorded = std::fs::canonicalize(&s.inventory)
                    .unwrap_or_else(|_| PathBuf::from(&s.inventory));
                recorded == self.path
                    || (!s.inventory_sha256.is_empty() && s.inventory_sha256 == inventory_hash)
            }
            _ => false,
        }
    }
}

/// A state backend failed before anything was touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The database cannot be reached (URL redacted).
    Unreachable { url: String, why: String },
    /// The state cannot be read or written.
    Io(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable { url, why } => {
                write!(f, "cannot reach the state database {url}: {why}")
            }
            Self::Io(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StateError {}

/// What a lock's record says now.
#[derive(Debug, Clone, PartialEq)]
pub enum LockStatus {
    /// Its holder may be running (the note says why it counts as held).
    Live(HeldBy),
    /// Its holder is certainly gone (and why): anyone may take it over.
    Stale(Holder, String),
}

impl LockStatus {
    pub fn holder(&self) -> &Holder {
        match self {
            Self::Live(h) => &h.holder,
            Self::Stale(h, _) => h,
        }
    }
}

/// A journal as stored: its id and its records in order.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub id: String,
    /// The record lines (JSON), as written.
    pub lines: Vec<String>,
    /// The local copy, when this machine has one.
    pub local: Option<PathBuf>,
}

impl StoredRun {
    pub fn records(&self) -> Vec<Record> {
        journal::parse_lines(self.lines.iter().map(String::as_str))
    }
}

/// Where journal records are written besides the local file.
pub trait JournalMirror: Send + Sync {
    /// Where, for messages (URL redacted).
    fn describe(&self) -> String;
    /// Lines stored for `run` (the next line number).
    fn count(&self, run: &str) -> Result<u64, String>;
    /// Stores line `line` of `run`; returns once it is durable there.
    fn append(&self, run: &str, line: u64, text: &str) -> Result<(), String>;
}

/// A held deploy lock; released on drop.
pub trait HeldLock: Send {
    /// Calls `f` (once, from another thread) if the lock is lost while held:
    /// the lease expired or was taken over, or its database went away.
    fn on_lost(&mut self, f: Box<dyn Fn(String) + Send + Sync>);
    fn release(&mut self);
}

/// The lock and the history of one inventory.
pub trait StateBackend: Send + Sync {
    /// Where the state lives, for messages: `.rollscript/ beside …`,
    /// `postgres://deploy:***@db/rollscript`.
    fn describe(&self) -> String;
    /// Takes the deploy lock (see [`crate::lock`] and [`postgres`]).
    fn lock(
        &self,
        me: &Holder,
        wait: Duration,
        force: bool,
    ) -> Result<Box<dyn HeldLock>, LockError>;
    /// The lock's current record, if any.
    fn lock_status(&self) -> Result<Option<LockStatus>, StateError>;
    /// Removes the lock whoever holds it (`unlock`); returns who held it.
    fn break_lock(&self) -> Result<Option<Holder>, StateError>;
    /// Where journal records go besides the local file.
    fn mirror(&self) -> Option<Arc<dyn JournalMirror>>;
    /// Runs stored outside this machine, of this identity.
    fn remote_runs(&self) -> Result<Vec<StoredRun>, StateError>;
    /// Where `pause`, `resume`, `abort` and `promote` reach this identity's
    /// runs (see [`control`]).
    fn control(&self) -> Arc<dyn control::ControlChannel>;
}

/// The backend `[state]` names for `inv`. PostgreSQL is connected to now:
/// unreachable is an error before anything is touched.
pub fn open(inv: &Inventory) -> Result<Arc<dyn StateBackend>, StateError> {
    let id = Identity::of(inv);
    match &inv.state.store {
        StateStore::Local => Ok(Arc::new(local::LocalState::new(&inv.path, id))),
        StateStore::Postgres { url } => Ok(Arc::new(postgres::PgState::connect(
            url,
            id,
            inv.state.lease,
        )?)),
    }
}

/// Every run of the inventory `id` (loaded as `inv`): its local journals (beside the inventory) and, with a
/// shared backend, the stored ones — one entry per run, the copy with more
/// records winning (the machine that ran it may hold records the database
/// missed while unreachable). Oldest first.
pub fn runs(
    backend: &dyn StateBackend,
    id: &Identity,
    inv: &Inventory,
) -> Result<Vec<StoredRun>, StateError> {
    use std::collections::BTreeMap;
    let mut all: BTreeMap<String, StoredRun> = BTreeMap::new();
    for path in journal::list(&inv.path) {
        let Ok(lines) = journal::read_lines(&path) else {
            continue;
        };
        let run = StoredRun {
            id: journal::run_id_of(&path),
            lines,
            local: Some(path),
        };
        let s = journal::summarise(&run.records());
        if id.owns(&s, &inv.hash) {
            all.insert(run.id.clone(), run);
        }
    }
    for remote in backend.remote_runs()? {
        match all.get_mut(&remote.id) {
            Some(local) if local.lines.len() >= remote.lines.len() => {}
            Some(local) => local.lines = remote.lines,
            None => {
                all.insert(remote.id.clone(), remote);
            }
        }
    }
    Ok(all.into_values().collect())
}

/// The run `id` (or the one run whose id starts with it).
pub fn find_run<'a>(runs: &'a [StoredRun], id: &str) -> Option<&'a StoredRun> {
    if let Some(exact) = runs.iter().find(|r| r.id == id) {
        return Some(exact);
    }
    let mut matches = runs.iter().filter(|r| r.id.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Whether the run summarised by `s` is still going, by the lock (its
/// holder is that run and may be running) or, for a run on this host, by
/// its own process (pid, boot and start time recorded at its start).
pub fn run_is_live(s: &Summary, lock: Option<&LockStatus>) -> bool {
    if s.outcome.is_some() {
        return false;
    }
    if let Some(LockStatus::Live(h)) = lock {
        if h.holder.run.as_deref() == Some(s.run.as_str()) {
            return true;
        }
    }
    run_process(s).liveness() == crate::lock::Liveness::Alive
}

/// The process that ran `s`, as a lock holder (to judge its liveness).
pub fn run_process(s: &Summary) -> Holder {
    Holder {
        user: s.user.clone(),
        host: s.host.clone(),
        pid: s.pid,
        boot_id: s.boot_id.clone(),
        proc_start: s.proc_start,
        started: s.started.clone(),
        command: s.args.join(" "),
        run: Some(s.run.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(dir: &Path, file: &str, instances: &[(&str, &str)]) -> Inventory {
        let mut t = String::from(
            "[app]\nname = \"shop\"\ndeploy = \"true\"\n[lb]\nkind = \"haproxy\"\nsocket = \"/run/haproxy.sock\"\nbackend = \"shop\"\n",
        );
        for (n, h) in instances {
            t.push_str(&format!("[[instances]]\nname = \"{n}\"\nhost = \"{h}\"\n"));
        }
        let path = dir.join(file);
        std::fs::write(&path, &t).unwrap();
        Inventory::load(&path).unwrap()
    }

    #[test]
    fn two_copies_of_one_fleet_share_a_fingerprint_and_two_fleets_do_not() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let fleet = [("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")];
        let one = Identity::of(&inv(a.path(), "rollscript.toml", &fleet));
        // Another folder, another order, comments aside: the same fleet.
        let two = Identity::of(&inv(b.path(), "prod.toml", &[fleet[1], fleet[0]]));
        assert_eq!(one.fingerprint, two.fingerprint);
        assert_ne!(one.path, two.path);
        let staging = Identity::of(&inv(a.path(), "staging.toml", &[("web-9", "10.0.9.1")]));
        assert_ne!(one.fingerprint, staging.fingerprint);
        assert_eq!(one.key(), format!("shop-{}", &one.fingerprint[..16]));
    }
}
