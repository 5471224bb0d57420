//! Several load balancers (`[[lb]]`) as one: every call fans out to each
//! LB, and the instance's state is the most cautious of theirs.
//!
//! An instance is in service only when every LB has it in service (the
//! capacity guard counts that), and out of rotation when any LB has it out
//! (a host an operator parked on one LB of a pair is parked). Errors and
//! plan steps name the LB (`haproxy-2: …`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;

use crate::config::Instance;
use crate::primitives::{
    ActionError, ActionResult, DrainReport, LbOp, LoadBalancer, MemberState, MemberStats,
};

/// One `[[lb]]` entry: its name, its provider and its own bounds.
pub struct Member {
    pub name: String,
    pub lb: Arc<dyn LoadBalancer>,
    pub drain_timeout: Duration,
    pub register_timeout: Duration,
}

pub struct MultiLb {
    members: Vec<Member>,
}

impl MultiLb {
    pub fn new(members: Vec<Member>) -> Self {
        assert!(!members.is_empty(), "MultiLb needs at least one LB");
        Self { members }
    }

    /// Runs `f` on every LB at once; the first error (in file order), named
    /// after its LB, once all have finished — a slow LB is never abandoned
    /// half-way through a change.
    async fn all<'a, T, F, Fut>(&'a self, f: F) -> ActionResult<Vec<T>>
    where
        F: Fn(&'a Member) -> Fut,
        Fut: std::future::Future<Output = ActionResult<T>> + 'a,
    {
        let results = join_all(self.members.iter().map(|m| {
            let fut = f(m);
            async move { fut.await.map_err(|e| named(&m.name, e)) }
        }))
        .await;
        results.into_iter().collect()
    }
}

/// `haproxy-2: HAProxy server … DOWN`.
fn named(lb: &str, mut e: ActionError) -> ActionError {
    if !e.message.starts_with(&format!("{lb}: ")) {
        e.message = format!("{lb}: {}", e.message);
    }
    e.detail("lb", lb)
}

/// The most cautious of one instance's states on every LB: out of rotation
/// on any wins (parked), then anything short of in service.
pub fn combine(states: impl IntoIterator<Item = MemberState>) -> MemberState {
    let states: Vec<MemberState> = states.into_iter().collect();
    let rank = |s: &MemberState| match s {
        MemberState::Unknown => 0,
        MemberState::OutOfService => 1,
        MemberState::Draining => 2,
        MemberState::Unhealthy => 3,
        MemberState::Starting => 4,
        MemberState::InService => 5,
    };
    states
        .into_iter()
        .min_by_key(rank)
        .unwrap_or(MemberState::Unknown)
}

#[async_trait]
impl LoadBalancer for MultiLb {
    fn kind(&self) -> &'static str {
        "multi"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        self.members
            .iter()
            .map(|m| {
                let op = match op {
                    LbOp::WaitDrained { .. } => LbOp::WaitDrained {
                        timeout: m.drain_timeout,
                    },
                    LbOp::WaitInService { .. } => LbOp::WaitInService {
                        timeout: m.register_timeout,
                    },
                    other => other,
                };
                format!("{}: {}", m.name, m.lb.describe(op, inst))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        self.all(|m| m.lb.deregister(inst)).await.map(|_| ())
    }

    /// Each LB drains with its own `drain_timeout`, all at once.
    async fn wait_drained(&self, inst: &Instance, _timeout: Duration) -> ActionResult<DrainReport> {
        let reports = self
            .all(|m| m.lb.wait_drained(inst, m.drain_timeout))
            .await?;
        Ok(DrainReport {
            waited: reports.iter().map(|r| r.waited).max().unwrap_or_default(),
            connections_at_start: reports
                .iter()
                .filter_map(|r| r.connections_at_start)
                .reduce(|a, b| a + b),
            configured_delay: reports.iter().filter_map(|r| r.configured_delay).max(),
            // What ended the drain that ended last.
            ended_by: reports
                .iter()
                .max_by_key(|r| r.waited)
                .map(|r| r.ended_by)
                .unwrap_or_default(),
        })
    }

    async fn close_connections(&self, inst: &Instance) -> ActionResult<Option<u64>> {
        let closed = self.all(|m| m.lb.close_connections(inst)).await?;
        Ok(closed.into_iter().flatten().reduce(|a, b| a + b))
    }

    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        self.all(|m| m.lb.register(inst)).await.map(|_| ())
    }

