//! The ELBv2 provider against moto on loopback: membership, drains, health
//! waits, IP → instance id resolution, discovery, listener weights and error
//! rendering, through the Rust API and end to end through the CLI.
//!
//! Every address stored in the emulator is a 127.x value that nothing dials.
//! moto is patched (`harness/moto_server.py`) to report `initial` for a
//! second after a register, `draining` for the deregistration delay, and a
//! health forced by tags. What even the patched emulator cannot show (several
//! instances on one private IP; exact poll timing) is covered by unit tests
//! with a scripted target in `src/providers/aws.rs`.
#![cfg(feature = "aws")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2 as ec2;
use aws_sdk_elasticloadbalancingv2 as elb;
use elb::config::Credentials;
use elb::types::{ActionTypeEnum, Tag, TargetDescription, TargetGroupAttribute};
use rollscript::config::{Instance, Inventory};
use rollscript::primitives::{ErrorKind, LoadBalancer, MemberState};
use rollscript::providers::aws::ElbV2;

use crate::harness::moto::Moto;
use crate::harness::rollscript;

const REGION: &str = "us-east-1";
/// Short, so the emulated drain ends quickly; long enough that the state
/// right after a deregister is certainly `draining`.
const DEREGISTRATION_DELAY: u64 = 3;

/// moto with a VPC, two subnets, a target group behind an ALB listener.
pub(crate) struct Cloud {
    pub(crate) moto: Moto,
    sdk: SdkConfig,
    ec2: ec2::Client,
    elb: elb::Client,
    vpc: String,
    pub(crate) subnet: String,
    tg: String,
    listener: String,
}

