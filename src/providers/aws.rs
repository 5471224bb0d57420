//! AWS ELBv2 (Application and Network Load Balancer) target groups as a
//! [`LoadBalancer`].
//!
//! Membership is RegisterTargets / DeregisterTargets by EC2 instance id and
//! port; every wait polls DescribeTargetHealth for the one target (the SDK's
//! waiters poll at a fixed 15 s and never fail early on `unhealthy`, so the
//! loops are ours). Traffic shifts between target groups (canary, blue/green)
//! go through the weights of the listener's forward action. Instances without
//! an `id` are found by private IP with EC2 DescribeInstances, and a whole
//! fleet can be discovered from the target group.
//!
//! Every AWS error is rendered with its code and message and names the target
//! group (or listener) ARN — the SDK's own Display says only "service error".
//!
//! Nothing here touches the network or the credential chain until the first
//! call: a dry run built from the same inventory stays offline.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_elasticloadbalancingv2 as elb;
use elb::config::http::HttpResponse;
use elb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use elb::operation::RequestId;
use elb::types::{
    Action, ActionTypeEnum, ForwardActionConfig, TargetDescription, TargetGroupTuple,
    TargetHealthDescription,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::valid_name;
use crate::config::{format_duration, Instance, Inventory, LbBackend};
use crate::primitives::{
    ActionError, ActionResult, DrainReport, ErrorKind, LbOp, LoadBalancer, MemberState, MemberStats,
};

/// ELBv2's own health checks run every 5-300 s (30 s by default): polling
/// faster than 5 s mostly re-reads the same answer.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// First poll delay; doubled up to the poll interval. A deregistered target
/// with no open connections is `unused` within a second or two.
const FIRST_POLL: Duration = Duration::from_secs(1);
/// ELBv2 accepts forward weights 0-999.
const MAX_TG_WEIGHT: u32 = 999;
/// DescribeInstances filters take at most 200 values; stay well below.
const FILTER_CHUNK: usize = 100;

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
}

struct Clients {
    elb: elb::Client,
    ec2: ec2::Client,
}

/// What DescribeTargetGroups says about the target group, read once.
struct GroupInfo {
    vpc_id: Option<String>,
    target_type: Option<String>,
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
        Backoff::new(FIRST_POLL, self.poll_interval())
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

    /// `lb.region`, else the region in the target group's ARN (the group only
    /// exists there, whatever the profile says), else the standard chain.
    fn region(&self) -> Option<String> {
        self.region
            .clone()
            .or_else(|| arn_region(&self.target_group_arn).map(str::to_string))
    }

