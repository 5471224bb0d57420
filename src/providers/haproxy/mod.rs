//! `lb.kind = "haproxy"`: membership, drains, weights, stats and blue/green
//! switches through the HAProxy runtime API (`stats socket … level admin`).
//!
//! This file is the policy: what each [`LoadBalancer`] call asks of HAProxy
//! and when a wait is over. The mechanics sit beside it:
//!
//! - `servers.rs`: which HAProxy server an instance is, and one command to it;
//! - `commands.rs`: the command lines, plain data built from checked names;
//! - `runtime_api.rs`: the socket, one command per connection;
//! - `stat.rs`: the `show stat` CSV and HAProxy's status words;
//! - `inspect.rs`: read-only questions for `init` and `doctor` (a backend's
//!   servers, the socket's level).
//! - `second_opinion.rs`: a drained server's host asked for its own count of
//!   connections (logged when it disagrees);
//! - `pools.rs`: blue/green, the switch from one pool's servers to another's.

mod commands;
mod inspect;
mod pools;
mod runtime_api;
mod second_opinion;
mod servers;
mod stat;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::poll::{Backoff, Learned};
use crate::config::{format_duration, host_for_url, Instance, Inventory, LbBackend};
use crate::primitives::{
    ActionError, ActionResult, DrainReport, ErrorKind, LbOp, LoadBalancer, MemberState,
    MemberStats, Transport,
};
use commands::{set_state_cmd, set_weight_cmd, shutdown_sessions_cmd, AdminState};
pub use inspect::{backend_servers, cli_level, BackendServer};
use runtime_api::RuntimeApi;
use stat::{member_state, takes_new_traffic, ServerStat, Status};

pub struct HaproxyLb {
    inv: Arc<Inventory>,
    api: RuntimeApi,
    backend: String,
    /// Inventory name → HAProxy server name, for instances found by address;
    /// std Mutex: nothing is awaited while it is held.
    by_address: Mutex<HashMap<String, String>>,
    /// Instances this provider put `ready` from `maint` and has not yet
    /// waited for: HAProxy reset their health, so any DOWN is a new verdict.
    from_maint: Mutex<HashSet<String>>,
    /// The run's ssh transport, for the hosts' own connection counts.
    ssh: Option<Arc<dyn Transport>>,
    /// How long drains and waits for UP took so far in this run: polls
    /// are fine around that moment (HAProxy's runtime API tells neither a
    /// server's check `inter` nor when its next check runs).
    drains: Learned,
    ups: Learned,
}

impl HaproxyLb {
    /// Connects to nothing: the first call does.
    ///
    /// # Panics
    /// When the inventory's `lb.kind` is not `haproxy` (`providers::build`
    /// only calls this for haproxy inventories).
    pub fn new(inv: Arc<Inventory>) -> Self {
        let LbBackend::Haproxy { socket, backend } = &inv.lb.backend else {
            panic!("HaproxyLb needs lb.kind = \"haproxy\"");
        };
        Self {
            api: RuntimeApi::new(socket),
            backend: backend.clone(),
            by_address: Mutex::new(HashMap::new()),
            from_maint: Mutex::new(HashSet::new()),
            ssh: None,
            drains: Learned::default(),
            ups: Learned::default(),
            inv,
        }
    }

    /// Asks each drained server's host for its own connection count (a
    /// second opinion, logged) when `lb.drain_detect = "auto"`.
    pub fn with_host_counts(mut self, ssh: Arc<dyn Transport>) -> Self {
        self.ssh = Some(ssh);
        self
    }

    /// The backend serving `inst`: its pool's own backend when `lb.pools`
    /// names one, else `lb.backend`.
    fn backend_of(&self, inst: &Instance) -> &str {
        inst.pool
            .as_ref()
            .and_then(|p| self.inv.lb.pools.get(p))
            .and_then(|t| t.backend.as_deref())
            .unwrap_or(&self.backend)
    }

