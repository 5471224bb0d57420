//! Implementations of the `primitives` traits: load balancers (haproxy,
//! nginx, aws, none), transports (ssh, local) and HTTP health.
//!
//! A provider that holds more than one idea is a folder (`haproxy/`,
//! `nginx/`, `aws/`, `ssh/`): its `mod.rs` is the trait impl, the policy a
//! newcomer opens first, and the mechanics (socket, parser, SDK calls, ssh
//! sessions) sit beside it. `poll.rs` paces every provider's wait loops.

#[cfg(feature = "aws")]
pub mod aws;
pub mod connections;
pub mod fake;
pub mod haproxy;
pub mod http;
pub mod local;
pub mod multi;
pub mod nginx;
pub mod none;
mod output;
pub(crate) mod poll;
pub mod postgres;
pub mod ssh;
pub mod terminal;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{Instance, Inventory, LbBackend};
use crate::primitives::{ActionResult, Discovery, LoadBalancer, Providers, Transport};

/// The live providers for `inv`. Constructors connect to nothing: the first
/// call does, so a dry run built from the same inventory touches nothing.
pub fn build(inv: &Arc<Inventory>) -> Providers {
    let ssh: Arc<dyn Transport> = Arc::new(ssh::SshTransport::new(inv.clone()));
    let local: Arc<dyn Transport> = Arc::new(local::LocalTransport);
    let lb: Arc<dyn LoadBalancer> = if inv.lbs.len() > 1 {
        // One provider per `[[lb]]` entry, each built from the inventory
        // with that entry as its `lb`: providers need not know there are more.
        let members = inv
            .lbs
            .iter()
            .map(|entry| {
                let one = Arc::new(inv.with_lb(entry.clone()));
                multi::Member {
                    name: entry.name.clone(),
                    lb: one_lb(&one, &ssh, &local),
                    drain_timeout: entry.drain_timeout,
                    register_timeout: entry.register_timeout,
                }
            })
            .collect();
        Arc::new(multi::MultiLb::new(members))
    } else {
        one_lb(inv, &ssh, &local)
    };
    Providers {
        lb,
        ssh,
        local,
        health: Arc::new(http::HttpHealth::new()),
        database: Arc::new(postgres::PgDatabase),
        metrics: Arc::new(http::PrometheusMetrics),
        notifier: Arc::new(http::WebhookNotifier),
        operator: Arc::new(terminal::TerminalOperator),
        discovery: Arc::new(LbDiscovery),
    }
}

/// The provider for `inv.lb`.
fn one_lb(
    inv: &Arc<Inventory>,
    ssh: &Arc<dyn Transport>,
    local: &Arc<dyn Transport>,
) -> Arc<dyn LoadBalancer> {
    match &inv.lb.backend {
        LbBackend::None => Arc::new(none::NoLoadBalancer),
        LbBackend::Haproxy { .. } => {
            Arc::new(haproxy::HaproxyLb::new(inv.clone()).with_host_counts(ssh.clone()))
        }
        LbBackend::Nginx { .. } => {
            Arc::new(nginx::NginxLb::new(inv.clone(), ssh.clone(), local.clone()))
        }
        #[cfg(feature = "aws")]
        LbBackend::Aws { .. } => {
            Arc::new(aws::ElbV2::new(inv.clone()).with_host_counts(ssh.clone()))
        }
        #[cfg(not(feature = "aws"))]
        LbBackend::Aws { .. } => {
            unreachable!("config refuses lb.kind = \"aws\" without the `aws` feature")
        }
    }
}

/// The live [`Discovery`]: the members of the AWS target group when
/// `lb.discover = true`, nothing otherwise.
pub struct LbDiscovery;

#[async_trait]
impl Discovery for LbDiscovery {
    async fn discover(&self, inv: &Inventory) -> ActionResult<Vec<Instance>> {
        #[cfg(feature = "aws")]
        if let LbBackend::Aws { discover: true, .. } = &inv.lb.backend {
            return aws::ElbV2::new(Arc::new(inv.clone())).discover().await;
        }
        let _ = inv;
        Ok(Vec::new())
    }
}

/// Adds what `discovery` finds to the inventory when `lb.discover = true`
/// (the inventory's own entries win on a name or id clash). Any other
/// inventory is returned as is.
pub async fn discover(
    inv: Inventory,
    discovery: &dyn Discovery,
) -> Result<Inventory, crate::primitives::ActionError> {
    if !matches!(inv.lb.backend, LbBackend::Aws { discover: true, .. }) {
        return Ok(inv);
    }
    let found = discovery.discover(&inv).await?;
    let mut inv = inv;
    for i in found {
        let clash = inv
            .instances
            .iter()
            .any(|x| x.name == i.name || (x.id.is_some() && x.id == i.id));
        if !clash {
            inv.add_instance(i);
        }
    }
    if inv.instances.is_empty() {
        return Err(crate::primitives::ActionError::new(
            crate::primitives::ErrorKind::Lb,
            "lb.discover = true found no instance in the target group and the inventory lists none",
        ));
    }
    tracing::info!(
        "discovered {} instance(s) from the target group",
        inv.instances.len()
    );
    Ok(inv)
}
