//! `lb.kind = "nginx"`: membership and weights by rewriting the include file
//! that holds one `upstream NAME { … }` block, then `test_command` and
//! `reload_command`; drains by waiting for nginx's old worker processes.
//!
//! Owns that file. The membership state lives in it (`down`, `weight=`), and
//! every change reads it back first, so separate runs agree; it is written
//! atomically (temp file + rename) and restored when nginx rejects it. Other
//! directives in the block and other server parameters are kept.
//!
//! Why waiting for workers is the drain: on reload the master starts new
//! workers with the new upstream, then (≈100 ms later) tells the old ones to
//! stop accepting and exit once their in-flight requests are done. So
//! `deregister` returns when every old worker has stopped accepting (no new
//! request can reach the `down` server), and `wait_drained` when they are
//! gone (every request that could still reach it has finished).
//!
//! This file is the policy: each [`LoadBalancer`] call as an edit of the
//! upstream, one test and reload, and the waits on workers. Beside it:
//!
//! - `upstream.rs`: the upstream file's parser, editor and renderer;
//! - `workers.rs`: nginx's processes, which master a reload signals, and
//!   waiting for its old workers;
//! - `edit.rs`: one edit of the file — read, change, write, test, reload;
//! - `host.rs`: where nginx runs (this machine, or `lb.run_on` over ssh).

mod edit;
mod host;
mod upstream;
mod workers;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::config::{format_duration, host_for_url, Instance, Inventory, LbBackend};
use crate::primitives::{
    ActionError, ActionResult, DrainReport, ErrorKind, LbOp, LoadBalancer, MemberState, Transport,
};
use host::NginxHost;
use upstream::Upstream;
use workers::{find_master, workers_of, Until};

/// How long a reload may take to reach the workers. The master sleeps
/// 100 ms between starting new workers and stopping old ones; a big config
/// (many certificates) takes seconds to load. Past this the master has most
/// likely refused the new config (a failed bind shows only in its error log).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NginxLb {
    inv: Arc<Inventory>,
    host: NginxHost,
    file: PathBuf,
    upstream: String,
    test_command: String,
    reload_command: String,
    /// One read-modify-write-reload at a time within a run (parallel batches).
    edit: tokio::sync::Mutex<()>,
    /// Instance name → workers that were serving before the reload that took
    /// it out; any of them may still be proxying to it. std Mutex: nothing is
    /// awaited while it is held.
    pending: Mutex<HashMap<String, BTreeSet<u32>>>,
}

impl NginxLb {
    /// Touches nothing: the first call does.
    ///
    /// # Panics
    /// When the inventory's `lb.kind` is not `nginx` (`providers::build` only
    /// calls this for nginx inventories).
    pub fn new(inv: Arc<Inventory>, ssh: Arc<dyn Transport>, local: Arc<dyn Transport>) -> Self {
        let LbBackend::Nginx {
            upstream_file,
            upstream,
            test_command,
            reload_command,
            run_on,
        } = &inv.lb.backend
        else {
            panic!("NginxLb needs lb.kind = \"nginx\"");
        };
        let host = match run_on.as_deref().and_then(|n| inv.instance(n)) {
            Some(lb_host) => NginxHost::Remote {
                ssh,
                on: lb_host.clone(),
            },
            None => NginxHost::Local {
                local,
                on: Instance::local(),
            },
        };
        Self {
            host,
            file: upstream_file.clone(),
            upstream: upstream.clone(),
            test_command: test_command.clone(),
            reload_command: reload_command.clone(),
            edit: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            inv,
        }
    }

    /// The `server` address of `inst`: `host:port`, port = its traffic port.
    fn addr(&self, inst: &Instance) -> String {
        format!(
            "{}:{}",
            host_for_url(&inst.host),
            self.inv.traffic_port(inst)
        )
    }

    fn who(&self) -> String {
        match &self.host {
            NginxHost::Local { .. } => "nginx".into(),
            NginxHost::Remote { on, .. } => format!("nginx on {}", on.name),
        }
    }

    fn take_pending(&self, inst: &Instance) -> Option<BTreeSet<u32>> {
        self.pending.lock().unwrap().remove(&inst.name)
    }

    fn add_pending(&self, name: &str, workers: &BTreeSet<u32>) {
        self.pending
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .extend(workers);
    }

    fn pool_addrs(&self, pool: &str) -> (Vec<String>, Vec<String>) {
        let (target, others): (Vec<&Instance>, Vec<&Instance>) = self
            .inv
            .instances
            .iter()
            .filter(|i| i.pool.is_some())
            .partition(|i| i.pool.as_deref() == Some(pool));
        (
            target.iter().map(|i| self.addr(i)).collect(),
            others.iter().map(|i| self.addr(i)).collect(),
        )
    }