    /// The server name the plan shows: the inventory name (a by-address match
    /// is only known after asking HAProxy, and a plan asks nothing).
    fn label(&self, inst: &Instance) -> String {
        let mut label = String::new();
        self.push_label(&mut label, inst);
        label
    }

    /// `backend/server` onto `buf` (a plan describes 400,000 steps at
    /// 100,000 instances: one allocation each, not three).
    fn push_label(&self, buf: &mut String, inst: &Instance) {
        buf.push_str(self.backend_of(inst));
        buf.push('/');
        buf.push_str(&inst.name);
    }

    fn poll(&self) -> Backoff {
        Backoff::fast_or_fixed(self.inv.lb.poll_interval)
    }

    /// HAProxy's health checks say `inst` is down (still, after `waited`).
    fn marked_down(
        &self,
        inst: &Instance,
        row: &ServerStat,
        waited: Option<Duration>,
    ) -> ActionError {
        let still = waited
            .map(|w| format!(" (still, after {})", format_duration(w)))
            .unwrap_or_default();
        ActionError::new(
            ErrorKind::HealthFailed,
            format!(
                "HAProxy's health checks marked {}/{} DOWN{still}: {}",
                row.backend,
                row.server,
                row.check_text()
            ),
        )
        .host(&inst.name)
        .detail("check_status", &row.check_status)
    }
}

