//! The ELBv2 provider against moto on loopback: the load balancer contract
//! (`lb_contract.rs`), membership, drains, health waits, IP → instance id
//! resolution, discovery, listener weights and error rendering, through the
//! Rust API and end to end through the CLI.
//!
//! Every address stored in the emulator is a 127.x value that nothing dials.
//! moto is patched (`harness/moto_server.py`) to report `initial` for a
//! second after a register, `draining` for the deregistration delay, and a
//! health forced by tags. What even the patched emulator cannot show (several
//! instances on one private IP; exact poll timing) is covered by unit tests
//! with a scripted target in `src/providers/aws.rs`.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2 as elb;
use elb::types::{ActionTypeEnum, TargetDescription};
use rollscript::config::{Instance, Inventory};
use rollscript::primitives::{ErrorKind, LoadBalancer, MemberState};
use rollscript::providers::aws::ElbV2;

use crate::harness::cloud::{instances_toml, rollscript_against_moto, Cloud};
use crate::lb_contract::{self, Subject};

fn instance(inv: &Inventory, name: &str) -> Instance {
    inv.instance(name).unwrap().clone()
}

/// Three targets registered and healthy in moto's target group, and a
/// `ghost` in the inventory at an address no EC2 instance has.
struct Elb {
    cloud: Cloud,
    inv: Arc<Inventory>,
    lb: ElbV2,
    /// Instance name → EC2 instance id.
    ids: BTreeMap<String, String>,
}

impl Elb {
    async fn start() -> Elb {
        let cloud = Cloud::start().await;
        let mut ids = BTreeMap::new();
        for (name, ip) in [
            ("web-1", "127.10.1.10"),
            ("web-2", "127.10.1.11"),
            ("web-3", "127.10.1.12"),
        ] {
            let id = cloud.instance(&cloud.subnet, ip, Some(name)).await;
            ids.insert(name.to_string(), id);
        }
        cloud
            .register_healthy(&ids.values().cloned().collect::<Vec<_>>())
            .await;
        let inv = cloud.inventory(
            "",
            &instances_toml(&[
                ("web-1", "127.10.1.10", Some(&ids["web-1"])),
                ("web-2", "127.10.1.11", Some(&ids["web-2"])),
                ("web-3", "127.10.1.12", Some(&ids["web-3"])),
                ("ghost", "127.10.1.99", None),
            ]),
        );
        let lb = cloud.lb(&inv);
        Elb {
            cloud,
            inv,
            lb,
            ids,
        }
    }
}

#[async_trait::async_trait]
impl Subject for Elb {
    fn lb(&self) -> &dyn LoadBalancer {
        &self.lb
    }

    fn inventory(&self) -> &Inventory {
        &self.inv
    }

    fn stranger(&self) -> Instance {
        instance(&self.inv, "ghost")
    }

    /// ELBv2 routes to `healthy` targets (and `initial` ones, after a register).
    async fn in_rotation(&self, name: &str) -> bool {
        let id = &self.ids[name];
        self.cloud
            .targets()
            .await
            .iter()
            .any(|(t, _, state)| t == id && (state == "healthy" || state == "initial"))
    }
}

#[tokio::test]
async fn elbv2_keeps_the_load_balancer_contract() {
    lb_contract::check(&Elb::start().await).await;
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
        Some(Duration::from_secs(cloud.spec.deregistration_delay))
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
async fn a_target_is_expected_healthy_after_the_groups_interval_times_its_threshold() {
    let cloud = Cloud::start().await;
    let inv = cloud.inventory(
        "",
        &instances_toml(&[("web-1", "127.10.1.10", Some("i-1"))]),
    );
    let lb = cloud.lb(&inv);
    // The harness's groups check every 7 s and need 3 passes.
    assert_eq!(
        lb.expected_healthy(&cloud.tg).await,
        Some(Duration::from_secs(21))
    );
    // A group that does not exist: no expectation (the wait polls as usual).
    let missing = format!("{}/0000000000000000", cloud.tg.rsplit_once('/').unwrap().0);
    assert_eq!(lb.expected_healthy(&missing).await, None);
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
    // Each pool's instance a healthy target of its group: switch_pool waits
    // for that before it rewrites the listener.
    cloud.register_healthy(std::slice::from_ref(&blue_id)).await;
    cloud
        .register_healthy_in(&green, std::slice::from_ref(&green_id))
        .await;
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
    // web-2 has no id: the run resolves it from its private IP. No sshd
    // runs on these addresses: the drains follow ELBv2 alone.
    let inv = cloud.inventory_text(
        "drain_detect = \"lb\"",
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
        .env("AWS_REGION", crate::harness::cloud::REGION)
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