impl Cloud {
    pub(crate) async fn start() -> Cloud {
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
            .cidr_block("127.10.0.0/16")
            .send()
            .await
            .unwrap()
            .vpc()
            .unwrap()
            .vpc_id()
            .unwrap()
            .to_string();
        let mut subnets = Vec::new();
        for (cidr, az) in [
            ("127.10.1.0/24", "us-east-1a"),
            ("127.10.2.0/24", "us-east-1b"),
        ] {
            let s = ec2
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(cidr)
                .availability_zone(az)
                .send()
                .await
                .unwrap();
            subnets.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
        }
        let mut cloud = Cloud {
            moto,
            sdk,
            ec2,
            elb,
            vpc,
            subnet: subnets[0].clone(),
            tg: String::new(),
            listener: String::new(),
        };
        cloud.tg = cloud.target_group("credit-radar-tg").await;
        let alb = cloud
            .elb
            .create_load_balancer()
            .name("credit-radar")
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

    /// An instance-type target group on port 4000 with a short deregistration delay.
    async fn target_group(&self, name: &str) -> String {
        let arn = self
            .elb
            .create_target_group()
            .name(name)
            .protocol(elb::types::ProtocolEnum::Http)
            .port(4000)
            .vpc_id(&self.vpc)
            .target_type(elb::types::TargetTypeEnum::Instance)
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
                    .value(DEREGISTRATION_DELAY.to_string())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        arn
    }

    /// A running EC2 instance with this private IP (and `Name` tag); its id.
    pub(crate) async fn instance(&self, subnet: &str, ip: &str, name: Option<&str>) -> String {
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
        run.send().await.unwrap().instances()[0]
            .instance_id()
            .unwrap()
            .to_string()
    }

    /// What DescribeTargetHealth lists for the target group: (id, port, state), sorted.
    pub(crate) async fn targets(&self) -> Vec<(String, i32, String)> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(&self.tg)
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

    /// Forces what the emulator reports for `id` once `initial` is over.
    async fn force_health(&self, id: &str, state: &str, reason: &str, description: &str) {
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

    async fn unforce_health(&self, id: &str) {
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
    pub(crate) fn inventory_text(&self, lb_extra: &str, instances: &str) -> String {
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

    pub(crate) fn inventory(&self, lb_extra: &str, instances: &str) -> Arc<Inventory> {
        let text = self.inventory_text(lb_extra, instances);
        Arc::new(
            Inventory::parse(Path::new("rollscript.toml"), &text)
                .unwrap_or_else(|e| panic!("{e}\n{text}")),
        )
    }

    pub(crate) fn lb(&self, inv: &Arc<Inventory>) -> ElbV2 {
        ElbV2::with_sdk_config(inv.clone(), self.sdk.clone())
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn instance(inv: &Inventory, name: &str) -> Instance {
    inv.instance(name).unwrap().clone()
}

pub(crate) fn instances_toml(rows: &[(&str, &str, Option<&str>)]) -> String {
    rows.iter()
        .map(|(name, host, id)| {
            let id = id.map(|i| format!("id = \"{i}\"\n")).unwrap_or_default();
            format!("[[instances]]\nname = \"{name}\"\nhost = \"{host}\"\n{id}\n")
        })
        .collect()
}

#[tokio::test]
async fn deregister_drains_until_unused_and_register_waits_until_healthy() {
    let cloud = Cloud::start().await;
    let id1 = cloud
        .instance(&cloud.subnet, "127.10.1.10", Some("web-1"))
        .await;
    let id2 = cloud
        .instance(&cloud.subnet, "127.10.1.11", Some("web-2"))
        .await;
    let inv = cloud.inventory(
        "",
        &instances_toml(&[
            ("web-1", "127.10.1.10", Some(&id1)),
            ("web-2", "127.10.1.11", Some(&id2)),
        ]),
    );
    let lb = cloud.lb(&inv);
    let (web1, web2) = (instance(&inv, "web-1"), instance(&inv, "web-2"));
    let timeout = Duration::from_secs(30);

    for inst in [&web1, &web2] {
        lb.register(inst).await.unwrap();
        lb.wait_in_service(inst, timeout).await.unwrap();
    }
    assert_eq!(lb.in_service_count(&inv.instances).await.unwrap(), 2);
    let stats = lb.stats(&web1).await.unwrap();
    assert_eq!(stats["in_service"], 1.0);
    assert_eq!(stats["targets_healthy"], 2.0);

    lb.deregister(&web1).await.unwrap();
    assert_eq!(lb.state(&web1).await.unwrap(), MemberState::Draining);
    assert_eq!(lb.in_service_count(&inv.instances).await.unwrap(), 1);
    let report = lb.wait_drained(&web1, timeout).await.unwrap();
    assert_eq!(
        report.configured_delay,
        Some(Duration::from_secs(DEREGISTRATION_DELAY))
    );
    assert_eq!(report.connections_at_start, None);
    assert_eq!(lb.state(&web1).await.unwrap(), MemberState::OutOfService);
    assert_eq!(
        cloud.targets().await,
        [(id2.clone(), 4000, "healthy".to_string())]
    );

    // Deregistering again is not an error: the target is already out.
    lb.deregister(&web1).await.unwrap();

    lb.register(&web1).await.unwrap();
    lb.wait_in_service(&web1, timeout).await.unwrap();
    let mut expected = vec![
        (id1, 4000, "healthy".to_string()),
        (id2, 4000, "healthy".to_string()),
    ];
    expected.sort();
    assert_eq!(cloud.targets().await, expected);
}

#[tokio::test]
async fn wait_in_service_keeps_waiting_while_the_target_is_initial() {
    let cloud = Cloud::start().await;
    let id = cloud.instance(&cloud.subnet, "127.10.1.10", None).await;
    let inv = cloud.inventory("", &instances_toml(&[("web-1", "127.10.1.10", Some(&id))]));
    let lb = cloud.lb(&inv);
    let web1 = instance(&inv, "web-1");

    // Held in `initial` until the test lets go.
    cloud
        .force_health(
            &id,
            "initial",
            "Elb.InitialHealthChecking",
            "Initial health checks in progress",
        )
        .await;
    lb.register(&web1).await.unwrap();
    assert_eq!(lb.state(&web1).await.unwrap(), MemberState::Starting);
    let err = lb
        .wait_in_service(&web1, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Timeout, "{err}");
    assert_eq!(
        err.message,
        format!(
            "{id} not healthy in target group {} after 1s (lb.register_timeout); \
             last state: initial (Elb.InitialHealthChecking: Initial health checks in progress)",
            cloud.tg
        )
    );

    cloud.unforce_health(&id).await;
    lb.wait_in_service(&web1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(lb.state(&web1).await.unwrap(), MemberState::InService);
    assert_eq!(cloud.targets().await, [(id, 4000, "healthy".to_string())]);
}

#[tokio::test]
async fn a_target_that_stays_unhealthy_fails_the_wait_early_with_the_elbv2_reason() {
    let cloud = Cloud::start().await;
    let id = cloud.instance(&cloud.subnet, "127.10.1.10", None).await;
    let inv = cloud.inventory("", &instances_toml(&[("web-1", "127.10.1.10", Some(&id))]));
    let lb = cloud.lb(&inv);
    let web1 = instance(&inv, "web-1");

    cloud
        .force_health(
            &id,
            "unhealthy",
            "Target.ResponseCodeMismatch",
            "Health checks failed with these codes: [502]",
        )
        .await;
    lb.register(&web1).await.unwrap();
    // register_timeout is 30 s; health.retries × health.interval is 2 s.
    let err = lb
        .wait_in_service(&web1, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::HealthFailed, "{err}");
    assert_eq!(err.host.as_deref(), Some("web-1"));
    let expected = format!(
        "{id} is unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [502]) in target group {}",
        cloud.tg
    );
    assert!(err.message.starts_with(&expected), "{}", err.message);
    assert!(
        err.message
            .ends_with("; rollscript waits health.retries × health.interval = 2s)"),
        "{}",
        err.message
    );
    assert_eq!(lb.state(&web1).await.unwrap(), MemberState::Unhealthy);
}

#[tokio::test]
async fn an_instance_without_id_is_found_by_its_private_ip_in_the_target_group_vpc() {
    let cloud = Cloud::start().await;
    let id = cloud.instance(&cloud.subnet, "127.10.1.10", None).await;
    // The same private IP in another VPC must not make the lookup ambiguous.
    let other_vpc = cloud
        .ec2
        .create_vpc()
        .cidr_block("127.10.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let other_subnet = cloud
        .ec2
        .create_subnet()
        .vpc_id(other_vpc)
        .cidr_block("127.10.1.0/24")
        .send()
        .await
        .unwrap()
        .subnet()
        .unwrap()
        .subnet_id()
        .unwrap()
        .to_string();
    let twin = cloud.instance(&other_subnet, "127.10.1.10", None).await;
    assert_ne!(twin, id);

    let inv = cloud.inventory(
        "",
        &instances_toml(&[
            ("web-1", "127.10.1.10", None),
            ("ghost", "127.10.1.99", None),
        ]),
    );
    let lb = cloud.lb(&inv);
    let web1 = instance(&inv, "web-1");
    assert_eq!(
        lb.describe(rollscript::primitives::LbOp::Register, &web1),
        "elbv2 tg/credit-radar-tg: register 127.10.1.10 (port 4000)"
    );
    lb.register(&web1).await.unwrap();
    lb.wait_in_service(&web1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        cloud.targets().await,
        [(id.clone(), 4000, "healthy".to_string())]
    );
    // Resolved once, then shown in plans and logs.
    assert_eq!(
        lb.describe(rollscript::primitives::LbOp::Register, &web1),
        format!("elbv2 tg/credit-radar-tg: register {id} (port 4000)")
    );

    let err = lb.register(&instance(&inv, "ghost")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Lb);
    assert_eq!(err.host.as_deref(), Some("ghost"));
    assert_eq!(
        err.message,
        format!(
            "no EC2 instance has private IP 127.10.1.99 in {} (the VPC of target group {}): \
             check its host, or set `id = \"i-…\"` under its [[instances]]",
            cloud.vpc, cloud.tg
        )
    );
}

#[tokio::test]
async fn discover_lists_the_target_group_members_with_their_private_addresses() {
    let cloud = Cloud::start().await;
    let named = cloud
        .instance(&cloud.subnet, "127.10.1.10", Some("web-1"))
        .await;
    let badly_named = cloud
        .instance(&cloud.subnet, "127.10.1.11", Some("web 2 (old)"))
        .await;
    let unnamed = cloud.instance(&cloud.subnet, "127.10.1.12", None).await;
    let elsewhere = cloud
        .instance(&cloud.subnet, "127.10.1.13", Some("not-in-tg"))
        .await;
    assert_ne!(elsewhere, named);
    cloud
        .elb
        .register_targets()
        .target_group_arn(&cloud.tg)
        .targets(TargetDescription::builder().id(&named).port(4000).build())
        .targets(
            TargetDescription::builder()
                .id(&badly_named)
                .port(4000)
                .build(),
        )
        .targets(TargetDescription::builder().id(&unnamed).port(4001).build())
        .send()
        .await
        .unwrap();

    let inv = cloud.inventory("discover = true", "");
    let fleet = cloud.lb(&inv).discover().await.unwrap();
    let got: Vec<(String, String, Option<String>, Option<u16>)> = fleet
        .into_iter()
        .map(|i| (i.name, i.host, i.id, i.port))
        .collect();
    let mut expected = vec![
        (
            "web-1".to_string(),
            "127.10.1.10".to_string(),
            Some(named),
            None,
        ),
        // "web 2 (old)" is no valid inventory name: the id stands in.
        (
            badly_named.clone(),
            "127.10.1.11".to_string(),
            Some(badly_named),
            None,
        ),
        // Registered on another port than the inventory's: kept on the instance.
        (
            unnamed.clone(),
            "127.10.1.12".to_string(),
            Some(unnamed),
            Some(4001),
        ),
    ];
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn switch_pool_and_target_group_weights_rewrite_the_listener_forward_action() {
    let cloud = Cloud::start().await;
    let green = cloud.target_group("green-tg").await;
    let blue_id = cloud.instance(&cloud.subnet, "127.10.1.10", None).await;
    let green_id = cloud.instance(&cloud.subnet, "127.10.1.11", None).await;
    let pools = format!(
        "[lb.pools.blue]\ntarget_group_arn = \"{}\"\n[lb.pools.green]\ntarget_group_arn = \"{green}\"\n",
        cloud.tg
    );
    let instances = format!(
        "[[instances]]\nname = \"blue-1\"\nhost = \"127.10.1.10\"\nid = \"{blue_id}\"\npool = \"blue\"\n\n\
         [[instances]]\nname = \"green-1\"\nhost = \"127.10.1.11\"\nid = \"{green_id}\"\npool = \"green\"\n"
    );
    let inv = cloud.inventory(&pools, &instances);
    let lb = cloud.lb(&inv);
    let forward = || async {
        let out = cloud
            .elb
            .describe_listeners()
            .listener_arns(&cloud.listener)
            .send()
            .await
            .unwrap();
        let actions = out.listeners()[0].default_actions().to_vec();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].r#type(), Some(&ActionTypeEnum::Forward));
        actions[0]
            .forward_config()
            .unwrap()
            .target_groups()
            .iter()
            .map(|t| {
                (
                    t.target_group_arn().unwrap().to_string(),
                    t.weight().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };

    lb.switch_pool("green").await.unwrap();
    assert_eq!(
        forward().await,
        [(cloud.tg.clone(), 0), (green.clone(), 100)]
    );

    lb.set_target_group_weights(&[(cloud.tg.clone(), 90), (green.clone(), 10)])
        .await
        .unwrap();
    assert_eq!(
        forward().await,
        [(cloud.tg.clone(), 90), (green.clone(), 10)]
    );

    lb.switch_pool("blue").await.unwrap();
    assert_eq!(forward().await, [(cloud.tg.clone(), 100), (green, 0)]);
}

#[tokio::test]
async fn aws_errors_show_the_code_the_message_and_the_target_group_arn() {
    let cloud = Cloud::start().await;
    let id = cloud.instance(&cloud.subnet, "127.10.1.10", None).await;
    let missing = cloud.tg.replace("credit-radar-tg", "missing-tg");
    let text = cloud
        .inventory_text("", &instances_toml(&[("web-1", "127.10.1.10", Some(&id))]))
        .replace(&cloud.tg, &missing);
    let inv = Arc::new(Inventory::parse(Path::new("rollscript.toml"), &text).unwrap());
    let lb = cloud.lb(&inv);
    let web1 = instance(&inv, "web-1");

    let err = lb.state(&web1).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Lb);
    assert_eq!(err.host.as_deref(), Some("web-1"));
    assert_eq!(
        err.message,
        format!(
            "DescribeTargetHealth failed for target group {missing}: TargetGroupNotFound: One or more target groups not found"
        )
    );
    assert!(err
        .details
        .contains(&("aws_error_code".into(), "TargetGroupNotFound".into())));

    let err = lb.register(&web1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "web-1: RegisterTargets failed for target group {missing}: TargetGroupNotFound: One or more target groups not found"
        )
    );
}

#[test]
fn the_cli_cycles_every_instance_through_elbv2_and_leaves_all_healthy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cloud = rt.block_on(Cloud::start());
    let id1 = rt.block_on(cloud.instance(&cloud.subnet, "127.10.1.10", Some("web-1")));
    let id2 = rt.block_on(cloud.instance(&cloud.subnet, "127.10.1.11", Some("web-2")));
    // Both in service before the run: the capacity guard counts them.
    let setup = cloud.inventory(
        "",
        &instances_toml(&[
            ("web-1", "127.10.1.10", Some(&id1)),
            ("web-2", "127.10.1.11", Some(&id2)),
        ]),
    );
    rt.block_on(async {
        let lb = cloud.lb(&setup);
        for inst in &setup.instances {
            lb.register(inst).await.unwrap();
            lb.wait_in_service(inst, Duration::from_secs(30))
                .await
                .unwrap();
        }
    });

    let dir = tempfile::tempdir().unwrap();
    // web-2 has no id: the run resolves it from its private IP.
    let inv = cloud.inventory_text(
        "",
        &instances_toml(&[
            ("web-1", "127.10.1.10", Some(&id1)),
            ("web-2", "127.10.1.11", None),
        ]),
    );
    std::fs::write(dir.path().join("rollscript.toml"), inv).unwrap();
    std::fs::write(
        dir.path().join("cycle.rhai"),
        r#"
for inst in instances() {
    deregister(inst);
    let d = wait_drained(inst);
    register(inst);
    wait_in_service(inst);
    info(`${inst.name} cycled`);
}
"#,
    )
    .unwrap();

    let out = rollscript_against_moto(dir.path())
        .args(["run", "cycle.rhai", "-i", "rollscript.toml", "--yes"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{stderr}\nmoto:\n{}",
        String::from_utf8_lossy(&out.stdout),
        cloud.moto.stderr()
    );
    for line in [
        format!("elbv2 tg/credit-radar-tg: deregister {id1} (port 4000)"),
        format!("elbv2 tg/credit-radar-tg: wait until {id1} is unused (≤ 30s)"),
        format!("elbv2 tg/credit-radar-tg: wait until {id2} is healthy (≤ 30s)"),
        "web-2 cycled".to_string(),
    ] {
        assert!(stderr.contains(&line), "missing {line:?} in:\n{stderr}");
    }
    let mut expected = vec![
        (id1, 4000, "healthy".to_string()),
        (id2, 4000, "healthy".to_string()),
    ];
    expected.sort();
    assert_eq!(rt.block_on(cloud.targets()), expected);
}

/// The rollscript binary in `dir` with test credentials for moto and empty
/// AWS config files there: nothing from this machine's ~/.aws leaks in.
pub(crate) fn rollscript_against_moto(dir: &Path) -> std::process::Command {
    std::fs::write(dir.join("aws-config"), "").unwrap();
    std::fs::write(dir.join("aws-credentials"), "").unwrap();
    let mut c = rollscript();
    c.current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.join("aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL");
    c
}