    async fn wait_in_service(&self, inst: &Instance, _timeout: Duration) -> ActionResult<Duration> {
        let waited = self
            .all(|m| m.lb.wait_in_service(inst, m.register_timeout))
            .await?;
        Ok(waited.into_iter().max().unwrap_or_default())
    }

    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        self.all(|m| m.lb.set_weight(inst, weight))
            .await
            .map(|_| ())
    }

    fn supports_weights(&self) -> bool {
        self.members.iter().all(|m| m.lb.supports_weights())
    }

    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        self.all(|m| m.lb.reset_weight(inst)).await.map(|_| ())
    }

    async fn set_weights(&self, changes: &[(&Instance, Option<u32>)]) -> ActionResult<()> {
        self.all(|m| m.lb.set_weights(changes)).await.map(|_| ())
    }

    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        Ok(combine(self.all(|m| m.lb.state(inst)).await?))
    }

    async fn states(&self, fleet: &[Instance]) -> ActionResult<Vec<MemberState>> {
        let per_lb = self.all(|m| m.lb.states(fleet)).await?;
        Ok((0..fleet.len())
            .map(|i| combine(per_lb.iter().map(|states| states[i])))
            .collect())
    }

    fn state_word(&self, state: &MemberState) -> String {
        self.members[0].lb.state_word(state)
    }

    async fn verify(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let per_lb = self.all(|m| m.lb.verify(fleet)).await?;
        Ok(self
            .members
            .iter()
            .zip(per_lb)
            .flat_map(|(m, problems)| {
                problems
                    .into_iter()
                    .map(move |p| format!("{}: {p}", m.name))
            })
            .collect())
    }

    /// In service on every LB.
    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        let states = self.states(fleet).await?;
        Ok(states
            .iter()
            .filter(|s| **s == MemberState::InService)
            .count())
    }

    /// Summed over the LBs: sessions, requests and errors are per LB.
    async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        let mut out = MemberStats::new();
        for stats in self.all(|m| m.lb.stats(inst)).await? {
            for (k, v) in stats {
                *out.entry(k).or_default() += v;
            }
        }
        Ok(out)
    }

    /// The pools live on any LB: a pool live on one only is still taking traffic.
    async fn live_pools(&self, fleet: &[Instance]) -> ActionResult<Vec<String>> {
        let mut live: Vec<String> = self
            .all(|m| m.lb.live_pools(fleet))
            .await?
            .into_iter()
            .flatten()
            .collect();
        live.sort();
        live.dedup();
        Ok(live)
    }

    /// One LB after the other, in file order, so a refusal stops the switch
    /// before the next LB moves.
    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        for m in &self.members {
            m.lb.switch_pool(pool)
                .await
                .map_err(|e| named(&m.name, e))?;
        }
        Ok(())
    }

    fn describe_switch(&self, pool: &str) -> String {
        self.members
            .iter()
            .map(|m| format!("{}: {}", m.name, m.lb.describe_switch(pool)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn typical_drain(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.lb.typical_drain())
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_in_service_only_when_every_lb_says_so() {
        use MemberState::*;
        assert_eq!(combine([InService, InService]), InService);
        assert_eq!(combine([InService, Starting]), Starting);
        assert_eq!(combine([InService, Draining]), Draining);
        assert_eq!(combine([Unhealthy, OutOfService]), OutOfService);
        assert!(combine([InService, OutOfService]).out_of_rotation());
    }
}