    async fn clients(&self) -> &Clients {
        self.clients
            .get_or_init(|| async {
                let region = self.region().map(Region::new);
                let base = match &self.base {
                    Some(base) => base.clone(),
                    None => {
                        let mut loader = aws_config::defaults(BehaviorVersion::latest());
                        // A known region keeps the loader from asking instance metadata.
                        if let Some(region) = region.clone() {
                            loader = loader.region(region);
                        }
                        loader.load().await
                    }
                };
                let mut config = base
                    .into_builder()
                    // Standard mode retries throttling (and transient network
                    // errors) with jittered exponential backoff; spelled out so
                    // a change of SDK defaults cannot silently change it.
                    .retry_config(
                        RetryConfig::standard()
                            .with_max_attempts(5)
                            .with_initial_backoff(Duration::from_millis(500))
                            .with_max_backoff(Duration::from_secs(20)),
                    )
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(5))
                            .operation_attempt_timeout(Duration::from_secs(30))
                            .build(),
                    );
                if let Some(region) = region {
                    config = config.region(region);
                }
                if let Some(endpoint) = &self.endpoint {
                    config = config.endpoint_url(endpoint);
                }
                let config = config.build();
                Clients {
                    elb: elb::Client::new(&config),
                    ec2: ec2::Client::new(&config),
                }
            })
            .await
    }

    async fn group(&self) -> ActionResult<&GroupInfo> {
        self.group
            .get_or_try_init(|| async {
                let out = self
                    .clients()
                    .await
                    .elb
                    .describe_target_groups()
                    .target_group_arns(&self.target_group_arn)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error("DescribeTargetGroups", e))?;
                let tg = out.target_groups().first();
                Ok(GroupInfo {
                    vpc_id: tg.and_then(|t| t.vpc_id()).map(str::to_string),
                    target_type: tg
                        .and_then(|t| t.target_type())
                        .map(|t| t.as_str().to_string()),
                })
            })
            .await
    }

    fn sdk_error<E>(&self, op: &str, err: SdkError<E, HttpResponse>) -> ActionError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        sdk_error(op, "target group", &self.target_group_arn, err)
    }

    // ---- targets --------------------------------------------------------------

    /// The port ELBv2 forwards to for `inst`.
    fn port_of(&self, inst: &Instance) -> u16 {
        self.port.unwrap_or_else(|| self.inv.traffic_port(inst))
    }

    /// The instance id if it is known without asking AWS.
    fn known_id(&self, inst: &Instance) -> Option<String> {
        inst.id
            .clone()
            .or_else(|| self.ids.lock().unwrap().get(&inst.host).cloned())
    }

    /// What plans and logs call `inst`: its instance id, or its host until
    /// the id has been resolved.
    fn label(&self, inst: &Instance) -> String {
        self.known_id(inst).unwrap_or_else(|| inst.host.clone())
    }

    async fn target(&self, inst: &Instance) -> ActionResult<Target> {
        let id = match self.known_id(inst) {
            Some(id) => id,
            None => self
                .resolve_ids(std::slice::from_ref(inst))
                .await?
                .remove(0),
        };
        Ok(Target {
            name: inst.name.clone(),
            id,
            port: self.port_of(inst),
        })
    }

    /// Instance ids for `fleet`, in order, resolving those without `id` from
    /// their private IP with one DescribeInstances per hundred addresses.
    async fn resolve_ids(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let missing: Vec<&Instance> = fleet
            .iter()
            .filter(|i| self.known_id(i).is_none())
            .collect();
        if !missing.is_empty() {
            for inst in &missing {
                if inst.host.parse::<IpAddr>().is_err() {
                    return Err(ActionError::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "{} has no EC2 instance id and its host {:?} is not an IP address: \
                             set `id = \"i-…\"` under its [[instances]] for target group {}",
                            inst.name, inst.host, self.target_group_arn
                        ),
                    )
                    .host(inst.name.clone()));
                }
            }
            let mut ips: Vec<String> = missing.iter().map(|i| i.host.clone()).collect();
            ips.sort();
            ips.dedup();
            let by_ip = self.instances_by_ip(&ips).await?;
            let vpc = self.group().await?.vpc_id.clone();
            for inst in missing {
                let found = by_ip.get(&inst.host).map(Vec::as_slice).unwrap_or_default();
                let id = pick_one(&inst.host, found, vpc.as_deref(), &self.target_group_arn)
                    .map_err(|m| ActionError::new(ErrorKind::Lb, m).host(inst.name.clone()))?;
                debug!(instance = %inst.name, "{} is {id}", inst.host);
                self.ids.lock().unwrap().insert(inst.host.clone(), id);
            }
        }
        Ok(fleet
            .iter()
            .map(|i| self.known_id(i).expect("resolved above"))
            .collect())
    }

    /// Live (not terminated) instances in the target group's VPC with these
    /// private IPs, as IP → instance ids.
    async fn instances_by_ip(&self, ips: &[String]) -> ActionResult<HashMap<String, Vec<String>>> {
        let vpc = self.group().await?.vpc_id.clone();
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in ips.chunks(FILTER_CHUNK) {
            let mut filters = vec![
                filter("private-ip-address", chunk),
                // A terminated instance keeps its address in DescribeInstances
                // for a while; its old IP may already belong to another.
                filter(
                    "instance-state-name",
                    &["pending", "running", "stopping", "stopped"],
                ),
            ];
            // The same private IP is routinely reused across VPCs.
            if let Some(vpc) = &vpc {
                filters.push(filter("vpc-id", &[vpc]));
            }
            for i in self.describe_instances(filters, "by private IP").await? {
                if let (Some(ip), Some(id)) = (i.private_ip_address(), i.instance_id()) {
                    out.entry(ip.to_string()).or_default().push(id.to_string());
                }
            }
        }
        Ok(out)
    }

    async fn describe_instances(
        &self,
        filters: Vec<ec2::types::Filter>,
        what: &str,
    ) -> ActionResult<Vec<ec2::types::Instance>> {
        let ec2 = &self.clients().await.ec2;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = ec2
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| self.sdk_error(&format!("EC2 DescribeInstances ({what})"), e))?;
            for r in page.reservations() {
                out.extend(r.instances().iter().cloned());
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// DescribeTargetHealth for one target, or (`None`) every target the
    /// group lists: registered, initial, unhealthy and draining ones.
    async fn describe_health(&self, one: Option<&Target>) -> ActionResult<Vec<Listed>> {
        let out = self
            .clients()
            .await
            .elb
            .describe_target_health()
            .target_group_arn(&self.target_group_arn)
            .set_targets(one.map(|t| vec![t.description()]))
            .send()
            .await
            .map_err(|e| {
                let err = self.sdk_error("DescribeTargetHealth", e);
                match one {
                    Some(t) => err.host(t.name.clone()),
                    None => err,
                }
            })?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(Listed::from_sdk)
            .collect())
    }

    /// The health of one target; a target the group does not list is `Absent`.
    async fn health_of(&self, t: &Target) -> ActionResult<TargetStatus> {
        Ok(self
            .describe_health(Some(t))
            .await?
            .into_iter()
            .find(|l| l.id == t.id && l.port.is_none_or(|p| p == t.port))
            .map(|l| l.status)
            .unwrap_or_else(TargetStatus::absent))
    }

    /// The deregistration delay the target group is configured with, for the
    /// drain report. Only informative: a failure to read it is logged.
    async fn deregistration_delay(&self) -> Option<Duration> {
        let read = self
            .clients()
            .await
            .elb
            .describe_target_group_attributes()
            .target_group_arn(&self.target_group_arn)
            .send()
            .await;
        match read {
            Ok(out) => out
                .attributes()
                .iter()
                .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
                .and_then(|a| a.value())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
            Err(e) => {
                warn!(
                    "{}",
                    self.sdk_error("DescribeTargetGroupAttributes", e).message
                );
                None
            }
        }
    }

    // ---- weights and discovery ---------------------------------------------

    /// Sets the weights of the listener's forward action: each `(target group
    /// ARN, weight)` pair, 0-999; target groups not listed stop receiving
    /// traffic. Other actions of the listener (authentication, …) and the
    /// forward action's stickiness are kept as they are.
    pub async fn set_target_group_weights(&self, weights: &[(String, u32)]) -> ActionResult<()> {
        let Some(listener) = self.listener_arn.as_deref() else {
            return Err(ActionError::new(
                ErrorKind::Lb,
                "lb.listener_arn is not set: ELBv2 shifts traffic between target groups \
                 through the weights of a listener's forward action; add the listener's ARN",
            ));
        };
        if weights.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("no target groups to forward to on listener {listener}"),
            ));
        }
        if let Some((arn, w)) = weights.iter().find(|(_, w)| *w > MAX_TG_WEIGHT) {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("weight {w} for target group {arn}: ELBv2 weights are 0-{MAX_TG_WEIGHT}"),
            ));
        }
        let elb = &self.clients().await.elb;
        let described = elb
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeListeners", "listener", listener, e))?;
        let current = described
            .listeners()
            .first()
            .map(|l| l.default_actions().to_vec())
            .unwrap_or_default();
        let actions = with_forward_weights(&current, weights).map_err(|found| {
            ActionError::new(
                ErrorKind::Lb,
                format!(
                    "listener {listener} has no forward default action (its actions: {found}): \
                     rollscript shifts traffic only through the weights of a forward action"
                ),
            )
        })?;
        elb.modify_listener()
            .listener_arn(listener)
            .set_default_actions(Some(actions))
            .send()
            .await
            .map_err(|e| sdk_error("ModifyListener", "listener", listener, e))?;
        Ok(())
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

    /// The fleet the target group holds now: every target DescribeTargetHealth
    /// lists (draining ones too), with its private address from EC2. An
    /// instance is named after its `Name` tag when that tag is a valid
    /// inventory name and unique among them, else after its instance id; its
    /// `port` is set only when it differs from the inventory's traffic port.
    pub async fn discover(&self) -> ActionResult<Vec<Instance>> {
        let listed = self.describe_health(None).await?;
        let mut ports: BTreeMap<String, Option<u16>> = BTreeMap::new();
        for l in &listed {
            ports.entry(l.id.clone()).or_insert(l.port);
        }
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(kind) = self.group().await?.target_type.as_deref() {
            if kind != "instance" {
                return Err(ActionError::new(
                    ErrorKind::Lb,
                    format!(
                        "target group {} has target type {kind:?}: discovery reads EC2 instances \
                         (target type \"instance\")",
                        self.target_group_arn
                    ),
                ));
            }
        }
        let ids: Vec<String> = ports.keys().cloned().collect();
        let mut found: HashMap<String, ec2::types::Instance> = HashMap::new();
        for chunk in ids.chunks(FILTER_CHUNK) {
            for i in self
                .describe_instances(vec![filter("instance-id", chunk)], "discovery")
                .await?
            {
                if let Some(id) = i.instance_id() {
                    found.insert(id.to_string(), i);
                }
            }
        }
        let mut tag_names: HashMap<String, usize> = HashMap::new();
        for i in found.values() {
            if let Some(n) = name_tag(i).filter(|n| valid_name(n)) {
                *tag_names.entry(n.to_string()).or_default() += 1;
            }
        }
        let default_port = self.port.unwrap_or(self.inv.health.port);
        let mut fleet = Vec::new();
        for (id, port) in ports {
            let Some(i) = found.get(&id) else {
                return Err(ActionError::new(
                    ErrorKind::Lb,
                    format!(
                        "target group {} lists {id}, which EC2 DescribeInstances does not know",
                        self.target_group_arn
                    ),
                ));
            };
            let Some(ip) = i.private_ip_address() else {
                return Err(ActionError::new(
                    ErrorKind::Lb,
                    format!(
                        "{id} (in target group {}) has no private IP address (state: {})",
                        self.target_group_arn,
                        i.state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str())
                            .unwrap_or("unknown")
                    ),
                ));
            };
            let name = match name_tag(i) {
                Some(n) if valid_name(n) && tag_names.get(n) == Some(&1) => n.to_string(),
                _ => id.clone(),
            };
            let port = port.filter(|p| *p != default_port);
            self.ids.lock().unwrap().insert(ip.to_string(), id.clone());
            fleet.push(Instance {
                name,
                host: ip.to_string(),
                port,
                ssh_port: None,
                health_port: None,
                id: Some(id),
                pool: None,
                weight: None,
            });
        }
        fleet.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(fleet)
    }
}

