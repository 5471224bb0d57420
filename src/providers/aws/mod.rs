//! AWS ELBv2 (Application and Network Load Balancer) target groups as a
//! [`LoadBalancer`].
//!
//! Membership is RegisterTargets / DeregisterTargets by EC2 instance id and
//! port; every wait polls DescribeTargetHealth for the one target. Traffic
//! shifts between target groups (canary, blue/green) go through the weights
//! of the listener's forward action.
//!
//! This file is the policy: what each [`LoadBalancer`] call asks of ELBv2.
//! Beside it:
//!
//! - `clients.rs`: the SDK clients and their config, targets by id or by
//!   private IP (EC2 DescribeInstances), and discovery of a whole fleet;
//! - `waits.rs`: a target's state as ELBv2 reports it, and the loop that
//!   waits for `healthy`;
//! - `drain.rs`: the drain, ended by ELBv2's `unused` or — with
//!   `lb.drain_detect = "auto"` — by a `draining` target whose host shows
//!   no connection to its port (counted over ssh) for `lb.drain_settle`;
//! - `listener.rs`: the listener's forward-action weights;
//! - `errors.rs`: AWS errors rendered with their code and message.
//!
//! Nothing here touches the network or the credential chain until the first
//! call: a dry run built from the same inventory stays offline.

mod clients;
mod drain;
mod errors;
mod listener;
#[cfg(test)]
mod tests;
mod waits;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::poll::Backoff;
use crate::config::{format_duration, DrainDetect, Instance, Inventory, LbBackend};
use crate::primitives::{
    ActionError, ActionResult, DrainReport, ErrorKind, LbOp, LoadBalancer, MemberState,
    MemberStats, Transport,
};
use clients::{Clients, GroupInfo, Target};
use drain::{ConnSource, DrainWait, LiveHost};
use waits::{wait_healthy, LiveTarget, Subject, TgState};

/// ELBv2's own health checks run every 5-300 s (30 s by default): polling
/// faster than 5 s mostly re-reads the same answer.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// First poll delay; doubled up to the poll interval. A deregistered target
/// with no open connections is `unused` within a second or two.
const FIRST_POLL: Duration = Duration::from_secs(1);
/// The finest step around an expected moment: an API call, not a local read.
const FINE_POLL: Duration = Duration::from_millis(200);

/// An ELBv2 target group (and optionally its listener) for one inventory.
pub struct ElbV2 {
    inv: Arc<Inventory>,
    target_group_arn: String,
    region: Option<String>,
    endpoint: Option<String>,
    listener_arn: Option<String>,
    port: Option<u16>,
    /// Replaces the standard credential/region chain (tests, embedders).
    base: Option<SdkConfig>,
    clients: OnceCell<Clients>,
    group: OnceCell<GroupInfo>,
    /// Private IP → EC2 instance id, for instances listed without `id`.
    /// std Mutex, not tokio's: nothing is awaited while it is held.
    ids: Mutex<HashMap<String, String>>,
    /// The run's ssh transport, for counting connections on a draining
    /// target's host (`lb.drain_detect = "auto"`); without it, drains
    /// follow ELBv2's state alone.
    ssh: Option<Arc<dyn Transport>>,
    /// A host without `ss` has been warned about (once per run).
    warned_no_ss: AtomicBool,
    /// Per target group: when a registered target is expected healthy
    /// (its check interval × healthy threshold), read once per run.
    to_healthy: Mutex<HashMap<String, Option<Duration>>>,
}

