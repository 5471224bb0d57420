//! The SDK clients (built on first use, with retries and timeouts spelled
//! out), what the target group says about itself, the target an instance is
//! (its EC2 id given, or found by private IP), and discovery of the fleet a
//! target group holds.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2 as ec2;
use aws_sdk_elasticloadbalancingv2 as elb;
use elb::types::TargetDescription;
use tracing::debug;

use super::ElbV2;
use crate::config::{valid_name, Instance};
use crate::primitives::{ActionError, ActionResult, ErrorKind};

/// DescribeInstances filters take at most 200 values; stay well below.
const FILTER_CHUNK: usize = 100;

pub(super) struct Clients {
    pub(super) elb: elb::Client,
    pub(super) ec2: ec2::Client,
}

/// What DescribeTargetGroups says about the target group, read once.
pub(super) struct GroupInfo {
    pub(super) vpc_id: Option<String>,
    pub(super) target_type: Option<String>,
}

impl ElbV2 {
    /// `lb.region`, else the region in the target group's ARN (the group only
    /// exists there, whatever the profile says), else the standard chain.
    pub(super) fn region(&self) -> Option<String> {
        self.region
            .clone()
            .or_else(|| arn_region(&self.target_group_arn).map(str::to_string))
    }

    pub(super) async fn clients(&self) -> &Clients {
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

    pub(super) async fn group(&self) -> ActionResult<&GroupInfo> {
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

    /// The port ELBv2 forwards to for `inst`.
    pub(super) fn port_of(&self, inst: &Instance) -> u16 {
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
    pub(super) fn label(&self, inst: &Instance) -> String {
        self.known_id(inst).unwrap_or_else(|| inst.host.clone())
    }

    pub(super) async fn target(&self, inst: &Instance) -> ActionResult<Target> {
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
            group: self.group_of(inst).to_string(),
        })
    }

    /// Instance ids for `fleet`, in order, resolving those without `id` from
    /// their private IP with one DescribeInstances per hundred addresses.
    pub(super) async fn resolve_ids(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
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

    pub(super) async fn describe_instances(
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

    /// The fleet the target group holds now: every target DescribeTargetHealth
    /// lists (draining ones too), with its private address from EC2. An
    /// instance is named after its `Name` tag when that tag is a valid
    /// inventory name and unique among them, else after its instance id; its
    /// `port` is set only when it differs from the inventory's traffic port.
    pub async fn discover(&self) -> ActionResult<Vec<Instance>> {
        let listed = self.describe_health(&self.target_group_arn, None).await?;
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

/// One target of the target group.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Instance name in the inventory, for errors.
    pub(super) name: String,
    pub(super) id: String,
    pub(super) port: u16,
    /// The target group it belongs to: its pool's, else `lb.target_group_arn`.
    pub(super) group: String,
}

impl Target {
    pub(super) fn description(&self) -> TargetDescription {
        TargetDescription::builder()
            .id(&self.id)
            .port(i32::from(self.port))
            .build()
    }
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
pub(super) fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::aws::tests::TG;

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
}
