//! The provider as a whole, without AWS: plan lines, refusals that need no
//! call, and the shared fixtures of the folder's tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::clients::arn_region;
use super::*;

pub(super) const TG: &str =
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/credit-radar-tg/73e2d6bc24d8a067";
const LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/credit-radar/50dc6c495c0c9188/f2f7dc8efc522ab2";
pub(super) const GREEN: &str =
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

#[test]
fn polls_start_short_and_back_off_to_the_interval() {
    let mut poll = Backoff::doubling(FIRST_POLL, DEFAULT_POLL_INTERVAL);
    let delays: Vec<u64> = (0..6).map(|_| poll.next().as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 5, 5, 5]);
    let mut poll = Backoff::doubling(FIRST_POLL, Duration::from_millis(200));
    let sub_second: Vec<u128> = (0..2).map(|_| poll.next().as_millis()).collect();
    assert_eq!(sub_second, [200, 200]);
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
    // No id yet: the host stands in until EC2 resolves it. web-2 is in pool
    // green, which has a target group of its own: its steps act on that one.
    let web2 = inv.instance("web-2").unwrap();
    assert_eq!(
        lb.describe(LbOp::Register, web2),
        "elbv2 tg/green-tg: register 10.0.1.11 (port 4000)"
    );
    lb.ids
        .lock()
        .unwrap()
        .insert("10.0.1.11".into(), "i-0def".into());
    assert_eq!(
        lb.describe(LbOp::Deregister, web2),
        "elbv2 tg/green-tg: deregister i-0def (port 4000)"
    );
}

#[test]
fn with_ssh_the_drain_line_says_the_host_may_end_it_unless_drain_detect_is_lb() {
    let ssh: Arc<dyn crate::primitives::Transport> =
        Arc::new(crate::providers::fake::FakeTransport::default());
    let timeout = Duration::from_secs(120);
    let inv = inventory("drain_settle = \"2s\"");
    let lb = ElbV2::new(inv.clone()).with_host_counts(ssh.clone());
    assert_eq!(
        lb.describe(LbOp::WaitDrained { timeout }, inv.instance("web-1").unwrap()),
        "elbv2 tg/credit-radar-tg: wait until i-0abc is unused, or draining with no connection on web-1 for 2s (≤ 120s)"
    );
    let inv = inventory("drain_detect = \"lb\"");
    let lb = ElbV2::new(inv.clone()).with_host_counts(ssh);
    assert_eq!(
        lb.describe(
            LbOp::WaitDrained { timeout },
            inv.instance("web-1").unwrap()
        ),
        "elbv2 tg/credit-radar-tg: wait until i-0abc is unused (≤ 120s)"
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
fn constructing_the_provider_touches_no_network() {
    // The clients are built on first use only: a dry run stays offline.
    let lb = ElbV2::new(inventory(""));
    assert!(lb.clients.get().is_none());
    assert_eq!(lb.region().as_deref(), Some("eu-west-1"));
}