impl ElbV2 {
    /// Reads `lb.*` from `inv` (which must have `lb.kind = "aws"`). Connects
    /// to nothing; the SDK clients are built on first use from the standard
    /// credential chain.
    pub fn new(inv: Arc<Inventory>) -> Self {
        let LbBackend::Aws {
            target_group_arn,
            region,
            endpoint,
            listener_arn,
            port,
            discover: _,
        } = inv.lb.backend.clone()
        else {
            panic!("ElbV2::new needs an inventory with lb.kind = \"aws\"");
        };
        Self {
            inv,
            target_group_arn,
            region,
            endpoint,
            listener_arn,
            port,
            base: None,
            clients: OnceCell::new(),
            group: OnceCell::new(),
            ids: Mutex::new(HashMap::new()),
            ssh: None,
            warned_no_ss: AtomicBool::new(false),
            to_healthy: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a draining target's connections on its host over `ssh`
    /// (the run's own masters) when `lb.drain_detect = "auto"`.
    pub fn with_host_counts(mut self, ssh: Arc<dyn Transport>) -> Self {
        self.ssh = Some(ssh);
        self
    }

    /// Where drains count connections: the instance over ssh, unless
    /// `lb.drain_detect = "lb"` or there is no transport.
    fn host_counter<'a>(&'a self, inst: &'a Instance) -> Option<LiveHost<'a>> {
        match (self.inv.lb.drain_detect, &self.ssh) {
            (DrainDetect::Auto, Some(ssh)) => Some(LiveHost {
                ssh: ssh.as_ref(),
                inst,
                port: self.port_of(inst),
                warned_no_ss: &self.warned_no_ss,
            }),
            _ => None,
        }
    }

    /// Like [`ElbV2::new`], but takes credentials and defaults from `base`
    /// instead of the standard chain. The region (`lb.region`, else the
    /// ARN's), `lb.endpoint`, retries and timeouts are applied on top.
    pub fn with_sdk_config(inv: Arc<Inventory>, base: SdkConfig) -> Self {
        Self {
            base: Some(base),
            ..Self::new(inv)
        }
    }

    pub fn target_group_arn(&self) -> &str {
        &self.target_group_arn
    }

    fn poll_interval(&self) -> Duration {
        self.inv.lb.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL)
    }

    fn poll(&self) -> Backoff {
        Backoff::doubling(FIRST_POLL, self.poll_interval())
    }

    /// When a target registered now is expected `healthy`: its group's
    /// `HealthCheckIntervalSeconds` × `HealthyThresholdCount` (ELBv2 marks
    /// it healthy after that many passed checks). Read once per group; a
    /// failed read is only a debug line (the wait then polls as usual).
    pub async fn expected_healthy(&self, group: &str) -> Option<Duration> {
        if let Some(known) = self.to_healthy.lock().unwrap().get(group) {
            return *known;
        }
        let read = self
            .clients()
            .await
            .elb
            .describe_target_groups()
            .target_group_arns(group)
            .send()
            .await;
        let e = match read {
            Ok(out) => out.target_groups().first().and_then(|tg| {
                let interval = u64::try_from(tg.health_check_interval_seconds()?).ok()?;
                let rise = u32::try_from(tg.healthy_threshold_count()?).ok()?;
                Some(Duration::from_secs(interval) * rise)
            }),
            Err(e) => {
                tracing::debug!(
                    "{}",
                    errors::sdk_error("DescribeTargetGroups", "target group", group, e).message
                );
                None
            }
        };
        tracing::debug!(
            "target group {}: a registered target is expected healthy after {}",
            short_arn(group),
            e.map(format_duration)
                .unwrap_or_else(|| "an unknown time".into())
        );
        self.to_healthy.lock().unwrap().insert(group.to_string(), e);
        e
    }

    /// How long a target may stay `unhealthy` before a wait gives up on it:
    /// the patience the inventory grants an instance's own health check
    /// (`health.retries` × `health.interval`). ELBv2 reports `unhealthy` only
    /// after its `unhealthy_threshold` consecutive failed checks, so this is
    /// on top of the LB's own retries, and a target that recovers in time
    /// (`unhealthy` → `healthy`) is fine.
    fn unhealthy_grace(&self) -> Duration {
        self.inv.health.interval * self.inv.health.retries
    }

    /// Pool name → target group ARN, for every pool that has one.
    fn pool_groups(&self) -> BTreeMap<&str, &str> {
        self.inv
            .lb
            .pools
            .iter()
            .filter_map(|(name, p)| Some((name.as_str(), p.target_group_arn.as_deref()?)))
            .collect()
    }

    fn subject<'a>(&'a self, t: &'a Target) -> Subject<'a> {
        Subject {
            name: &t.name,
            id: &t.id,
            target_group: &t.group,
        }
    }

    /// Waits (≤ lb.register_timeout) until ELBv2's own checks report every
    /// target of `pool`'s group healthy; refuses when none is by then.
    async fn wait_pool_healthy(&self, pool: &str, group: &str) -> ActionResult<()> {
        let started = Instant::now();
        let deadline = started + self.inv.lb.register_timeout;
        let mut poll = self.poll();
        loop {
            let listed = self.describe_health(group, None).await?;
            let healthy = listed
                .iter()
                .filter(|l| l.status.member_state() == MemberState::InService)
                .count();
            if !listed.is_empty() && healthy == listed.len() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                if healthy > 0 {
                    tracing::warn!(
                        "switching to pool {pool} with {healthy} of its {} targets healthy after {}",
                        listed.len(),
                        format_duration(started.elapsed())
                    );
                    return Ok(());
                }
                return Err(ActionError::new(
                    ErrorKind::HealthFailed,
                    format!(
                        "refusing to switch to pool {pool}: after {} ELBv2 reports none of the {} target(s) of {} healthy; nothing was changed",
                        format_duration(started.elapsed()),
                        listed.len(),
                        short_arn(group)
                    ),
                ));
            }
            poll.pause(now, deadline).await;
        }
    }

