//! `lb.kind = "none"`: no load balancer. Membership calls succeed without
//! acting, so a script written for an LB still runs against a bare fleet.

use std::time::Duration;

use async_trait::async_trait;

use crate::config::Instance;
use crate::primitives::{ActionResult, DrainReport, LbOp, LoadBalancer, MemberState};

pub struct NoLoadBalancer;

#[async_trait]
impl LoadBalancer for NoLoadBalancer {
    fn kind(&self) -> &'static str {
        "none"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let what = match op {
            LbOp::Deregister => "deregister".to_string(),
            LbOp::WaitDrained { .. } => "wait drained".to_string(),
            LbOp::Register => "register".to_string(),
            LbOp::WaitInService { .. } => "wait in service".to_string(),
            LbOp::SetWeight(w) => format!("set weight {w}"),
        };
        format!("no load balancer: skip {what} of {}", inst.name)
    }

    async fn deregister(&self, _inst: &Instance) -> ActionResult<()> {
        Ok(())
    }
    async fn wait_drained(
        &self,
        _inst: &Instance,
        _timeout: Duration,
    ) -> ActionResult<DrainReport> {
        Ok(DrainReport::default())
    }
    async fn register(&self, _inst: &Instance) -> ActionResult<()> {
        Ok(())
    }
    async fn wait_in_service(
        &self,
        _inst: &Instance,
        _timeout: Duration,
    ) -> ActionResult<Duration> {
        Ok(Duration::ZERO)
    }
    async fn set_weight(&self, _inst: &Instance, _weight: u32) -> ActionResult<()> {
        Ok(())
    }
    async fn state(&self, _inst: &Instance) -> ActionResult<MemberState> {
        Ok(MemberState::InService)
    }
    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        Ok(fleet.len())
    }
    fn typical_drain(&self) -> Duration {
        Duration::ZERO
    }
}
