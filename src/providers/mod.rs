//! Implementations of the `primitives` traits: load balancers (haproxy,
//! nginx, aws, none), transports (ssh, local) and HTTP health.

#[cfg(feature = "aws")]
pub mod aws;
pub mod fake;
pub mod haproxy;
pub mod http;
pub mod local;
pub mod nginx;
pub mod none;
mod output;
pub mod ssh;

use std::sync::Arc;

use crate::config::{Inventory, LbBackend};
use crate::effects::Providers;
use crate::primitives::{LoadBalancer, Transport};

/// The live providers for `inv`. Constructors connect to nothing: the first
/// call does, so a dry run built from the same inventory touches nothing.
pub fn build(inv: &Arc<Inventory>) -> Providers {
    let ssh: Arc<dyn Transport> = Arc::new(ssh::SshTransport::new(inv.clone()));
    let local: Arc<dyn Transport> = Arc::new(local::LocalTransport);
    let lb: Arc<dyn LoadBalancer> = match &inv.lb.backend {
        LbBackend::None => Arc::new(none::NoLoadBalancer),
        LbBackend::Haproxy { .. } => Arc::new(haproxy::HaproxyLb::new(inv.clone())),
        LbBackend::Nginx { .. } => {
            Arc::new(nginx::NginxLb::new(inv.clone(), ssh.clone(), local.clone()))
        }
        #[cfg(feature = "aws")]
        LbBackend::Aws { .. } => Arc::new(aws::ElbV2::new(inv.clone())),
        #[cfg(not(feature = "aws"))]
        LbBackend::Aws { .. } => {
            unreachable!("config refuses lb.kind = \"aws\" without the `aws` feature")
        }
    };
    Providers {
        lb,
        ssh,
        local,
        health: Arc::new(http::HttpHealth::new()),
    }
}