#[async_trait]
impl LoadBalancer for ElbV2 {
    fn kind(&self) -> &'static str {
        "elbv2"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let tg = short_arn(&self.target_group_arn);
        let who = self.label(inst);
        match op {
            LbOp::Deregister => {
                format!("elbv2 {tg}: deregister {who} (port {})", self.port_of(inst))
            }
            LbOp::WaitDrained { timeout } => format!(
                "elbv2 {tg}: wait until {who} is unused (≤ {})",
                format_duration(timeout)
            ),
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
            .target_group_arn(&self.target_group_arn)
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
        let configured_delay = self.deregistration_delay().await;
        let source = LiveTarget {
            lb: self,
            target: &t,
        };
        let before = started.elapsed();
        let waited = before
            + wait_unused(
                &source,
                &self.subject(&t),
                timeout,
                self.poll(),
                configured_delay,
            )
            .await?;
        Ok(DrainReport {
            waited,
            connections_at_start: None,
            configured_delay,
        })
    }

    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        let t = self.target(inst).await?;
        self.clients()
            .await
            .elb
            .register_targets()
            .target_group_arn(&self.target_group_arn)
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
        wait_healthy(
            &source,
            &self.subject(&t),
            timeout,
            self.poll(),
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

    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        if fleet.is_empty() {
            return Ok(0);
        }
        let ids = self.resolve_ids(fleet).await?;
        let listed = self.describe_health(None).await?;
        Ok(fleet
            .iter()
            .zip(&ids)
            .filter(|(inst, id)| {
                let port = self.port_of(inst);
                listed.iter().any(|l| {
                    &l.id == *id
                        && l.port.is_none_or(|p| p == port)
                        && l.status.member_state() == MemberState::InService
                })
            })
            .count())
    }