#[async_trait]
impl LoadBalancer for HaproxyLb {
    fn kind(&self) -> &'static str {
        "haproxy"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let mut text = String::with_capacity(96);
        text.push_str("haproxy ");
        self.push_label(&mut text, inst);
        text.push_str(": ");
        match op {
            LbOp::Deregister => text.push_str("drain"),
            LbOp::WaitDrained { .. } => text.push_str("wait until 0 sessions, then maint"),
            LbOp::Register => text.push_str("ready"),
            LbOp::WaitInService { .. } => text.push_str("wait until UP"),
            LbOp::SetWeight(w) => text.push_str(&format!("weight {w}")),
        }
        text
    }

    /// `drain`: no new sessions; open ones finish; health checks go on.
    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Drain))
            .await
    }

    /// Polls `scur` and `qcur` down to 0, then sets `maint` so nothing (not
    /// even a persistent-cookie session, which `drain` still admits) arrives
    /// while the instance is being replaced.
    async fn wait_drained(&self, inst: &Instance, timeout: Duration) -> ActionResult<DrainReport> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut poll = Backoff::around(self.inv.lb.poll_interval, &self.drains);
        let mut at_start = None;
        let server = loop {
            let row = self.row(inst).await?;
            let open = row.sessions + row.queue;
            if at_start.is_none() {
                at_start = Some(open);
                if takes_new_traffic(&row.status) {
                    return Err(ActionError::new(
                        ErrorKind::Lb,
                        format!(
                            "HAProxy server {}/{} is still in rotation (status {}): deregister(inst) first, or the drain would wait on live traffic",
                            row.backend, row.server, row.status
                        ),
                    )
                    .host(&inst.name));
                }
            }
            if open == 0 {
                self.drains.record(started.elapsed());
                break format!("{}/{}", row.backend, row.server);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ActionError::new(
                    ErrorKind::DrainTimeout,
                    format!(
                        "{} session(s) still open and {} queued on HAProxy server {}/{} after {}; it is left in {} (no new traffic). Raise lb.drain_timeout, or look for long-lived connections (websockets, streaming, slow clients)",
                        row.sessions,
                        row.queue,
                        row.backend,
                        row.server,
                        format_duration(timeout),
                        row.status
                    ),
                )
                .host(&inst.name)
                .detail("sessions", row.sessions)
                .detail("queue", row.queue));
            }
            poll.pause(now, deadline).await;
        };
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Maint))
            .await?;
        // After maint, beside the deploy: the ssh round trip delays nothing.
        self.second_opinion(inst, server);
        Ok(DrainReport {
            waited: started.elapsed(),
            connections_at_start: at_start,
            configured_delay: None,
            ..Default::default()
        })
    }

    /// `shutdown sessions server`, then `maint` as a finished drain would.
    async fn close_connections(&self, inst: &Instance) -> ActionResult<Option<u64>> {
        let row = self.row(inst).await?;
        self.set_server(inst, shutdown_sessions_cmd).await?;
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Maint))
            .await?;
        Ok(Some(row.sessions))
    }

    /// `ready`: back into load balancing. From `maint` HAProxy counts the
    /// server UP at once with one check of slack (`UP 1/2`);
    /// `wait_in_service` waits for that check.
    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        let was = self.row(inst).await?;
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Ready))
            .await?;
        if Status::of(&was.status) == Status::Maint {
            self.from_maint.lock().unwrap().insert(inst.name.clone());
        }
        Ok(())
    }

    /// Waits for a plain `UP` (full health: a check passed since `ready`, or
    /// the server has no checks). Fails as soon as a check run during the
    /// wait marks it `DOWN`, with HAProxy's own words for why.
    async fn wait_in_service(&self, inst: &Instance, timeout: Duration) -> ActionResult<Duration> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut poll = Backoff::around(self.inv.lb.poll_interval, &self.ups);
        // A DOWN is news only when a check ran after `ready`: leaving maint
        // resets the server to UP, so from there any DOWN is; otherwise (e.g.
        // `ready` from a drain that checks marked DOWN during the restart) the
        // DOWN may be stale until the status or the check result moves.
        let mut checked_since = self.from_maint.lock().unwrap().remove(&inst.name);
        let mut first_check = None;
        // While a check runs, `show stat` shows it half-done (`* L7STS`, code
        // 0, no text): verdicts come from the last finished one.
        let mut finished: Option<ServerStat> = None;
        loop {
            let row = self.row(inst).await?;
            let status = Status::of(&row.status);
            if status != Status::Down {
                checked_since = true;
            }
            if !row.check_running() {
                let check = row.check_text();
                if first_check.as_ref().is_some_and(|c| *c != check) {
                    checked_since = true;
                }
                first_check.get_or_insert(check);
                finished = Some(row.clone());
            }
            let verdict = finished.as_ref().unwrap_or(&row);
            match status {
                Status::Up => {
                    self.ups.record(started.elapsed());
                    return Ok(started.elapsed());
                }
                Status::Maint | Status::Drain => {
                    return Err(ActionError::new(
                        ErrorKind::Lb,
                        format!(
                            "HAProxy server {}/{} is not in rotation (status {}): register(inst) first",
                            row.backend, row.server, row.status
                        ),
                    )
                    .host(&inst.name));
                }
                Status::Down if !row.check_running() && row.check_failed() && checked_since => {
                    return Err(self.marked_down(inst, &row, None));
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                if status == Status::Down && verdict.check_failed() {
                    return Err(self.marked_down(inst, verdict, Some(timeout)));
                }
                return Err(ActionError::new(
                    ErrorKind::Timeout,
                    format!(
                        "HAProxy server {}/{} did not come UP within {} (status {}, last check: {})",
                        row.backend,
                        row.server,
                        format_duration(timeout),
                        row.status,
                        verdict.check_text()
                    ),
                )
                .host(&inst.name));
            }
            poll.pause(now, deadline).await;
        }
    }

    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        self.set_server(inst, |b, s| set_weight_cmd(b, s, &weight.to_string()))
            .await
    }

    fn supports_weights(&self) -> bool {
        true
    }

    /// `weight 100%`: HAProxy's relative weight, of the one in haproxy.cfg.
    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        self.set_server(inst, |b, s| set_weight_cmd(b, s, "100%"))
            .await
    }

    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        let rows = self
            .servers(self.backend_of(inst))
            .await
            .map_err(|e| e.host(&inst.name))?;
        Ok(match self.find(inst, &rows).await {
            Some(row) => member_state(&row.status),
            None => MemberState::Unknown,
        })
    }

    /// One `show stat` per backend involved (one, unless pools have their own).
    async fn states(&self, fleet: &[Instance]) -> ActionResult<Vec<MemberState>> {
        let mut by_backend: BTreeMap<&str, Vec<ServerStat>> = BTreeMap::new();
        let mut out = Vec::with_capacity(fleet.len());
        for inst in fleet {
            let backend = self.backend_of(inst);
            if !by_backend.contains_key(backend) {
                by_backend.insert(backend, self.servers(backend).await?);
            }
            out.push(match self.find(inst, &by_backend[backend]).await {
                Some(row) => member_state(&row.status),
                None => MemberState::Unknown,
            });
        }
        Ok(out)
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
            MemberState::OutOfService => "MAINT",
            MemberState::Draining => "DRAIN",
            MemberState::Unhealthy => "DOWN",
            MemberState::Starting => "DOWN, checks rising",
            MemberState::InService => "UP",
            MemberState::Unknown => "no such server",
        }
        .into()
    }

    /// Each instance is a server of its backend at the inventory's address
    /// (found by name or by address), and no two instances are one server.
    async fn verify(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let mut by_backend: BTreeMap<&str, Vec<ServerStat>> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut taken: BTreeMap<(String, String), &str> = BTreeMap::new();
        for inst in fleet {
            let backend = self.backend_of(inst);
            if !by_backend.contains_key(backend) {
                by_backend.insert(backend, self.servers(backend).await?);
            }
            let rows = &by_backend[backend];
            let here = format!(
                "{}:{}",
                host_for_url(&inst.host),
                self.inv.traffic_port(inst)
            );
            let row = match rows.iter().find(|r| r.server == inst.name) {
                // Below level admin `show stat` leaves `addr` empty.
                Some(row) if row.addr.is_empty() => {
                    problems.push(format!(
                        "{}: HAProxy at {} shows no address for server {}/{}, so it cannot be checked against the inventory: the socket is below level admin (declare it `stats socket … level admin`)",
                        inst.name, self.api, row.backend, row.server
                    ));
                    continue;
                }
                Some(row) if !self.at(inst, row).await => {
                    problems.push(format!(
                        "{}: HAProxy server {}/{} is at {}, but the inventory says {} is at {here}: fix its host/port (or the server line in haproxy.cfg)",
                        inst.name, row.backend, row.server, row.addr, inst.name
                    ));
                    continue;
                }
                Some(row) => row,
                None => match self.find(inst, rows).await {
                    Some(row) => row,
                    None => {
                        problems.push(format!(
                            "{}: HAProxy at {}: {}",
                            inst.name,
                            self.api,
                            self.missing(inst, backend, rows)
                        ));
                        continue;
                    }
                },
            };
            let key = (row.backend.clone(), row.server.clone());
            if let Some(other) = taken.insert(key, &inst.name) {
                problems.push(format!(
                    "{}: HAProxy server {}/{} is also {other}'s: two instances would drain one server",
                    inst.name, row.backend, row.server
                ));
            }
        }
        Ok(problems)
    }

    /// Keys: `sessions` (scur), `queue` (qcur), `requests` (stot), `http_2xx`,
    /// `http_4xx`, `http_5xx`, `response_ms` (rtime, average of the last
    /// 1024), `weight`, `connect_errors` (econ), `response_errors` (eresp).
    async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        let row = self.row(inst).await?;
        Ok([
            ("sessions", row.sessions),
            ("queue", row.queue),
            ("requests", row.total),
            ("http_2xx", row.http_2xx),
            ("http_4xx", row.http_4xx),
            ("http_5xx", row.http_5xx),
            ("response_ms", row.response_ms),
            ("weight", row.weight),
            ("connect_errors", row.connect_errors),
            ("response_errors", row.response_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as f64))
        .collect())
    }

    /// One socket write: the target pool's servers `ready` first, then
    /// every other pool's `drain` (`pools.rs`).
    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        self.switch_to(pool).await
    }

    fn describe_switch(&self, pool: &str) -> String {
        self.describe_pools(pool)
    }
}
