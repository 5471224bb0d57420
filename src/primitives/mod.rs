//! The async Rust API scripts drive, as traits at each side-effect seam.
//!
//! Providers (`crate::providers`) implement these; the effects layer
//! (`crate::effects`) is the only caller. Nothing here knows Rhai exists.

mod error;
mod quote;
mod services;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use error::{tail_lines, ActionError, ActionResult, ErrorKind};
pub use quote::sh_quote;
pub use services::{Database, DbLock, Discovery, Metrics, Notifier, Operator};

use crate::config::Instance;

/// A command for a shell: either a line the operator wrote (run as is, it is
/// theirs), or an argv whose every element is quoted so it arrives as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Shell(String),
    Argv(Vec<String>),
}

impl Cmd {
    /// The line handed to `sh -c` (remote or local).
    pub fn to_shell(&self) -> String {
        match self {
            Self::Shell(s) => s.clone(),
            Self::Argv(args) => args
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_shell())
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

/// Runs commands on an instance (ssh) or on this machine (local).
#[async_trait]
pub trait Transport: Send + Sync {
    /// How the plan shows this command, e.g. `ssh ubuntu@10.0.1.10: ./deploy.sh`.
    fn describe(&self, inst: &Instance, cmd: &Cmd) -> String;
    /// Runs `cmd`; a non-zero exit is *not* an error here (the effects layer
    /// decides, so `#{check: false}` works the same for every transport).
    /// Output is streamed to the log line by line as it arrives.
    async fn exec(&self, inst: &Instance, cmd: &Cmd, timeout: Duration)
        -> ActionResult<ExecOutput>;
    /// Opens the connection to `inst` ahead of its first command (the
    /// instances that come next), so that command does not wait for the
    /// handshake. Never fails: a host that cannot be reached now is tried
    /// again, and reported, at its own first command.
    async fn warm(&self, _inst: &Instance) {}
    /// Closes connections opened during the run.
    async fn close(&self) {}
}

/// One HTTP health probe and its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthProbe {
    pub url: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub retries: u32,
    pub healthy_threshold: u32,
    /// Checked on the instance over ssh (`health.via`, `health.command`)
    /// instead of from this machine; `url` is then `http://localhost:…`.
    pub on_host: Option<crate::config::OnHost>,
    /// When earlier checks of this run first passed (their median): the
    /// attempts come finely around that moment (see `providers::http::retry`).
    pub ready_after: Option<Duration>,
}

/// What one attempt saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Time since the check started.
    pub at: Duration,
    /// `200`, `503`, `connection refused`, `timeout after 2s`, `body lacks "ok"`.
    pub outcome: String,
    pub ok: bool,
    pub latency: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub url: String,
    pub attempts: Vec<Attempt>,
    pub duration: Duration,
}

#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// Polls until `healthy_threshold` consecutive successes (Ok) or the
    /// retries are spent (Err of kind `health_failed`, listing the attempts).
    async fn check(&self, probe: &HealthProbe) -> ActionResult<HealthReport>;
}

/// An instance as the load balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Receiving traffic and healthy.
    InService,
    /// No new traffic; connections still open.
    Draining,
    /// Out of rotation (maint, down, deregistered).
    OutOfService,
    /// In rotation but failing the LB's health checks.
    Unhealthy,
    /// Registered, not yet passing health checks.
    Starting,
    /// Not known to the load balancer at all.
    Unknown,
}

impl MemberState {
    /// Taken out of load balancing (by an operator or a run): no new traffic
    /// is routed to it whatever its health. `Unhealthy` and `Starting`
    /// members are in rotation: traffic returns as soon as checks pass.
    pub fn out_of_rotation(&self) -> bool {
        matches!(self, Self::Draining | Self::OutOfService | Self::Unknown)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InService => "in_service",
            Self::Draining => "draining",
            Self::OutOfService => "out_of_service",
            Self::Unhealthy => "unhealthy",
            Self::Starting => "starting",
            Self::Unknown => "unknown",
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DrainReport {
    pub waited: Duration,
    /// Connections open when the drain began, where the LB reports them.
    pub connections_at_start: Option<u64>,
    /// The LB's own fixed delay (ELBv2 `deregistration_delay`), to report time saved.
    pub configured_delay: Option<Duration>,
    /// Which signal ended it.
    pub ended_by: DrainSignal,
}

/// What ended a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainSignal {
    /// The load balancer's own state: ELBv2 `unused` or the target gone,
    /// HAProxy `scur` 0, nginx's workers done with the server.
    #[default]
    Lb,
    /// The LB had stopped sending (ELBv2 `draining`) and the instance itself
    /// showed no established connection to its traffic port for `lb.drain_settle`.
    Host,
}

impl DrainSignal {
    /// `lb` or `host`: the journal's and the JSON summary's word.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Lb => "lb",
            Self::Host => "host",
        }
    }
}

/// Load-balancer operations, for plan lines and journal records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbOp {
    Deregister,
    WaitDrained { timeout: Duration },
    Register,
    WaitInService { timeout: Duration },
    SetWeight(u32),
}

/// Numbers the LB keeps about one member (HAProxy `show stat`, ELBv2 health),
/// read by canary gates. Keys are documented per provider.
pub type MemberStats = BTreeMap<String, f64>;