    /// ELBv2 keeps no per-target traffic numbers outside CloudWatch; these are
    /// counts from DescribeTargetHealth: `in_service` (1 or 0 for `inst`) and
    /// `targets_healthy`, `targets_initial`, `targets_unhealthy`,
    /// `targets_draining`, `targets_total` for the whole target group.
    async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        let t = self.target(inst).await?;
        let listed = self.describe_health(None).await?;
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

    fn typical_drain(&self) -> Duration {
        self.poll_interval()
    }
}

impl ElbV2 {
    fn subject<'a>(&'a self, t: &'a Target) -> Subject<'a> {
        Subject {
            name: &t.name,
            id: &t.id,
            target_group: &self.target_group_arn,
        }
    }
}

/// One target of the target group.
#[derive(Debug, Clone)]
struct Target {
    /// Instance name in the inventory, for errors.
    name: String,
    id: String,
    port: u16,
}

impl Target {
    fn description(&self) -> TargetDescription {
        TargetDescription::builder()
            .id(&self.id)
            .port(i32::from(self.port))
            .build()
    }
}

/// One row of DescribeTargetHealth.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    port: Option<u16>,
    status: TargetStatus,
}

impl Listed {
    fn from_sdk(d: &TargetHealthDescription) -> Option<Self> {
        let target = d.target()?;
        let health = d.target_health();
        Some(Self {
            id: target.id()?.to_string(),
            port: target.port().and_then(|p| u16::try_from(p).ok()),
            status: TargetStatus {
                state: TgState::parse(
                    health
                        .and_then(|h| h.state())
                        .map(|s| s.as_str())
                        .unwrap_or(""),
                ),
                reason: health
                    .and_then(|h| h.reason())
                    .map(|r| r.as_str().to_string()),
                description: health.and_then(|h| h.description()).map(str::to_string),
            },
        })
    }
}

/// ELBv2's target states, plus `Absent` for a target it does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TgState {
    Healthy,
    Initial,
    Draining,
    Unhealthy,
    Unused,
    Unavailable,
    Absent,
    Other(String),
}

impl TgState {
    fn parse(s: &str) -> Self {
        match s {
            "healthy" => Self::Healthy,
            "initial" => Self::Initial,
            "draining" => Self::Draining,
            "unhealthy" => Self::Unhealthy,
            "unused" => Self::Unused,
            "unavailable" => Self::Unavailable,
            other => Self::Other(other.to_string()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Healthy => "healthy",
            Self::Initial => "initial",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
            Self::Unused => "unused",
            Self::Unavailable => "unavailable",
            Self::Absent => "not registered",
            Self::Other(s) => s,
        }
    }
}

/// A target's health: state, reason code and description, as ELBv2 gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetStatus {
    state: TgState,
    reason: Option<String>,
    description: Option<String>,
}

impl TargetStatus {
    fn absent() -> Self {
        Self {
            state: TgState::Absent,
            reason: None,
            description: None,
        }
    }

    fn member_state(&self) -> MemberState {
        if self.reason.as_deref() == Some("Target.NotRegistered") {
            return MemberState::OutOfService;
        }
        match self.state {
            TgState::Healthy => MemberState::InService,
            TgState::Initial => MemberState::Starting,
            TgState::Draining => MemberState::Draining,
            TgState::Unhealthy => MemberState::Unhealthy,
            TgState::Unused | TgState::Absent => MemberState::OutOfService,
            // With health checks disabled the LB routes to every target.
            TgState::Unavailable
                if self.reason.as_deref() == Some("Target.HealthCheckDisabled") =>
            {
                MemberState::InService
            }
            TgState::Unavailable | TgState::Other(_) => MemberState::Unknown,
        }
    }

    /// `unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [502])`.
    fn render(&self) -> String {
        let mut s = self.state.as_str().to_string();
        match (&self.reason, &self.description) {
            (Some(r), Some(d)) => s.push_str(&format!(" ({r}: {d})")),
            (Some(r), None) => s.push_str(&format!(" ({r})")),
            (None, Some(d)) => s.push_str(&format!(" ({d})")),
            (None, None) => {}
        }
        s
    }
}

// ---- the wait loops -------------------------------------------------------------

/// Where a wait reads a target's health from: ELBv2, or a scripted fake in tests.
#[async_trait]
trait HealthSource: Send + Sync {
    async fn read(&self) -> ActionResult<TargetStatus>;
}

struct LiveTarget<'a> {
    lb: &'a ElbV2,
    target: &'a Target,
}

#[async_trait]
impl HealthSource for LiveTarget<'_> {
    async fn read(&self) -> ActionResult<TargetStatus> {
        self.lb.health_of(self.target).await
    }
}

/// Who a wait is about, for its errors.
struct Subject<'a> {
    name: &'a str,
    id: &'a str,
    target_group: &'a str,
}

/// Poll delays: `first`, doubling up to `max`. Short first polls catch the
/// common fast transitions; the cap keeps a long wait from hammering the API.
#[derive(Debug, Clone)]
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first.min(max),
            max,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        Some(d)
    }
}

/// Sleeps the next poll delay, but never past `deadline`.
async fn pause(poll: &mut Backoff, now: Instant, deadline: Instant) {
    let delay = poll.next().unwrap_or(DEFAULT_POLL_INTERVAL);
    tokio::time::sleep_until((now + delay).min(deadline)).await;
}

