//! moto as an AWS account for the ELBv2 tests: a VPC with two subnets, a
//! target group behind an ALB listener, EC2 instances with chosen private
//! IPs, forced target health, and the inventory and CLI environment that
//! point rollscript at it. Every address stored in the emulator is a 127.x
//! value that nothing dials; the only AWS endpoint is moto on 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_elasticloadbalancingv2 as elb;
use elb::config::Credentials;
use elb::types::{ActionTypeEnum, Tag, TargetDescription, TargetGroupAttribute};
use rollscript::config::Inventory;
use rollscript::providers::aws::ElbV2;

use super::moto::Moto;
use super::rollscript;

pub const REGION: &str = "us-east-1";

/// The account to build.
#[derive(Debug, Clone)]
pub struct CloudSpec {
    /// The VPC is `{net}.0.0/16`, its subnets `{net}.1.0/24` and `{net}.2.0/24`.
    pub net: &'static str,
    pub target_group: &'static str,
    pub alb: &'static str,
    /// The target group's port.
    pub port: u16,
    /// `deregistration_delay.timeout_seconds`: how long moto reports a
    /// deregistered target `draining`.
    pub deregistration_delay: u64,
}

impl Default for CloudSpec {
    fn default() -> Self {
        Self {
            net: "127.10",
            target_group: "credit-radar-tg",
            alb: "credit-radar",
            port: 4000,
            // Short, so the emulated drain ends quickly; long enough that
            // the state right after a deregister is certainly `draining`.
            deregistration_delay: 3,
        }
    }
}

/// moto with a VPC, two subnets, a target group behind an ALB listener.
pub struct Cloud {
    pub moto: Moto,
    pub spec: CloudSpec,
    pub sdk: SdkConfig,
    pub ec2: ec2::Client,
    pub elb: elb::Client,
    pub vpc: String,
    /// The first subnet (`{net}.1.0/24`).
    pub subnet: String,
    pub tg: String,
    pub listener: String,
}

impl Cloud {
    /// The default account: 127.10.0.0/16, target group `credit-radar-tg` on port 4000.
    pub async fn start() -> Cloud {
        Self::start_with(CloudSpec::default()).await
    }

