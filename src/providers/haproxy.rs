//! Placeholder: replaced by the real haproxy provider.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Instance, Inventory};
use crate::primitives::{
    ActionError, ActionResult, DrainReport, ErrorKind, LbOp, LoadBalancer, MemberState,
};

pub struct HaproxyLb {
    #[allow(dead_code)]
    inv: Arc<Inventory>,
}

impl HaproxyLb {
    pub fn new(inv: Arc<Inventory>) -> Self {
        Self { inv }
    }
}

fn todo() -> ActionError {
    ActionError::new(ErrorKind::Lb, "haproxy provider not available yet")
}

#[async_trait]
impl LoadBalancer for HaproxyLb {
    fn kind(&self) -> &'static str {
        "haproxy"
    }
    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        format!("haproxy {}: {op:?}", inst.name)
    }
    async fn deregister(&self, _inst: &Instance) -> ActionResult<()> {
        Err(todo())
    }
    async fn wait_drained(
        &self,
        _inst: &Instance,
        _timeout: Duration,
    ) -> ActionResult<DrainReport> {
        Err(todo())
    }
    async fn register(&self, _inst: &Instance) -> ActionResult<()> {
        Err(todo())
    }
    async fn wait_in_service(
        &self,
        _inst: &Instance,
        _timeout: Duration,
    ) -> ActionResult<Duration> {
        Err(todo())
    }
    async fn set_weight(&self, _inst: &Instance, _weight: u32) -> ActionResult<()> {
        Err(todo())
    }
    async fn state(&self, _inst: &Instance) -> ActionResult<MemberState> {
        Err(todo())
    }
    async fn in_service_count(&self, _fleet: &[Instance]) -> ActionResult<usize> {
        Err(todo())
    }
}