#[async_trait]
pub trait LoadBalancer: Send + Sync {
    /// `haproxy`, `nginx`, `elbv2`, `none`.
    fn kind(&self) -> &'static str;
    /// How the plan shows `op` on `inst`, e.g. `haproxy credit_radar/web-1: drain`.
    fn describe(&self, op: LbOp, inst: &Instance) -> String;
    /// Stops new traffic to `inst`; open connections may finish.
    async fn deregister(&self, inst: &Instance) -> ActionResult<()>;
    /// Waits until `inst` has no connections left (or `timeout`, an error of kind `drain_timeout`).
    async fn wait_drained(&self, inst: &Instance, timeout: Duration) -> ActionResult<DrainReport>;
    /// At `drain_timeout` with `lb.on_drain_timeout = "proceed"`: closes the
    /// connections `inst` still has and finishes taking it out (HAProxy
    /// `shutdown sessions server`). Returns how many it closed; `None` when
    /// the LB cannot close them (nginx) or does it itself (ELBv2).
    async fn close_connections(&self, _inst: &Instance) -> ActionResult<Option<u64>> {
        Ok(None)
    }
    /// Puts `inst` back in rotation.
    async fn register(&self, inst: &Instance) -> ActionResult<()>;
    /// Waits until the LB's own health checks report `inst` healthy.
    async fn wait_in_service(&self, inst: &Instance, timeout: Duration) -> ActionResult<Duration>;
    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()>;
    /// Whether `set_weight` shifts traffic between members (HAProxy, nginx);
    /// ELBv2 weighs target groups, not targets.
    fn supports_weights(&self) -> bool {
        false
    }
    /// Puts `inst` back to its configured weight (HAProxy: the weight in
    /// haproxy.cfg; nginx: the inventory's `weight`, else nginx's default).
    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        Err(ActionError::new(
            ErrorKind::Lb,
            format!("{} has no per-instance weights", self.kind()),
        )
        .host(&inst.name))
    }
    /// Several weight changes at once (`None`: back to the configured
    /// weight). Providers that reload per change (nginx) do it once.
    async fn set_weights(&self, changes: &[(&Instance, Option<u32>)]) -> ActionResult<()> {
        for (inst, w) in changes {
            match w {
                Some(w) => self.set_weight(inst, *w).await?,
                None => self.reset_weight(inst).await?,
            }
        }
        Ok(())
    }
    async fn state(&self, inst: &Instance) -> ActionResult<MemberState>;
    /// The state of every instance of `fleet`, in order, from as few reads of
    /// the LB as it allows (one `show stat`, one read of the upstream file,
    /// one DescribeTargetHealth): the capacity guard decides from one reading.
    async fn states(&self, fleet: &[Instance]) -> ActionResult<Vec<MemberState>> {
        let mut out = Vec::with_capacity(fleet.len());
        for inst in fleet {
            out.push(self.state(inst).await?);
        }
        Ok(out)
    }
    /// How the operator sees `state` on this LB (`MAINT`, `DRAIN`, `down`,
    /// `not registered`), for messages about hosts found out of rotation.
    fn state_word(&self, state: &MemberState) -> String {
        state.as_str().to_string()
    }
    /// Checks the inventory against the LB before anything is touched: each
    /// instance is the LB's member at the inventory's address, and the LB
    /// routes to nothing the inventory does not know. Returns one sentence
    /// per problem, naming the instance (empty: all agree). Reads only.
    async fn verify(&self, _fleet: &[Instance]) -> ActionResult<Vec<String>> {
        Ok(Vec::new())
    }
    /// How many of `fleet` the LB has in service right now.
    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize>;
    async fn stats(&self, _inst: &Instance) -> ActionResult<MemberStats> {
        Ok(MemberStats::new())
    }
    /// The blue/green pools that take traffic now. By default: the pools
    /// with a member in rotation (HAProxy, nginx: the idle pool is out of
    /// rotation); ELBv2 overrides it with the listener's forward action,
    /// since an idle target group's targets stay registered and healthy.
    async fn live_pools(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let states = self.states(fleet).await?;
        let mut live: Vec<String> = Vec::new();
        for (inst, state) in fleet.iter().zip(&states) {
            if let Some(pool) = &inst.pool {
                if !state.out_of_rotation() && !live.contains(pool) {
                    live.push(pool.clone());
                }
            }
        }
        live.sort();
        Ok(live)
    }
    /// Moves all traffic to `pool` (blue/green). Providers without pools refuse.
    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        Err(ActionError::new(
            ErrorKind::Lb,
            format!("{} cannot switch traffic to pool {pool:?}", self.kind()),
        ))
    }
    fn describe_switch(&self, pool: &str) -> String {
        format!("{}: switch traffic to pool {pool}", self.kind())
    }
    /// The typical poll interval, used by plan estimates.
    fn typical_drain(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// The providers one run talks to: one of each trait, chosen by
/// `providers::build` (live) or a test (fakes). Held here, below both
/// layers, so providers can build it without knowing the effects layer.
#[derive(Clone)]
pub struct Providers {
    pub lb: Arc<dyn LoadBalancer>,
    pub ssh: Arc<dyn Transport>,
    pub local: Arc<dyn Transport>,
    pub health: Arc<dyn HealthCheck>,
    pub database: Arc<dyn Database>,
    pub metrics: Arc<dyn Metrics>,
    pub notifier: Arc<dyn Notifier>,
    pub operator: Arc<dyn Operator>,
    pub discovery: Arc<dyn Discovery>,
}