    pub async fn start_with(spec: CloudSpec) -> Cloud {
        let moto = Moto::start();
        // Explicit region and credentials: nothing reads a profile or probes
        // instance metadata.
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "rollscript-tests",
            ))
            .endpoint_url(moto.endpoint())
            .load()
            .await;
        let ec2 = ec2::Client::new(&sdk);
        let elb = elb::Client::new(&sdk);
        let vpc = ec2
            .create_vpc()
            .cidr_block(format!("{}.0.0/16", spec.net))
            .send()
            .await
            .unwrap()
            .vpc()
            .unwrap()
            .vpc_id()
            .unwrap()
            .to_string();
        let mut subnets = Vec::new();
        for (third, az) in [(1, "us-east-1a"), (2, "us-east-1b")] {
            let s = ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(format!("{}.{third}.0/24", spec.net))
                .availability_zone(az)
                .send()
                .await
                .unwrap();
            subnets.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
        }
        let mut cloud = Cloud {
            moto,
            spec,
            sdk,
            ec2,
            elb,
            vpc,
            subnet: subnets[0].clone(),
            tg: String::new(),
            listener: String::new(),
        };
        cloud.tg = cloud.target_group(cloud.spec.target_group).await;
        let alb = cloud
            .elb
            .create_load_balancer()
            .name(cloud.spec.alb)
            .set_subnets(Some(subnets))
            .send()
            .await
            .unwrap()
            .load_balancers()[0]
            .load_balancer_arn()
            .unwrap()
            .to_string();
        cloud.listener = cloud
            .elb
            .create_listener()
            .load_balancer_arn(alb)
            .protocol(elb::types::ProtocolEnum::Http)
            .port(80)
            .default_actions(
                elb::types::Action::builder()
                    .r#type(ActionTypeEnum::Forward)
                    .target_group_arn(&cloud.tg)
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .listeners()[0]
            .listener_arn()
            .unwrap()
            .to_string();
        cloud
    }

    /// An instance-type target group on the spec's port, health-checked on
    /// `/health`, with the spec's deregistration delay.
    pub async fn target_group(&self, name: &str) -> String {
        let arn = self
            .elb
            .create_target_group()
            .name(name)
            .protocol(elb::types::ProtocolEnum::Http)
            .port(i32::from(self.spec.port))
            .vpc_id(&self.vpc)
            .target_type(elb::types::TargetTypeEnum::Instance)
            .health_check_path("/health")
            // Checks every 7 s, healthy after 3: a registered target is
            // expected healthy 21 s later (the waits poll around then).
            .health_check_interval_seconds(7)
            .healthy_threshold_count(3)
            .send()
            .await
            .unwrap()
            .target_groups()[0]
            .target_group_arn()
            .unwrap()
            .to_string();
        self.elb
            .modify_target_group_attributes()
            .target_group_arn(&arn)
            .attributes(
                TargetGroupAttribute::builder()
                    .key("deregistration_delay.timeout_seconds")
                    .value(self.spec.deregistration_delay.to_string())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        arn
    }

    /// A running EC2 instance with this private IP (and `Name` tag); its id.
    pub async fn instance(&self, subnet: &str, ip: &str, name: Option<&str>) -> String {
        let mut run = self
            .ec2
            .run_instances()
            .image_id("ami-12345678")
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .private_ip_address(ip);
        if let Some(name) = name {
            run = run.tag_specifications(
                ec2::types::TagSpecification::builder()
                    .resource_type(ec2::types::ResourceType::Instance)
                    .tags(ec2::types::Tag::builder().key("Name").value(name).build())
                    .build(),
            );
        }
        let out = run.send().await.unwrap();
        let i = &out.instances()[0];
        assert_eq!(i.private_ip_address(), Some(ip), "moto kept the private IP");
        i.instance_id().unwrap().to_string()
    }

    /// What DescribeTargetHealth lists for the target group: (id, port, state), sorted.
    pub async fn targets(&self) -> Vec<(String, i32, String)> {
        self.targets_of(&self.tg).await
    }

    /// What DescribeTargetHealth lists for target group `tg`: (id, port, state), sorted.
    pub async fn targets_of(&self, tg: &str) -> Vec<(String, i32, String)> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(tg)
            .send()
            .await
            .unwrap();
        let mut rows: Vec<(String, i32, String)> = out
            .target_health_descriptions()
            .iter()
            .map(|d| {
                let t = d.target().unwrap();
                (
                    t.id().unwrap().to_string(),
                    t.port().unwrap(),
                    d.target_health()
                        .and_then(|h| h.state())
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// Registers `ids` in the target group on its port and waits until
    /// moto reports each `healthy` (it says `initial` for a second first).
    pub async fn register_healthy(&self, ids: &[String]) {
        self.register_healthy_in(&self.tg, ids).await
    }

    /// [`Self::register_healthy`] in target group `tg`.
    pub async fn register_healthy_in(&self, tg: &str, ids: &[String]) {
        let mut register = self.elb.register_targets().target_group_arn(tg);
        for id in ids {
            register = register.targets(
                TargetDescription::builder()
                    .id(id)
                    .port(i32::from(self.spec.port))
                    .build(),
            );
        }
        register.send().await.unwrap();
        let mut want: Vec<(String, i32, String)> = ids
            .iter()
            .map(|id| (id.clone(), i32::from(self.spec.port), "healthy".to_string()))
            .collect();
        want.sort();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let targets = self.targets_of(tg).await;
            if want.iter().all(|t| targets.contains(t)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the targets never became healthy in moto: {targets:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Forces what the emulator reports for `id` once `initial` is over.
    pub async fn force_health(&self, id: &str, state: &str, reason: &str, description: &str) {
        self.elb
            .add_tags()
            .resource_arns(&self.tg)
            .tags(tag(&format!("rollscript:health:{id}"), state))
            .tags(tag(&format!("rollscript:reason:{id}"), reason))
            .tags(tag(&format!("rollscript:description:{id}"), description))
            .send()
            .await
            .unwrap();
    }

    pub async fn unforce_health(&self, id: &str) {
        self.elb
            .remove_tags()
            .resource_arns(&self.tg)
            .tag_keys(format!("rollscript:health:{id}"))
            .tag_keys(format!("rollscript:reason:{id}"))
            .tag_keys(format!("rollscript:description:{id}"))
            .send()
            .await
            .unwrap();
    }

    /// The inventory text for this cloud: `lb` extras and `[[instances]]`.
    pub fn inventory_text(&self, lb_extra: &str, instances: &str) -> String {
        format!(
            r#"[app]
name = "credit_radar"
deploy = "true"

[health]
port = 4000
interval = "1s"
retries = 2

[lb]
kind = "aws"
target_group_arn = "{tg}"
listener_arn = "{listener}"
endpoint = "{endpoint}"
region = "{REGION}"
poll_interval = "100ms"
drain_timeout = "30s"
register_timeout = "30s"
min_in_service = 1
{lb_extra}

{instances}"#,
            tg = self.tg,
            listener = self.listener,
            endpoint = self.moto.endpoint(),
        )
    }

    pub fn inventory(&self, lb_extra: &str, instances: &str) -> Arc<Inventory> {
        let text = self.inventory_text(lb_extra, instances);
        Arc::new(
            Inventory::parse(Path::new("rollscript.toml"), &text)
                .unwrap_or_else(|e| panic!("{e}\n{text}")),
        )
    }

    pub fn lb(&self, inv: &Arc<Inventory>) -> ElbV2 {
        ElbV2::with_sdk_config(inv.clone(), self.sdk.clone())
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

pub fn instances_toml(rows: &[(&str, &str, Option<&str>)]) -> String {
    rows.iter()
        .map(|(name, host, id)| {
            let id = id.map(|i| format!("id = \"{i}\"\n")).unwrap_or_default();
            format!("[[instances]]\nname = \"{name}\"\nhost = \"{host}\"\n{id}\n")
        })
        .collect()
}

/// The rollscript binary in `dir` with test credentials for moto and empty
/// AWS config files there: nothing from this machine's ~/.aws leaks in (the
/// region comes from the inventory).
pub fn rollscript_against_moto(dir: &Path) -> Command {
    std::fs::write(dir.join("aws-config"), "").unwrap();
    std::fs::write(dir.join("aws-credentials"), "").unwrap();
    let mut c = rollscript();
    c.current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION");
    c
}