/// Polls until the target is `unused` or no longer listed (drained), or
/// fails with `drain_timeout` at `timeout`. ELBv2 ends `draining` when the
/// target's connections have closed or the deregistration delay has passed,
/// whichever comes first, so this is usually sooner than the fixed delay.
async fn wait_unused(
    src: &dyn HealthSource,
    who: &Subject<'_>,
    timeout: Duration,
    mut poll: Backoff,
    configured_delay: Option<Duration>,
) -> ActionResult<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last: Option<TgState> = None;
    loop {
        let status = src.read().await?;
        let now = Instant::now();
        if last.as_ref() != Some(&status.state) {
            debug!(instance = %who.name, "{} {}", who.id, status.render());
            last = Some(status.state.clone());
        }
        // `unused` or not listed (OutOfService): ELBv2 sends it nothing more.
        if status.member_state() == MemberState::OutOfService {
            return Ok(now - start);
        }
        if now >= deadline {
            let delay = configured_delay
                .map(|d| {
                    format!(
                        "; the target group's deregistration_delay is {}",
                        format_duration(d)
                    )
                })
                .unwrap_or_default();
            return Err(ActionError::new(
                ErrorKind::DrainTimeout,
                format!(
                    "{} still {} in target group {} after {} (lb.drain_timeout{delay})",
                    who.id,
                    status.render(),
                    who.target_group,
                    format_duration(timeout)
                ),
            )
            .host(who.name)
            .detail("state", status.state.as_str()));
        }
        pause(&mut poll, now, deadline).await;
    }
}

/// Polls until the target is `healthy`. Fails early (`health_failed`) when it
/// stays `unhealthy` for longer than `unhealthy_grace`, or is `unused` for a
/// reason waiting cannot fix (instance stopped, AZ not enabled); fails with
/// `timeout` at `timeout`.
async fn wait_healthy(
    src: &dyn HealthSource,
    who: &Subject<'_>,
    timeout: Duration,
    mut poll: Backoff,
    unhealthy_grace: Duration,
) -> ActionResult<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut unhealthy_since: Option<Instant> = None;
    let mut last: Option<TgState> = None;
    loop {
        let status = src.read().await?;
        let now = Instant::now();
        if last.as_ref() != Some(&status.state) {
            debug!(instance = %who.name, "{} {}", who.id, status.render());
            last = Some(status.state.clone());
        }
        let failed = |why: String| {
            let mut e = ActionError::new(
                ErrorKind::HealthFailed,
                format!(
                    "{} is {} in target group {}{why}",
                    who.id,
                    status.render(),
                    who.target_group
                ),
            )
            .host(who.name)
            .detail("state", status.state.as_str());
            if let Some(r) = &status.reason {
                e = e.detail("reason", r);
            }
            e
        };
        match status.state {
            _ if status.member_state() == MemberState::InService => return Ok(now - start),
            TgState::Unhealthy => {
                let since = *unhealthy_since.get_or_insert(now);
                if now - since >= unhealthy_grace {
                    return Err(failed(format!(
                        " (unhealthy for {}; rollscript waits health.retries × health.interval = {})",
                        format_duration(now - since),
                        format_duration(unhealthy_grace)
                    )));
                }
            }
            TgState::Unused
                if matches!(
                    status.reason.as_deref(),
                    Some("Target.InvalidState" | "Target.IpUnusable" | "Target.NotInUse")
                ) =>
            {
                return Err(failed(String::new()));
            }
            _ => unhealthy_since = None,
        }
        if now >= deadline {
            return Err(ActionError::new(
                ErrorKind::Timeout,
                format!(
                    "{} not healthy in target group {} after {} (lb.register_timeout); last state: {}",
                    who.id,
                    who.target_group,
                    format_duration(timeout),
                    status.render()
                ),
            )
            .host(who.name)
            .detail("state", status.state.as_str()));
        }
        pause(&mut poll, now, deadline).await;
    }
}

// ---- helpers ------------------------------------------------------------------

/// `DescribeTargetHealth failed for target group arn:…: TargetGroupNotFound: One
/// or more target groups not found` — the code and message AWS sent, or the
/// whole error chain when no response came (network, credentials).
fn sdk_error<E>(op: &str, what: &str, arn: &str, err: SdkError<E, HttpResponse>) -> ActionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let mut e = ActionError::new(
        ErrorKind::Lb,
        format!("{op} failed for {what} {arn}: {text}"),
    );
    if let Some(code) = err.code() {
        e = e.detail("aws_error_code", code);
    }
    if let Some(id) = err.request_id() {
        e = e.detail("aws_request_id", id);
    }
    e
}

/// The one instance id EC2 found for a private IP, or a message saying what
/// to do about none or several.
fn pick_one(host: &str, found: &[String], vpc: Option<&str>, tg: &str) -> Result<String, String> {
    let in_vpc = vpc.map(|v| format!(" in {v}")).unwrap_or_default();
    match found {
        [id] => Ok(id.clone()),
        [] => Err(format!(
            "no EC2 instance has private IP {host}{in_vpc} (the VPC of target group {tg}): \
             check its host, or set `id = \"i-…\"` under its [[instances]]"
        )),
        several => Err(format!(
            "several EC2 instances have private IP {host}{in_vpc} ({}): \
             set `id = \"i-…\"` under its [[instances]] to pick the one for target group {tg}",
            several.join(", ")
        )),
    }
}

fn filter(name: &str, values: &[impl AsRef<str>]) -> ec2::types::Filter {
    ec2::types::Filter::builder()
        .name(name)
        .set_values(Some(
            values.iter().map(|v| v.as_ref().to_string()).collect(),
        ))
        .build()
}