    /// The target group `inst` belongs to: its pool's own
    /// (`lb.pools.<pool>.target_group_arn`, blue/green), else `lb.target_group_arn`.
    fn group_of(&self, inst: &Instance) -> &str {
        inst.pool
            .as_ref()
            .and_then(|p| self.inv.lb.pools.get(p))
            .and_then(|p| p.target_group_arn.as_deref())
            .unwrap_or(&self.target_group_arn)
    }

    /// DescribeTargetHealth once per target group `fleet` spans; for each
    /// instance, its id and what its group lists for it (None: not a target).
    async fn listed(
        &self,
        fleet: &[Instance],
    ) -> ActionResult<Vec<(String, Option<waits::Listed>)>> {
        let ids = self.resolve_ids(fleet).await?;
        let mut by_group: BTreeMap<&str, Vec<waits::Listed>> = BTreeMap::new();
        for inst in fleet {
            let g = self.group_of(inst);
            if !by_group.contains_key(g) {
                by_group.insert(g, self.describe_health(g, None).await?);
            }
        }
        Ok(fleet
            .iter()
            .zip(ids)
            .map(|(inst, id)| {
                let port = self.port_of(inst);
                let found = by_group[self.group_of(inst)]
                    .iter()
                    .find(|l| l.id == id && l.port.is_none_or(|p| p == port))
                    .cloned();
                (id, found)
            })
            .collect())
    }
}

