//! Load-balancer membership and the reads scripts make of it: deregister
//! (through the capacity guard), drains, register, waits in service,
//! blue/green pools, state and stats. Parked instances are skipped here.

use std::time::Duration;

use tracing::{info, warn};

use super::{Effects, TYPICAL_REGISTER};
use crate::config::{format_duration, DrainPolicy, Instance};
use crate::plan::Estimate;
use crate::primitives::{ActionResult, DrainReport, ErrorKind, LbOp, MemberState, MemberStats};

impl Effects {
    // ---- load balancer ------------------------------------------------------
    //
    // How a finished drain is told (log line, journal, summary): drain.rs.

    pub async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        if self.skip_parked(inst, "deregister") {
            return Ok(());
        }
        let lb = &self.providers.lb;
        let text = lb.describe(LbOp::Deregister, inst);
        if self.is_dry_run() {
            self.plan_safe_point();
            self.plan_capacity(inst)?;
            self.record(text, Estimate::default());
            self.ledger
                .finish(&inst.name, "deregister", Duration::ZERO, None);
            return Ok(());
        }
        // A pause holds here (before the capacity guard: a held run keeps
        // no critical section); an abort refuses instances not yet updated.
        self.safe_point("deregister", Some(inst)).await?;
        // Held until the deregister is sent: check and act are one step.
        let _section = self.take_capacity(inst).await?;
        info!(instance = %inst.name, step = "deregister", "{text}");
        self.act("deregister", Some(inst), &text, lb.deregister(inst))
            .await
    }

    pub async fn wait_drained(&self, inst: &Instance) -> ActionResult<DrainReport> {
        if self.skip_parked(inst, "wait_drained") {
            return Ok(DrainReport::default());
        }
        let lb = &self.providers.lb;
        let timeout = self.inventory.lb.drain_timeout;
        let op = LbOp::WaitDrained { timeout };
        let typical = self
            .measured_drain()
            .map_or_else(|| lb.typical_drain(), |m| m.typical);
        if self.record(
            lb.describe(op, inst),
            Estimate::new(typical.min(timeout), timeout),
        ) {
            return Ok(DrainReport::default());
        }
        let text = lb.describe(op, inst);
        info!(instance = %inst.name, step = "drain", "{text}");
        let wait = async {
            let drained = lb.wait_drained(inst, timeout);
            if !crate::ui::has_progress() {
                return drained.await;
            }
            // For the progress line: the connections still open, from the LB.
            let watch = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(stats) = lb.stats(inst).await {
                        if let Some(n) = stats.get("sessions") {
                            self.ledger
                                .set_detail(&inst.name, format!("{n} connections"));
                        }
                    }
                }
            };
            tokio::select! {
                r = drained => r,
                _ = watch => unreachable!("the watch loops forever"),
            }
        };
        // With `proceed`, a drain that reaches its timeout closes what is
        // left and succeeds: a long-lived connection must not stop a deploy.
        let wait = async {
            match wait.await {
                Err(e) if e.kind == ErrorKind::DrainTimeout => {
                    if self.drain_policy() == DrainPolicy::Fail {
                        let mut e = e;
                        e.message
                            .push_str(" (lb.on_drain_timeout = \"fail\"; \"proceed\" closes them and goes on)");
                        return Err(e);
                    }
                    self.close_at_drain_timeout(inst, timeout, &e).await?;
                    Ok(DrainReport {
                        waited: timeout,
                        connections_at_start: None,
                        configured_delay: None,
                        ended_by: Default::default(),
                    })
                }
                other => other,
            }
        };
        let report = self.act("wait_drained", Some(inst), &text, wait).await?;
        self.drained(inst, &report);
        Ok(report)
    }

    /// `fail` when any LB says so (the stricter choice), else `proceed`.
    fn drain_policy(&self) -> DrainPolicy {
        if self
            .inventory
            .lbs
            .iter()
            .any(|l| l.on_drain_timeout == DrainPolicy::Fail)
        {
            DrainPolicy::Fail
        } else {
            DrainPolicy::Proceed
        }
    }

    /// `drain_timeout` reached under `proceed`: the LB closes what is left
    /// (journalled before it acts, like every effect), the run warns with
    /// the count and goes on.
    async fn close_at_drain_timeout(
        &self,
        inst: &Instance,
        timeout: Duration,
        why: &crate::primitives::ActionError,
    ) -> ActionResult<()> {
        let lb = &self.providers.lb;
        let text = format!(
            "close the connections still open on {} after drain_timeout {} (lb.on_drain_timeout = \"proceed\")",
            inst.name,
            format_duration(timeout)
        );
        let journal = self.journal.get();
        let seq = journal.and_then(|j| j.intent("close_connections", Some(&inst.name), &text).ok());
        let started = std::time::Instant::now();
        let closed = lb.close_connections(inst).await;
        if let (Some(j), Some(seq)) = (journal, seq) {
            j.result(seq, started.elapsed(), closed.as_ref().err());
        }
        match closed? {
            Some(n) => warn!(
                instance = %inst.name, step = "drain_timeout", closed = n,
                "{}: drain_timeout {} reached: closed {n} connection(s) still open and went on ({})",
                inst.name, format_duration(timeout), why.message
            ),
            None => warn!(
                instance = %inst.name, step = "drain_timeout",
                "{}: drain_timeout {} reached: went on, the LB closes or keeps what is left ({})",
                inst.name, format_duration(timeout), why.message
            ),
        }
        Ok(())
    }

    pub async fn register(&self, inst: &Instance) -> ActionResult<()> {
        if self.skip_parked(inst, "register") {
            return Ok(());
        }
        let lb = &self.providers.lb;
        let text = lb.describe(LbOp::Register, inst);
        if self.is_dry_run() {
            self.record(text, Estimate::default());
            // A plan assumes the LB takes it back: it counts as serving again.
            self.ledger
                .finish(&inst.name, "register", Duration::ZERO, None);
            self.ledger.confirm_in(&inst.name);
            return Ok(());
        }
        info!(instance = %inst.name, step = "register", "{text}");
        self.act("register", Some(inst), &text, lb.register(inst))
            .await
    }

    pub async fn wait_in_service(&self, inst: &Instance) -> ActionResult<Duration> {
        if self.skip_parked(inst, "wait_in_service") {
            return Ok(Duration::ZERO);
        }
        let lb = &self.providers.lb;
        let timeout = self.inventory.lb.register_timeout;
        let op = LbOp::WaitInService { timeout };
        if self.record(
            lb.describe(op, inst),
            Estimate::new(TYPICAL_REGISTER.min(timeout), timeout),
        ) {
            return Ok(Duration::ZERO);
        }
        let text = lb.describe(op, inst);
        info!(instance = %inst.name, step = "in_service", "{text}");
        let waited = self
            .act(
                "wait_in_service",
                Some(inst),
                &text,
                lb.wait_in_service(inst, timeout),
            )
            .await?;
        info!(instance = %inst.name, step = "in_service", waited_ms = waited.as_millis() as u64,
            "{} in service after {}", inst.name, format_duration(waited));
        Ok(waited)
    }

    /// The blue/green pools taking traffic now, from the LB (a plan, which
    /// asks nothing, assumes the first pool of `lb.pools` is live).
    pub async fn live_pools(&self) -> ActionResult<Vec<String>> {
        if self.is_dry_run() {
            return Ok(self.inventory.lb.pools.keys().take(1).cloned().collect());
        }
        self.cancellable(self.providers.lb.live_pools(&self.inventory.instances))
            .await
    }

    pub async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        let lb = &self.providers.lb;
        let bound = self.inventory.lb.register_timeout;
        // The provider first waits for its own checks to pass on the pool.
        let text = format!(
            "{}, once the LB reports pool {pool} healthy (≤ {})",
            lb.describe_switch(pool),
            format_duration(bound)
        );
        self.plan_safe_point();
        if self.record(
            text.clone(),
            Estimate::new(TYPICAL_REGISTER.min(bound), bound),
        ) {
            return Ok(());
        }
        self.safe_point("switch_pool", None).await?;
        info!(step = "switch", "{text}");
        self.act("switch_pool", None, &text, lb.switch_pool(pool))
            .await
    }

    /// Reads are not side effects, but a dry run touches nothing: it reports
    /// what the run itself would have caused.
    pub async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        if self.is_dry_run() {
            return Ok(if self.is_out(&inst.name) {
                MemberState::OutOfService
            } else {
                MemberState::InService
            });
        }
        self.cancellable(self.providers.lb.state(inst)).await
    }

    pub async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        if self.is_dry_run() {
            return Ok(MemberStats::new());
        }
        self.cancellable(self.providers.lb.stats(inst)).await
    }

    pub async fn in_service_count(&self) -> ActionResult<usize> {
        let fleet = &self.inventory.instances;
        if self.is_dry_run() {
            return Ok(fleet.iter().filter(|i| !self.is_out(&i.name)).count());
        }
        self.cancellable(self.providers.lb.in_service_count(fleet))
            .await
    }
}