fn name_tag(i: &ec2::types::Instance) -> Option<&str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value())
}

/// The region field of an ARN (`arn:aws:elasticloadbalancing:eu-west-1:…`).
fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
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

/// `current` default actions with the forward action's target groups
/// replaced by `weights`; Err(the action types found) when there is none.
fn with_forward_weights(
    current: &[Action],
    weights: &[(String, u32)],
) -> Result<Vec<Action>, String> {
    let tuples: Vec<TargetGroupTuple> = weights
        .iter()
        .map(|(arn, w)| {
            TargetGroupTuple::builder()
                .target_group_arn(arn)
                .weight(*w as i32)
                .build()
        })
        .collect();
    let forward = |a: &Action| a.r#type() == Some(&ActionTypeEnum::Forward);
    if current.is_empty() {
        return Ok(vec![Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .forward_config(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(tuples))
                    .build(),
            )
            .build()]);
    }
    if !current.iter().any(forward) {
        return Err(current
            .iter()
            .map(|a| a.r#type().map(|t| t.as_str()).unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", "));
    }
    Ok(current
        .iter()
        .map(|a| {
            if !forward(a) {
                return a.clone();
            }
            let mut a = a.clone();
            // A plain TargetGroupArn and a ForwardConfig with several groups
            // cannot be combined: the weights live in the ForwardConfig only.
            a.target_group_arn = None;
            let stickiness = a
                .forward_config
                .as_ref()
                .and_then(|f| f.target_group_stickiness_config.clone());
            a.forward_config = Some(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(tuples.clone()))
                    .set_target_group_stickiness_config(stickiness)
                    .build(),
            );
            a
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::Path;

    use super::*;

    const TG: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/credit-radar-tg/73e2d6bc24d8a067";
    const LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/credit-radar/50dc6c495c0c9188/f2f7dc8efc522ab2";
    const GREEN: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/green-tg/1111111111111111";

    fn inventory(extra_lb: &str) -> Arc<Inventory> {
        let text = format!(
            r#"
[app]
name = "credit_radar"
deploy = "./deploy.sh"
[health]
port = 4000
interval = "1s"
retries = 3
[lb]
kind = "aws"
target_group_arn = "{TG}"
drain_timeout = "120s"
{extra_lb}
[lb.pools.blue]
target_group_arn = "{TG}"
[lb.pools.green]
target_group_arn = "{GREEN}"
[[instances]]
name = "web-1"
host = "10.0.1.10"
id = "i-0abc"
pool = "blue"
[[instances]]
name = "web-2"
host = "10.0.1.11"
pool = "green"
"#
        );
        Arc::new(Inventory::parse(Path::new("rollscript.toml"), &text).unwrap())
    }

    /// A target whose health follows a script, one state per read; the last
    /// state repeats.
    struct Scripted(Mutex<VecDeque<TargetStatus>>);

    impl Scripted {
        fn new(states: &[(&str, Option<&str>)]) -> Self {
            Self(Mutex::new(
                states
                    .iter()
                    .map(|(s, r)| TargetStatus {
                        state: if *s == "absent" {
                            TgState::Absent
                        } else {
                            TgState::parse(s)
                        },
                        reason: r.map(str::to_string),
                        description: r.map(|_| "described by ELBv2".to_string()),
                    })
                    .collect(),
            ))
        }

        fn reads_left(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    #[async_trait]
    impl HealthSource for Scripted {
        async fn read(&self) -> ActionResult<TargetStatus> {
            let mut q = self.0.lock().unwrap();
            Ok(if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().unwrap().clone()
            })
        }
    }

    const WHO: Subject<'static> = Subject {
        name: "web-1",
        id: "i-0abc",
        target_group: TG,
    };

    // These loops run on the real clock with millisecond polls: every outcome
    // is decided by the scripted states (the timeouts are far away) or by a
    // target that never changes (the timeout is certain), never by timing.
    // With tokio's `test-util` feature they could pause the clock instead.
    fn fast() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(2))
    }

    const FAR: Duration = Duration::from_secs(60);

    #[test]
    fn polls_start_short_and_back_off_to_the_interval() {
        let delays: Vec<u64> = Backoff::new(FIRST_POLL, DEFAULT_POLL_INTERVAL)
            .take(6)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5, 5]);
        let sub_second: Vec<u128> = Backoff::new(FIRST_POLL, Duration::from_millis(200))
            .take(2)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(sub_second, [200, 200]);
    }

    #[tokio::test]
    async fn drain_ends_when_the_target_is_unused() {
        let src = Scripted::new(&[
            ("healthy", None),
            ("draining", Some("Target.DeregistrationInProgress")),
            ("draining", Some("Target.DeregistrationInProgress")),
            ("unused", Some("Target.NotRegistered")),
        ]);
        wait_unused(&src, &WHO, FAR, fast(), None).await.unwrap();
        assert_eq!(src.reads_left(), 1);
    }

    #[tokio::test]
    async fn drain_ends_when_the_target_is_no_longer_listed() {
        let src = Scripted::new(&[("draining", None), ("absent", None)]);
        wait_unused(&src, &WHO, FAR, fast(), None).await.unwrap();
    }

    #[tokio::test]
    async fn a_drain_past_its_timeout_names_the_state_and_the_configured_delay() {
        let src = Scripted::new(&[("draining", Some("Target.DeregistrationInProgress"))]);
        let err = wait_unused(
            &src,
            &WHO,
            Duration::from_millis(20),
            fast(),
            Some(Duration::from_secs(300)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::DrainTimeout);
        assert_eq!(err.host.as_deref(), Some("web-1"));
        assert_eq!(
            err.message,
            format!(
                "i-0abc still draining (Target.DeregistrationInProgress: described by ELBv2) in target group {TG} \
                 after 20ms (lb.drain_timeout; the target group's deregistration_delay is 300s)"
            )
        );
    }

    #[tokio::test]
    async fn in_service_after_initial_checks_pass() {
        let src = Scripted::new(&[
            ("unused", Some("Target.NotRegistered")),
            ("initial", Some("Elb.RegistrationInProgress")),
            ("initial", Some("Elb.InitialHealthChecking")),
            ("healthy", None),
        ]);
        wait_healthy(&src, &WHO, FAR, fast(), FAR).await.unwrap();
        assert_eq!(src.reads_left(), 1);
    }

    #[tokio::test]
    async fn a_target_that_stays_unhealthy_fails_early_with_the_elbv2_reason() {
        let src = Scripted::new(&[
            ("initial", Some("Elb.InitialHealthChecking")),
            ("unhealthy", Some("Target.ResponseCodeMismatch")),
        ]);
        let err = wait_healthy(&src, &WHO, FAR, fast(), Duration::from_millis(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::HealthFailed);
        assert_eq!(err.host.as_deref(), Some("web-1"));
        assert!(
            err.message.starts_with(&format!(
                "i-0abc is unhealthy (Target.ResponseCodeMismatch: described by ELBv2) in target group {TG} (unhealthy for "
            )),
            "{}",
            err.message
        );
        assert!(
            err.message
                .ends_with("; rollscript waits health.retries × health.interval = 5ms)"),
            "{}",
            err.message
        );
        assert!(err
            .details
            .contains(&("reason".into(), "Target.ResponseCodeMismatch".into())));
    }

    #[tokio::test]
    async fn a_target_that_recovers_within_the_grace_is_in_service() {
        let src = Scripted::new(&[
            ("unhealthy", Some("Target.Timeout")),
            ("unhealthy", Some("Target.Timeout")),
            ("initial", None),
            ("healthy", None),
        ]);
        wait_healthy(&src, &WHO, FAR, fast(), FAR).await.unwrap();
    }

    #[tokio::test]
    async fn unhealthy_with_no_grace_fails_at_the_first_sight() {
        let src = Scripted::new(&[
            ("unhealthy", Some("Target.FailedHealthChecks")),
            ("healthy", None),
        ]);
        let err = wait_healthy(&src, &WHO, FAR, fast(), Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::HealthFailed);
        assert_eq!(src.reads_left(), 1);
    }

    #[tokio::test]
    async fn a_stopped_instance_fails_at_once_instead_of_waiting_for_the_timeout() {
        let src = Scripted::new(&[("unused", Some("Target.InvalidState")), ("healthy", None)]);
        let err = wait_healthy(&src, &WHO, FAR, fast(), FAR)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::HealthFailed);
        assert_eq!(
            err.message,
            format!(
                "i-0abc is unused (Target.InvalidState: described by ELBv2) in target group {TG}"
            )
        );
    }

    #[tokio::test]
    async fn a_target_still_initial_at_the_timeout_reports_its_last_state() {
        let src = Scripted::new(&[("initial", Some("Elb.InitialHealthChecking"))]);
        let err = wait_healthy(&src, &WHO, Duration::from_millis(20), fast(), FAR)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert_eq!(
            err.message,
            format!(
                "i-0abc not healthy in target group {TG} after 20ms (lb.register_timeout); \
                 last state: initial (Elb.InitialHealthChecking: described by ELBv2)"
            )
        );
    }

    #[tokio::test]
    async fn health_checks_disabled_counts_as_in_service() {
        let src = Scripted::new(&[("unavailable", Some("Target.HealthCheckDisabled"))]);
        wait_healthy(&src, &WHO, FAR, fast(), FAR).await.unwrap();
    }

    #[test]
    fn target_states_map_to_member_states() {
        let s = |state: &str, reason: Option<&str>| {
            TargetStatus {
                state: TgState::parse(state),
                reason: reason.map(str::to_string),
                description: None,
            }
            .member_state()
        };
        assert_eq!(s("healthy", None), MemberState::InService);
        assert_eq!(s("initial", None), MemberState::Starting);
        assert_eq!(s("draining", None), MemberState::Draining);
        assert_eq!(s("unhealthy", None), MemberState::Unhealthy);
        assert_eq!(s("unused", None), MemberState::OutOfService);
        assert_eq!(
            s("unavailable", Some("Target.NotRegistered")),
            MemberState::OutOfService
        );
        assert_eq!(
            s("unavailable", Some("Target.HealthCheckDisabled")),
            MemberState::InService
        );
        assert_eq!(s("unavailable", None), MemberState::Unknown);
        assert_eq!(
            TargetStatus::absent().member_state(),
            MemberState::OutOfService
        );
    }

    #[test]
    fn plan_lines_name_the_target_group_the_instance_id_and_the_port() {
        let inv = inventory("");
        let lb = ElbV2::new(inv.clone());
        let web1 = inv.instance("web-1").unwrap();
        let timeout = Duration::from_secs(120);
        assert_eq!(
            lb.describe(LbOp::Deregister, web1),
            "elbv2 tg/credit-radar-tg: deregister i-0abc (port 4000)"
        );
        assert_eq!(
            lb.describe(LbOp::WaitDrained { timeout }, web1),
            "elbv2 tg/credit-radar-tg: wait until i-0abc is unused (≤ 120s)"
        );
        assert_eq!(
            lb.describe(LbOp::Register, web1),
            "elbv2 tg/credit-radar-tg: register i-0abc (port 4000)"
        );
        assert_eq!(
            lb.describe(LbOp::WaitInService { timeout }, web1),
            "elbv2 tg/credit-radar-tg: wait until i-0abc is healthy (≤ 120s)"
        );
        // No id yet: the host stands in until EC2 resolves it.
        let web2 = inv.instance("web-2").unwrap();
        assert_eq!(
            lb.describe(LbOp::Register, web2),
            "elbv2 tg/credit-radar-tg: register 10.0.1.11 (port 4000)"
        );
        lb.ids
            .lock()
            .unwrap()
            .insert("10.0.1.11".into(), "i-0def".into());
        assert_eq!(
            lb.describe(LbOp::Deregister, web2),
            "elbv2 tg/credit-radar-tg: deregister i-0def (port 4000)"
        );
    }

    #[test]
    fn lb_port_overrides_the_traffic_port_in_plans() {
        let inv = inventory("port = 8080");
        let lb = ElbV2::new(inv.clone());
        assert_eq!(
            lb.describe(LbOp::Register, inv.instance("web-1").unwrap()),
            "elbv2 tg/credit-radar-tg: register i-0abc (port 8080)"
        );
    }

    #[test]
    fn switch_plan_names_the_listener_and_both_target_groups() {
        let lb = ElbV2::new(inventory(&format!("listener_arn = \"{LISTENER}\"")));
        assert_eq!(
            lb.describe_switch("green"),
            "elbv2 listener/credit-radar/f2f7dc8efc522ab2: forward 100% to tg/green-tg (tg/credit-radar-tg 0%)"
        );
    }

    #[tokio::test]
    async fn per_instance_weights_are_refused_with_a_pointer_to_pools() {
        let inv = inventory("");
        let lb = ElbV2::new(inv.clone());
        let err = lb
            .set_weight(inv.instance("web-1").unwrap(), 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Lb);
        assert_eq!(err.host.as_deref(), Some("web-1"));
        assert!(
            err.message.contains("ELBv2 has no per-target weights"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("lb.pools.<name>.target_group_arn"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn weights_without_a_listener_say_which_key_is_missing() {
        let lb = ElbV2::new(inventory(""));
        let err = lb.switch_pool("green").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Lb);
        assert!(
            err.message.starts_with("lb.listener_arn is not set"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn switching_to_an_unknown_pool_lists_the_pools() {
        let lb = ElbV2::new(inventory(&format!("listener_arn = \"{LISTENER}\"")));
        let err = lb.switch_pool("purple").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            err.message,
            "no target group for pool \"purple\": set lb.pools.purple.target_group_arn (pools with one: blue, green)"
        );
    }

    #[test]
    fn forward_weights_replace_the_forward_action_and_keep_the_others() {
        let auth = Action::builder()
            .r#type(ActionTypeEnum::AuthenticateOidc)
            .order(1)
            .build();
        let fwd = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(TG)
            .order(2)
            .build();
        let out = with_forward_weights(
            &[auth.clone(), fwd],
            &[(TG.to_string(), 90), (GREEN.to_string(), 10)],
        )
        .unwrap();
        assert_eq!(out[0], auth);
        assert_eq!(out[1].order(), Some(2));
        assert_eq!(out[1].target_group_arn(), None);
        let groups: Vec<(&str, i32)> = out[1]
            .forward_config()
            .unwrap()
            .target_groups()
            .iter()
            .map(|t| (t.target_group_arn().unwrap(), t.weight().unwrap()))
            .collect();
        assert_eq!(groups, [(TG, 90), (GREEN, 10)]);

        let redirect = Action::builder().r#type(ActionTypeEnum::Redirect).build();
        assert_eq!(
            with_forward_weights(&[redirect], &[(TG.to_string(), 100)]).unwrap_err(),
            "redirect"
        );
    }

    #[test]
    fn arns_shorten_to_what_the_console_shows() {
        assert_eq!(short_arn(TG), "tg/credit-radar-tg");
        assert_eq!(
            short_arn(LISTENER),
            "listener/credit-radar/f2f7dc8efc522ab2"
        );
        assert_eq!(arn_region(TG), Some("eu-west-1"));
        assert_eq!(arn_region("arn:aws:elasticloadbalancing::1:x"), None);
    }

    #[test]
    fn an_ip_must_match_exactly_one_instance() {
        let ip = "10.0.1.11";
        assert_eq!(
            pick_one(ip, &["i-0def".into()], Some("vpc-1"), TG).unwrap(),
            "i-0def"
        );
        assert_eq!(
            pick_one(ip, &[], Some("vpc-1"), TG).unwrap_err(),
            format!(
                "no EC2 instance has private IP 10.0.1.11 in vpc-1 (the VPC of target group {TG}): \
                 check its host, or set `id = \"i-…\"` under its [[instances]]"
            )
        );
        // Not reproducible in moto, which refuses a second instance on a used IP.
        assert_eq!(
            pick_one(ip, &["i-1".into(), "i-2".into()], Some("vpc-1"), TG).unwrap_err(),
            format!(
                "several EC2 instances have private IP 10.0.1.11 in vpc-1 (i-1, i-2): \
                 set `id = \"i-…\"` under its [[instances]] to pick the one for target group {TG}"
            )
        );
    }

    #[test]
    fn constructing_the_provider_touches_no_network() {
        // The clients are built on first use only: a dry run stays offline.
        let lb = ElbV2::new(inventory(""));
        assert!(lb.clients.get().is_none());
        assert_eq!(lb.region().as_deref(), Some("eu-west-1"));
    }
}