#[async_trait]
impl LoadBalancer for ElbV2 {
    fn kind(&self) -> &'static str {
        "elbv2"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let tg = short_arn(self.group_of(inst));
        let who = self.label(inst);
        match op {
            LbOp::Deregister => {
                format!("elbv2 {tg}: deregister {who} (port {})", self.port_of(inst))
            }
            LbOp::WaitDrained { timeout } => match self.host_counter(inst) {
                None => format!(
                    "elbv2 {tg}: wait until {who} is unused (≤ {})",
                    format_duration(timeout)
                ),
                Some(_) => format!(
                    "elbv2 {tg}: wait until {who} is unused, or draining with no connection on {} for {} (≤ {})",
                    inst.name,
                    format_duration(self.inv.lb.drain_settle),
                    format_duration(timeout)
                ),
            },
            LbOp::Register => format!("elbv2 {tg}: register {who} (port {})", self.port_of(inst)),
            LbOp::WaitInService { timeout } => format!(
                "elbv2 {tg}: wait until {who} is healthy (≤ {})",
                format_duration(timeout)
            ),
            LbOp::SetWeight(w) => format!(
                "elbv2 {tg}: set weight of {who} to {w} (not supported: ELBv2 weighs target groups, not targets)"
            ),
        }
    }

    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        let t = self.target(inst).await?;
        let sent = self
            .clients()
            .await
            .elb
            .deregister_targets()
            .target_group_arn(&t.group)
            .targets(t.description())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            // ELBv2 refuses to deregister a target it does not hold. After a
            // crash and rerun, or a deregister by hand, the goal is reached.
            Err(e) if e.code() == Some("InvalidTarget") => match self.health_of(&t).await?.state {
                TgState::Unused | TgState::Draining | TgState::Absent => Ok(()),
                _ => Err(self.sdk_error("DeregisterTargets", e).host(t.name)),
            },
            Err(e) => Err(self.sdk_error("DeregisterTargets", e).host(t.name)),
        }
    }

    async fn wait_drained(&self, inst: &Instance, timeout: Duration) -> ActionResult<DrainReport> {
        // The clock runs from the start of the step: the attribute read is
        // part of the wait, else the "time saved" would be overstated by it.
        let started = Instant::now();
        let t = self.target(inst).await?;
        let configured_delay = self.deregistration_delay(&t.group).await;
        let source = LiveTarget {
            lb: self,
            target: &t,
        };
        let host = self.host_counter(inst);
        let before = started.elapsed();
        let drained = drain::wait_drained(
            &source,
            DrainWait {
                who: self.subject(&t),
                timeout,
                poll: self.poll(),
                configured_delay,
                host: host.as_ref().map(|h| h as &dyn ConnSource),
                settle: self.inv.lb.drain_settle,
            },
        )
        .await?;
        Ok(DrainReport {
            waited: before + drained.waited,
            connections_at_start: None,
            configured_delay,
            ended_by: drained.ended_by,
        })
    }

    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        let t = self.target(inst).await?;
        self.clients()
            .await
            .elb
            .register_targets()
            .target_group_arn(&t.group)
            .targets(t.description())
            .send()
            .await
            .map_err(|e| self.sdk_error("RegisterTargets", e).host(t.name.clone()))?;
        Ok(())
    }

    async fn wait_in_service(&self, inst: &Instance, timeout: Duration) -> ActionResult<Duration> {
        let t = self.target(inst).await?;
        let source = LiveTarget {
            lb: self,
            target: &t,
        };
        let poll = match self.inv.lb.poll_interval {
            // The user's interval, always.
            Some(_) => self.poll(),
            None => match self.expected_healthy(&t.group).await {
                Some(e) => self
                    .poll()
                    .expecting(e, (e / 50).clamp(FINE_POLL, FIRST_POLL)),
                None => self.poll(),
            },
        };
        wait_healthy(
            &source,
            &self.subject(&t),
            timeout,
            poll,
            self.unhealthy_grace(),
        )
        .await
    }

    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        Err(ActionError::new(
            ErrorKind::Lb,
            format!(
                "cannot set weight {weight} on one target: ELBv2 has no per-target weights. \
                 Split the fleet into pools with their own target groups \
                 (lb.pools.<name>.target_group_arn, lb.listener_arn) and shift traffic with \
                 switch_pool or target-group weights"
            ),
        )
        .host(inst.name.clone()))
    }

    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        let t = self.target(inst).await?;
        Ok(self.health_of(&t).await?.member_state())
    }

    /// One DescribeTargetHealth per target group (and EC2 lookups for
    /// instances known only by address, cached).
    async fn states(&self, fleet: &[Instance]) -> ActionResult<Vec<MemberState>> {
        if fleet.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .listed(fleet)
            .await?
            .into_iter()
            .map(|(_, l)| l.map_or(MemberState::OutOfService, |l| l.status.member_state()))
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
            MemberState::Draining => "draining".into(),
            MemberState::OutOfService | MemberState::Unknown => "not registered".into(),
            other => other.as_str().into(),
        }
    }

    /// Every instance is a target of the group (in any state: initial,
    /// healthy, unhealthy, draining): one that is not is an inventory the
    /// target group disagrees with.
    async fn verify(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        if fleet.is_empty() {
            return Ok(Vec::new());
        }
        Ok(fleet
            .iter()
            .zip(self.listed(fleet).await?)
            .filter(|(_, (_, listed))| listed.is_none())
            .map(|(inst, (id, _))| {
                format!(
                    "{}: instance {id} (port {}) is not a target of target group {}: register it, or remove it from the inventory (if a killed rollscript run took it out, `rollscript recover` puts it back)",
                    inst.name,
                    self.port_of(inst),
                    self.group_of(inst)
                )
            })
            .collect())
    }

    /// ELBv2 keeps no per-target traffic numbers outside CloudWatch; these are
    /// counts from DescribeTargetHealth: `in_service` (1 or 0 for `inst`) and
    /// `targets_healthy`, `targets_initial`, `targets_unhealthy`,
    /// `targets_draining`, `targets_total` for the whole target group.
    async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        let t = self.target(inst).await?;
        let listed = self.describe_health(&t.group, None).await?;
        let mut stats = MemberStats::new();
        for key in ["healthy", "initial", "unhealthy", "draining"] {
            stats.insert(format!("targets_{key}"), 0.0);
        }
        for l in &listed {
            if let Some(key) = match l.status.state {
                TgState::Healthy => Some("healthy"),
                TgState::Initial => Some("initial"),
                TgState::Unhealthy => Some("unhealthy"),
                TgState::Draining => Some("draining"),
                _ => None,
            } {
                *stats.entry(format!("targets_{key}")).or_default() += 1.0;
            }
        }
        stats.insert("targets_total".into(), listed.len() as f64);
        let mine = listed
            .iter()
            .any(|l| l.id == t.id && l.status.member_state() == MemberState::InService);
        stats.insert("in_service".into(), if mine { 1.0 } else { 0.0 });
        Ok(stats)
    }

    /// The pools whose target group the listener forwards to (weight > 0).
    async fn live_pools(&self, _fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let forwarded = self.forward_weights().await?;
        let mut live: Vec<String> = self
            .pool_groups()
            .into_iter()
            .filter(|(_, arn)| forwarded.iter().any(|(a, w)| a == arn && *w > 0))
            .map(|(name, _)| name.to_string())
            .collect();
        live.sort();
        Ok(live)
    }

    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        let groups = self.pool_groups();
        if !groups.contains_key(pool) {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "no target group for pool {pool:?}: set lb.pools.{pool}.target_group_arn \
                     (pools with one: {})",
                    if groups.is_empty() {
                        "none".to_string()
                    } else {
                        groups.keys().copied().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        }
        if self.listener_arn.is_none() {
            // Refused before any call: nothing can switch without it.
            return self.set_target_group_weights(&[]).await;
        }
        self.wait_pool_healthy(pool, groups[pool]).await?;
        let mut weights: Vec<(String, u32)> = Vec::new();
        for (name, arn) in &groups {
            let w = if *name == pool { 100 } else { 0 };
            // Two pools may share a target group; the one switched to wins.
            match weights.iter_mut().find(|(a, _)| a == arn) {
                Some(existing) => existing.1 = existing.1.max(w),
                None => weights.push((arn.to_string(), w)),
            }
        }
        self.set_target_group_weights(&weights).await
    }

    fn describe_switch(&self, pool: &str) -> String {
        let listener = self
            .listener_arn
            .as_deref()
            .map(short_arn)
            .unwrap_or_else(|| "listener (lb.listener_arn not set)".into());
        let groups = self.pool_groups();
        let to = groups
            .get(pool)
            .map(|arn| short_arn(arn))
            .unwrap_or_else(|| format!("pool {pool} (no target group)"));
        let others: Vec<String> = groups
            .iter()
            .filter(|(name, arn)| **name != pool && Some(*arn) != groups.get(pool))
            .map(|(_, arn)| format!("{} 0%", short_arn(arn)))
            .collect();
        if others.is_empty() {
            format!("elbv2 {listener}: forward 100% to {to}")
        } else {
            format!(
                "elbv2 {listener}: forward 100% to {to} ({})",
                others.join(", ")
            )
        }
    }

    /// With host counts: the settle time after a first poll; without, one
    /// poll interval (the deregistration delay cannot be read offline).
    fn typical_drain(&self) -> Duration {
        match (self.inv.lb.drain_detect, &self.ssh) {
            (DrainDetect::Auto, Some(_)) => {
                self.inv.lb.drain_settle + FIRST_POLL.min(self.poll_interval())
            }
            _ => self.poll_interval(),
        }
    }
}

/// `tg/credit-radar-tg` for a target group, `listener/my-alb/f2f7dc8efc522ab2`
/// for a listener: what an operator recognises in a plan line.
fn short_arn(arn: &str) -> String {
    let resource = arn.splitn(6, ':').nth(5).unwrap_or(arn);
    let parts: Vec<&str> = resource.split('/').collect();
    match parts.as_slice() {
        ["targetgroup", name, ..] => format!("tg/{name}"),
        ["listener", _kind, lb, _lb_id, id] => format!("listener/{lb}/{id}"),
        _ => resource.to_string(),
    }
}