    fn server_missing(&self, inst: &Instance) -> ActionError {
        ActionError::new(
            ErrorKind::Lb,
            format!(
                "{} has no server {} in upstream {}",
                self.file.display(),
                self.addr(inst),
                self.upstream
            ),
        )
        .host(&inst.name)
    }
}

#[async_trait]
impl LoadBalancer for NginxLb {
    fn kind(&self) -> &'static str {
        "nginx"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let addr = self.addr(inst);
        let what = match op {
            LbOp::Deregister => format!("mark {addr} down, test, reload"),
            LbOp::WaitDrained { timeout } => format!(
                "wait for old workers to finish (≤ {})",
                format_duration(timeout)
            ),
            LbOp::Register => format!("mark {addr} up, test, reload"),
            LbOp::WaitInService { .. } => {
                format!("check {addr} is up in upstream {}", self.upstream)
            }
            LbOp::SetWeight(w) => format!("set {addr} weight={w}, test, reload"),
        };
        format!("{}: {what}", self.who())
    }

    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        let addr = self.addr(inst);
        let old = self
            .apply(|up| up.server(&addr).map(|s| s.down = true))
            .await
            .map_err(|e| e.host(&inst.name))?;
        self.add_pending(&inst.name, &old);
        Ok(())
    }

    /// Waits for the workers that served before the `down` reload to exit.
    /// In a run that did not deregister `inst` itself (e.g. after a crash),
    /// waits for every worker nginx is shutting down now.
    async fn wait_drained(&self, inst: &Instance, timeout: Duration) -> ActionResult<DrainReport> {
        let started = Instant::now();
        let old = match self.take_pending(inst) {
            Some(old) => old,
            None => {
                let procs = self
                    .host
                    .processes()
                    .await
                    .map_err(|e| e.host(&inst.name))?;
                let master = find_master(&procs, &self.reload_command, &self.test_command)
                    .map_err(|m| ActionError::new(ErrorKind::Lb, m).host(&inst.name))?;
                workers_of(&procs, master)
                    .filter(|p| p.shutting_down())
                    .map(|p| p.pid)
                    .collect()
            }
        };
        let outcome = self
            .host
            .wait_for(&old, Until::Gone, timeout, self.inv.lb.poll_interval)
            .await
            .map_err(|e| e.host(&inst.name))?;
        match outcome {
            Ok(()) => Ok(DrainReport {
                waited: started.elapsed(),
                connections_at_start: None,
                configured_delay: None,
                ..Default::default()
            }),
            Err(still) => {
                // Kept, so a retry waits for the same workers.
                self.add_pending(&inst.name, &still.iter().copied().collect());
                let message = format!(
                    "{} old nginx worker(s) (pids {}) still finishing requests after {}; {} is marked down, so they get no new ones. Raise lb.drain_timeout, or set nginx's worker_shutdown_timeout for long-lived connections (websockets, streaming)",
                    still.len(),
                    join(&still),
                    format_duration(timeout),
                    self.addr(inst)
                );
                Err(ActionError::new(ErrorKind::DrainTimeout, message)
                    .host(&inst.name)
                    .detail("workers", still.len()))
            }
        }
    }

    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        let addr = self.addr(inst);
        self.apply(|up| up.server(&addr).map(|s| s.down = false))
            .await
            .map_err(|e| e.host(&inst.name))?;
        self.take_pending(inst);
        Ok(())
    }

    /// nginx (open source) has no active health checks: in service means up
    /// in the upstream nginx now runs (`register` waited for the reload).
    async fn wait_in_service(&self, inst: &Instance, _timeout: Duration) -> ActionResult<Duration> {
        let started = Instant::now();
        let up = self.read_state().await.map_err(|e| e.host(&inst.name))?;
        match up.as_ref().and_then(|u| u.find(&self.addr(inst))) {
            Some(s) if !s.down => Ok(started.elapsed()),
            Some(_) => Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "{} is marked down in {}: register(inst) first",
                    self.addr(inst),
                    self.file.display()
                ),
            )
            .host(&inst.name)),
            None => Err(self.server_missing(inst)),
        }
    }

    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        self.set_weights(&[(inst, Some(weight))])
            .await
            .map_err(|e| e.host(&inst.name))
    }

    fn supports_weights(&self) -> bool {
        true
    }

    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        self.set_weights(&[(inst, None)]).await
    }

    /// One rewrite and one reload for all of `changes`; `None` is the
    /// inventory's weight (or none, nginx's default of 1).
    async fn set_weights(&self, changes: &[(&Instance, Option<u32>)]) -> ActionResult<()> {
        if let Some((inst, _)) = changes.iter().find(|(_, w)| *w == Some(0)) {
            const NO_ZERO: &str = "nginx has no weight 0 (`weight=` must be 1 or more): use deregister(inst) to take it out of rotation";
            return Err(ActionError::new(ErrorKind::InvalidArgument, NO_ZERO).host(&inst.name));
        }
        let targets: Vec<(String, Option<u32>)> = changes
            .iter()
            .map(|(inst, w)| (self.addr(inst), w.or(inst.weight)))
            .collect();
        self.apply(|up| {
            for (addr, w) in &targets {
                up.server(addr)?.weight = *w;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        let up = self.read_state().await.map_err(|e| e.host(&inst.name))?;
        Ok(match up.as_ref().and_then(|u| u.find(&self.addr(inst))) {
            Some(s) if s.down => MemberState::OutOfService,
            Some(_) => MemberState::InService,
            None => MemberState::Unknown,
        })
    }

    /// One read of the upstream file for the whole fleet.
    async fn states(&self, fleet: &[Instance]) -> ActionResult<Vec<MemberState>> {
        let up = self.read_state().await?;
        Ok(fleet
            .iter()
            .map(|i| match up.as_ref().and_then(|u| u.find(&self.addr(i))) {
                Some(s) if s.down => MemberState::OutOfService,
                Some(_) => MemberState::InService,
                None => MemberState::Unknown,
            })
            .collect())
    }

    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        let states = self.states(fleet).await?;
        Ok(states
            .iter()
            .filter(|s| **s == MemberState::InService)
            .count())
    }

    fn state_word(&self, state: &MemberState) -> String {
        match state {
            MemberState::OutOfService => "down".into(),
            MemberState::Unknown => "not in the upstream".into(),
            other => other.as_str().into(),
        }
    }

    /// Once the file exists, its upstream and the inventory list the same
    /// servers: a server nginx routes to that no instance is would never be
    /// drained (and rewriting the file would drop it), an instance missing
    /// from it would be put into rotation by the first rewrite.
    async fn verify(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let missing = || {
            vec![format!(
                "lb.upstream_file {} holds no upstream {}: write it (`upstream {} {{ server HOST:PORT; … }}`, one server per instance) and include it from nginx.conf before the first run",
                self.file.display(),
                self.upstream,
                self.upstream
            )]
        };
        let Some(text) = self.host.read(&self.file).await? else {
            return Ok(missing());
        };
        let Some(up) = Upstream::parse(&text, &self.upstream).map_err(|m| {
            ActionError::new(
                ErrorKind::Lb,
                format!(
                    "{} (lb.upstream_file): {m}; rollscript owns this file — keep only the upstream block in it",
                    self.file.display()
                ),
            )
        })?
        else {
            return Ok(missing());
        };
        let ours: Vec<String> = fleet.iter().map(|i| self.addr(i)).collect();
        let mut problems: Vec<String> = up
            .addrs()
            .filter(|a| !ours.iter().any(|o| o == a))
            .map(|a| {
                format!(
                    "{}: server {a} of upstream {} is not an instance of the inventory: add it as an [[instances]] entry, or remove it from the upstream",
                    self.file.display(),
                    self.upstream
                )
            })
            .collect();
        for (inst, addr) in fleet.iter().zip(&ours) {
            if up.find(addr).is_none() {
                problems.push(format!(
                    "{}: {addr} is not a server of upstream {} in {}: add it there (marked `down` if it must not get traffic yet), or fix its host/port",
                    inst.name,
                    self.upstream,
                    self.file.display()
                ));
            }
        }
        Ok(problems)
    }

    /// Rewrites the upstream so only `pool`'s servers are up, in one reload.
    /// The other pools keep running (marked down) for an instant switch back.
    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        let (target, others) = self.pool_addrs(pool);
        if target.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("no instance has pool = {pool:?}"),
            ));
        }
        let old = self
            .apply(|up| {
                for (addrs, down) in [(&target, false), (&others, true)] {
                    for a in addrs {
                        up.server(a)?.down = down;
                    }
                }
                Ok(())
            })
            .await?;
        for inst in &self.inv.instances {
            match inst.pool.as_deref() {
                Some(p) if p == pool => {
                    self.take_pending(inst);
                }
                Some(_) => self.add_pending(&inst.name, &old),
                None => {}
            }
        }
        Ok(())
    }

    fn describe_switch(&self, pool: &str) -> String {
        let (target, others) = self.pool_addrs(pool);
        format!(
            "{}: upstream {}: up {} (pool {pool}), down {}, test, reload",
            self.who(),
            self.upstream,
            target.join(", "),
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            }
        )
    }
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
