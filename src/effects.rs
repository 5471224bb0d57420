//! The one layer every side effect crosses.
//!
//! Live, it calls the providers, honours cancellation inside every wait and
//! keeps the books on which instances this run took out of service. In a dry
//! run it records a plan step instead of acting, so the plan *is* the record
//! of what the script would do. The journal and the capacity guard hook in here.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{format_duration, Instance, Inventory};
use crate::guard::{self, CapacityGuard, Decision};
use crate::journal::Journal;
use crate::ledger::Ledger;
use crate::plan::{Estimate, Recorder};
use crate::primitives::{
    ActionError, ActionResult, Attempt, Cmd, DrainReport, ErrorKind, ExecOutput, HealthProbe,
    HealthReport, LbOp, MemberState, MemberStats, Providers, Transport,
};

/// Remote commands in a plan estimate: what they usually take (nothing in the
/// inventory says, so the plan states this assumption).
pub const TYPICAL_COMMAND: Duration = Duration::from_secs(10);
/// Registration to in-service, typically: one or two LB health-check intervals.
pub const TYPICAL_REGISTER: Duration = Duration::from_secs(2);

/// Options of one command call (`ssh(inst, cmd, #{...})`).
#[derive(Debug, Clone, Copy)]
pub struct ExecOptions {
    pub timeout: Option<Duration>,
    /// A non-zero exit is an error (`command_failed`) unless this is false.
    pub check: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            timeout: None,
            check: true,
        }
    }
}

pub struct Effects {
    pub inventory: Arc<Inventory>,
    providers: Providers,
    /// Some in a dry run: record, don't act.
    recorder: Option<Arc<Recorder>>,
    /// Swapped for a fresh token when compensation starts, so the cleanup
    /// after a first Ctrl-C can still wait; a second Ctrl-C cancels that one.
    cancel: RwLock<CancellationToken>,
    journal: std::sync::OnceLock<Arc<Journal>>,
    /// Per-instance bookkeeping: out of service, touched, failed, timings.
    pub ledger: Ledger,
    step_mode: std::sync::Mutex<StepMode>,
    /// Instances whose LB weight this run changed and has not reset: a
    /// failed run puts them back to their configured weight.
    weighted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Check-and-deregister as one critical section for every branch.
    guard: CapacityGuard,
    /// Blue/green: each pool's members, the fleet its capacity is counted in.
    pool_fleets: std::collections::BTreeMap<String, Vec<Instance>>,
    /// Out of rotation before the run (name → the LB's word for it): left
    /// as found. Set once by [`Effects::survey`].
    parked: RwLock<std::collections::HashMap<String, String>>,
    /// `--include-parked`: parked instances are deployed but stay out.
    include_parked: std::sync::atomic::AtomicBool,
    /// Compensation is under way: a first Ctrl-C must not cancel it.
    compensating: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepMode {
    Off,
    Ask,
    All,
}

impl Effects {
    pub fn new(
        inventory: Arc<Inventory>,
        providers: Providers,
        recorder: Option<Arc<Recorder>>,
        cancel: CancellationToken,
    ) -> Self {
        let ledger = Ledger::new(inventory.instances.iter().map(|i| i.name.clone()));
        let mut pool_fleets: std::collections::BTreeMap<String, Vec<Instance>> = Default::default();
        for i in &inventory.instances {
            if let Some(p) = &i.pool {
                pool_fleets.entry(p.clone()).or_default().push(i.clone());
            }
        }
        Self {
            inventory,
            providers,
            recorder,
            cancel: RwLock::new(cancel),
            journal: std::sync::OnceLock::new(),
            ledger,
            step_mode: std::sync::Mutex::new(StepMode::Off),
            weighted: Default::default(),
            guard: CapacityGuard::default(),
            pool_fleets,
            parked: Default::default(),
            include_parked: Default::default(),
            compensating: Default::default(),
        }
    }

    /// Journals every effect from now on (intent before, result after).
    /// Set once, after the script compiled: a script that cannot run leaves
    /// no journal behind.
    pub fn set_journal(&self, journal: Arc<Journal>) {
        let _ = self.journal.set(journal);
    }

    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.get()
    }

    pub fn is_dry_run(&self) -> bool {
        self.recorder.is_some()
    }

    pub fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.recorder.as_ref()
    }

    /// The token that stops the current phase (the run, or its compensation).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.read().unwrap().clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.read().unwrap().is_cancelled()
    }

    /// Starts a new phase with its own token (compensation after a cancel).
    pub fn renew_cancel(&self) -> CancellationToken {
        let fresh = CancellationToken::new();
        *self.cancel.write().unwrap() = fresh.clone();
        fresh
    }

    pub fn lb_kind(&self) -> &'static str {
        self.providers.lb.kind()
    }

    /// Capacity may have changed (compensation put an instance back).
    pub fn capacity_changed(&self) {
        self.guard.changed();
    }

    /// Compensation starts or ends: while it runs, a first Ctrl-C is only
    /// announced (cancelling it would leave instances out).
    pub fn set_compensating(&self, on: bool) {
        self.compensating
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_compensating(&self) -> bool {
        self.compensating.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Checks the inventory against the LB (reads only): one sentence per
    /// instance the LB disagrees about.
    pub async fn verify_lb(&self) -> ActionResult<Vec<String>> {
        if self.is_dry_run() {
            return Ok(Vec::new());
        }
        self.cancellable(self.providers.lb.verify(&self.inventory.instances))
            .await
    }

    /// Instances registered by this run without a `wait_in_service`: the
    /// ones the LB reports in service now count as back.
    pub async fn confirm_registered(&self) {
        for name in self.ledger.registered_unconfirmed() {
            let Some(inst) = self.inventory.instance(&name) else {
                continue;
            };
            if let Ok(MemberState::InService) = self.state(inst).await {
                self.ledger.confirm_in(&name);
            }
        }
    }

    /// Instances this run took out of service and has not put back, by name.
    pub fn out_of_service(&self) -> Vec<String> {
        self.ledger
            .out_of_service()
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    fn is_out(&self, name: &str) -> bool {
        self.ledger.is_out(name)
    }

    /// Runs `fut` unless the run is cancelled first; a cancel mid-wait drops
    /// the wait at once rather than at the next script statement.
    async fn cancellable<T>(&self, fut: impl Future<Output = ActionResult<T>>) -> ActionResult<T> {
        let token = self.cancel_token();
        if token.is_cancelled() {
            return Err(ActionError::cancelled());
        }
        tokio::select! {
            biased;
            _ = token.cancelled() => Err(ActionError::cancelled()),
            r = fut => r,
        }
    }

    /// Acts: journal the intent, run `fut` (cancellable), journal the result,
    /// keep the ledger.
    async fn act<T>(
        &self,
        op: &'static str,
        inst: Option<&Instance>,
        text: &str,
        fut: impl Future<Output = ActionResult<T>>,
    ) -> ActionResult<T> {
        let name = inst.map(|i| i.name.as_str());
        if !matches!(op, "notify" | "health" | "wait_capacity") {
            self.step_gate(text).map_err(|e| match name {
                Some(n) if e.host.is_none() => e.host(n),
                _ => e,
            })?;
        }
        // Durable or nothing: no record of the intent, no effect. The run
        // stops here and compensates (see `journal`).
        let seq = match self.journal.get().map(|j| j.intent(op, name, text)) {
            None => None,
            Some(Ok(seq)) => Some(seq),
            Some(Err(e)) => {
                self.cancel_token().cancel();
                let err = ActionError::new(
                    ErrorKind::Cancelled,
                    format!(
                        "journal write failed: {}: not done: {text}",
                        crate::journal::io_text(&e)
                    ),
                );
                return Err(match name {
                    Some(n) => err.host(n),
                    None => err,
                });
            }
        };
        if let Some(n) = name {
            self.ledger.begin(n, op);
        }
        let started = Instant::now();
        let r = self.cancellable(fut).await;
        let took = started.elapsed();
        if let (Some(j), Some(seq)) = (self.journal.get(), seq) {
            j.result(seq, took, r.as_ref().err());
        }
        if let Some(n) = name {
            self.ledger.finish(n, op, took, r.as_ref().err());
        }
        // An instance may have come back (or a deregister failed): branches
        // waiting for capacity look again.
        self.guard.changed();
        r
    }

    fn record(&self, text: String, estimate: Estimate) -> bool {
        match &self.recorder {
            Some(r) => {
                r.step(text, estimate);
                true
            }
            None => false,
        }
    }

    // ---- load balancer ------------------------------------------------------

    pub async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        if self.skip_parked(inst, "deregister") {
            return Ok(());
        }
        let lb = &self.providers.lb;
        let text = lb.describe(LbOp::Deregister, inst);
        if self.is_dry_run() {
            self.plan_capacity(inst)?;
            self.record(text, Estimate::default());
            self.ledger
                .finish(&inst.name, "deregister", Duration::ZERO, None);
            return Ok(());
        }
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
        if self.record(
            lb.describe(op, inst),
            Estimate::new(lb.typical_drain().min(timeout), timeout),
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
        let report = self.act("wait_drained", Some(inst), &text, wait).await?;
        let saved = report
            .configured_delay
            .map(|d| d.saturating_sub(report.waited))
            .filter(|d| !d.is_zero());
        match saved {
            Some(saved) => info!(
                instance = %inst.name, step = "drained", waited_ms = report.waited.as_millis() as u64,
                "{} drained in {} ({} sooner than the LB's fixed delay)",
                inst.name, format_duration(report.waited), format_duration(saved)
            ),
            None => info!(
                instance = %inst.name, step = "drained", waited_ms = report.waited.as_millis() as u64,
                "{} drained in {}", inst.name, format_duration(report.waited)
            ),
        }
        Ok(report)
    }

    pub async fn register(&self, inst: &Instance) -> ActionResult<()> {
        if self.skip_parked(inst, "register") {
            return Ok(());
        }
        let lb = &self.providers.lb;
        let text = lb.describe(LbOp::Register, inst);
        if self.record(text.clone(), Estimate::default()) {
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

    pub async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        let lb = &self.providers.lb;
        let op = LbOp::SetWeight(weight);
        if self.record(lb.describe(op, inst), Estimate::default()) {
            return Ok(());
        }
        let text = lb.describe(op, inst);
        info!(instance = %inst.name, step = "set_weight", "{text}");
        if lb.supports_weights() {
            self.weighted.lock().unwrap().insert(inst.name.clone());
        }
        self.act("set_weight", Some(inst), &text, lb.set_weight(inst, weight))
            .await
    }

    pub fn supports_weights(&self) -> bool {
        self.providers.lb.supports_weights()
    }

    /// Counts every instance as re-weighted, so `reset_weights` puts the
    /// whole fleet back as configured (`recover` after a killed run).
    pub fn mark_all_weighted(&self) {
        self.weighted
            .lock()
            .unwrap()
            .extend(self.inventory.instances.iter().map(|i| i.name.clone()));
    }

    /// Instances whose weight this run changed and has not reset.
    pub fn weights_changed(&self) -> Vec<String> {
        self.weighted.lock().unwrap().iter().cloned().collect()
    }

    /// Sets LB weights so that `group` receives about `share` (0 < share < 1)
    /// of the traffic of its fleet (its pool, else the inventory): the rest
    /// of the fleet gets one weight, `group` another. Returns the share the
    /// integer weights give. Refused, before anything changes, where the LB
    /// has no per-instance weights.
    pub async fn shift_traffic(&self, group: &[Instance], share: f64) -> ActionResult<f64> {
        let lb = &self.providers.lb;
        if !lb.supports_weights() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "shift_traffic: lb.kind = {} has no per-instance weights (HAProxy and nginx have); stage by instance count instead",
                    self.inventory.lb.backend.kind()
                ),
            ));
        }
        if !(share > 0.0 && share < 1.0) {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "shift_traffic: the share must be between 0% and 100% (exclusive), got {share}"
                ),
            ));
        }
        let Some(first) = group.first() else {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                "shift_traffic: the group is empty",
            ));
        };
        let in_group = |i: &Instance| group.iter().any(|g| g.name == i.name);
        let others: Vec<&Instance> = self
            .inventory
            .instances
            .iter()
            .filter(|i| i.pool == first.pool && !in_group(i))
            .collect();
        if others.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                "shift_traffic: the group is the whole fleet; there is no traffic to shift",
            ));
        }
        let (wg, wo, got) = weights_for_share(group.len(), others.len(), share);
        let changes: Vec<(&Instance, Option<u32>)> = group
            .iter()
            .map(|i| (i, Some(wg)))
            .chain(others.iter().map(|i| (*i, Some(wo))))
            .collect();
        let names = group
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "{}: weight {wg} for {names}, {wo} for the other {} instance(s): {:.1}% of the traffic to {names}",
            lb.kind(),
            others.len(),
            got * 100.0
        );
        self.weighted
            .lock()
            .unwrap()
            .extend(changes.iter().map(|(i, _)| i.name.clone()));
        if self.record(text.clone(), Estimate::default()) {
            return Ok(got);
        }
        info!(step = "shift_traffic", "{text}");
        self.act("shift_traffic", None, &text, lb.set_weights(&changes))
            .await?;
        Ok(got)
    }

    /// Puts every weight this run changed back to the configured one.
    /// Returns how many instances it reset.
    pub async fn reset_weights(&self) -> ActionResult<usize> {
        let names = self.weights_changed();
        if names.is_empty() {
            return Ok(0);
        }
        let insts: Vec<&Instance> = names
            .iter()
            .filter_map(|n| self.inventory.instance(n))
            .collect();
        let changes: Vec<(&Instance, Option<u32>)> = insts.iter().map(|i| (*i, None)).collect();
        let lb = &self.providers.lb;
        let mut who = insts
            .iter()
            .take(5)
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if insts.len() > 5 {
            who.push_str(&format!(" and {} more", insts.len() - 5));
        }
        let text = format!("{}: weights back as configured: {who}", lb.kind());
        if !self.record(text.clone(), Estimate::default()) {
            info!(step = "reset_weights", "{text}");
            self.act("reset_weights", None, &text, lb.set_weights(&changes))
                .await?;
        }
        self.weighted.lock().unwrap().clear();
        Ok(insts.len())
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
        if self.record(
            text.clone(),
            Estimate::new(TYPICAL_REGISTER.min(bound), bound),
        ) {
            return Ok(());
        }
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

    /// The fleet `inst`'s capacity is counted in: its pool (blue/green),
    /// else the inventory. Borrowed: a plan over 10,000 instances asks this
    /// for every one of them.
    fn fleet_of(&self, inst: &Instance) -> &[Instance] {
        match inst.pool.as_ref().and_then(|p| self.pool_fleets.get(p)) {
            Some(pool) => pool,
            None => &self.inventory.instances,
        }
    }

    fn floor_of(&self, fleet: &[Instance]) -> usize {
        self.inventory.lb.min_in_service.of_ceil(fleet.len())
    }

    /// One reading of the LB inside the critical section.
    async fn capacity_now(&self, inst: &Instance) -> ActionResult<Decision> {
        let fleet = self.fleet_of(inst);
        let states = self.cancellable(self.providers.lb.states(fleet)).await?;
        Ok(guard::decide(
            fleet,
            &states,
            |n| self.ledger.is_out(n),
            &inst.name,
            self.floor_of(fleet),
        ))
    }

    fn capacity_error(
        &self,
        inst: &Instance,
        d: &Decision,
        waited: Option<Duration>,
    ) -> ActionError {
        let why = match waited {
            Some(w) => format!(
                "; waited {} for an instance to come back",
                format_duration(w)
            ),
            None if !d.worth_waiting() => {
                "; no instance this run took out is there to come back".to_string()
            }
            None => String::new(),
        };
        ActionError::new(
            ErrorKind::Capacity,
            format!(
                "capacity guard: taking {} out would leave {} of {} instances in service, below lb.min_in_service = {} ({}){why}",
                inst.name,
                d.after,
                d.fleet,
                self.inventory.lb.min_in_service,
                d.floor
            ),
        )
        .host(inst.name.clone())
        .detail("in_service", d.serving)
        .detail("min_in_service", d.floor)
    }

    /// Enters the capacity critical section with room to take `inst` out,
    /// counted from the LB's real state — whatever the script says. Waits
    /// (journalled as `wait_capacity`, bounded by `lb.register_timeout` +
    /// `lb.drain_timeout`) while instances this run took out are on their
    /// way back; refuses at once when none is.
    async fn take_capacity(
        &self,
        inst: &Instance,
    ) -> ActionResult<Option<tokio::sync::MutexGuard<'_, ()>>> {
        if self.providers.lb.kind() == "none" {
            return Ok(None);
        }
        let mut changed = Box::pin(self.guard.next_change());
        changed.as_mut().enable();
        let section = self
            .cancellable(async { Ok(self.guard.section().await) })
            .await?;
        let d = self.capacity_now(inst).await?;
        if d.allowed() {
            return Ok(Some(section));
        }
        drop(section);
        if !d.worth_waiting() {
            return Err(self.capacity_error(inst, &d, None));
        }
        let bound = self.inventory.lb.register_timeout + self.inventory.lb.drain_timeout;
        let text = format!(
            "{}: waiting for capacity: taking it out would leave {} of {} in service (lb.min_in_service = {}); waiting up to {} for an instance to come back",
            inst.name,
            d.after,
            d.fleet,
            self.inventory.lb.min_in_service,
            format_duration(bound)
        );
        info!(instance = %inst.name, step = "wait_capacity", "{text}");
        let wait = async {
            let started = tokio::time::Instant::now();
            let mut changed = changed;
            loop {
                self.ledger.set_detail(
                    &inst.name,
                    format!(
                        "waiting for capacity ({} of {} in service)",
                        d.serving, d.fleet
                    ),
                );
                // An instance may also come back by the LB's own checks.
                let poll = self
                    .inventory
                    .lb
                    .poll_interval
                    .unwrap_or(Duration::from_millis(500));
                tokio::select! {
                    _ = &mut changed => {},
                    _ = tokio::time::sleep(poll) => {},
                }
                changed = Box::pin(self.guard.next_change());
                changed.as_mut().enable();
                let section = self.guard.section().await;
                let d = self.capacity_now(inst).await?;
                if d.allowed() {
                    return Ok(section);
                }
                drop(section);
                let waited = started.elapsed();
                if waited >= bound || !d.worth_waiting() {
                    return Err(self.capacity_error(inst, &d, Some(waited)));
                }
            }
        };
        let section = self.act("wait_capacity", Some(inst), &text, wait).await?;
        Ok(Some(section))
    }

    /// The plan's view of the guard: parallel branches run one after another
    /// in a dry run, so the instances of the branches that would be out at
    /// the same time are counted from the recorder's lanes. A branch that
    /// would wait is noted, and the group's concurrency capped to what the
    /// floor allows, so the estimate is the real one.
    fn plan_capacity(&self, inst: &Instance) -> ActionResult<()> {
        if self.providers.lb.kind() == "none" {
            return Ok(());
        }
        let Some(rec) = &self.recorder else {
            return Ok(());
        };
        let fleet = self.fleet_of(inst);
        let floor = self.floor_of(fleet);
        // Only this run's own removals count in a plan; they are few.
        let out = self.ledger.out_names();
        let out_here = match &inst.pool {
            None => out.len(),
            Some(_) => fleet.iter().filter(|i| out.contains(&i.name)).count(),
        };
        let siblings = rec.concurrent_siblings();
        let serving = fleet.len().saturating_sub(out_here + siblings);
        let inst_serving = !out.contains(&inst.name);
        let d = Decision {
            serving,
            after: serving.saturating_sub(inst_serving as usize),
            floor,
            fleet: fleet.len(),
            ours_out: out_here + siblings,
        };
        if d.allowed() {
            return Ok(());
        }
        if out_here > 0 || siblings == 0 {
            return Err(self.capacity_error(inst, &d, None));
        }
        let lanes = fleet.len().saturating_sub(floor).max(1);
        rec.note(format!(
            "{} waits for capacity: {} of {} would be out at once, lb.min_in_service = {} ({floor}); it goes when one is back in service (at most {lanes} at a time)",
            inst.name,
            siblings + 1,
            fleet.len(),
            self.inventory.lb.min_in_service,
        ));
        rec.cap_lanes(lanes);
        Ok(())
    }

    // ---- instances found out of rotation ------------------------------------

    /// Reads every instance's LB state once, at the start of a run (under
    /// the deploy lock): an instance an operator took out of rotation is
    /// parked — not deployed and not put back (`--include-parked`: deployed,
    /// left out). `ours`: instances an earlier run of ours left out
    /// (`--only-failed`), which are not parked. An idle blue/green pool (no
    /// member in rotation) is not parked: out of rotation is its normal state.
    /// Returns the parked instances with the LB's word for their state.
    pub async fn survey(
        &self,
        include_parked: bool,
        ours: &std::collections::BTreeSet<String>,
    ) -> ActionResult<Vec<(String, String)>> {
        self.include_parked
            .store(include_parked, std::sync::atomic::Ordering::SeqCst);
        if self.is_dry_run() || self.providers.lb.kind() == "none" {
            return Ok(Vec::new());
        }
        let lb = &self.providers.lb;
        let fleet = &self.inventory.instances;
        let states = self.cancellable(lb.states(fleet)).await?;
        let idle_pool = |pool: &str| {
            fleet
                .iter()
                .zip(&states)
                .filter(|(i, _)| i.pool.as_deref() == Some(pool))
                .all(|(_, s)| s.out_of_rotation())
        };
        let mut parked = Vec::new();
        for (inst, state) in fleet.iter().zip(&states) {
            if !state.out_of_rotation() || ours.contains(&inst.name) {
                continue;
            }
            if inst.pool.as_deref().is_some_and(idle_pool) {
                continue;
            }
            let word = lb.state_word(state);
            self.ledger.park(&inst.name, &word);
            parked.push((inst.name.clone(), word));
        }
        *self.parked.write().unwrap() = parked.iter().cloned().collect();
        Ok(parked)
    }

    /// Parked and not `--include-parked`: `instances()` leaves it out.
    pub fn hidden(&self, name: &str) -> bool {
        !self
            .include_parked
            .load(std::sync::atomic::Ordering::SeqCst)
            && self.parked.read().unwrap().contains_key(name)
    }

    /// LB steps on a parked instance change nothing: it stays as found.
    fn skip_parked(&self, inst: &Instance, op: &str) -> bool {
        let parked = self.parked.read().unwrap();
        let Some(word) = parked.get(&inst.name) else {
            return false;
        };
        info!(
            instance = %inst.name, step = op,
            "{}: {op} skipped: out of rotation before the run ({word}), it stays out",
            inst.name
        );
        true
    }

    // ---- commands -----------------------------------------------------------

    pub async fn ssh(
        &self,
        inst: &Instance,
        cmd: &Cmd,
        opts: ExecOptions,
    ) -> ActionResult<ExecOutput> {
        let transport = self.providers.ssh.clone();
        let timeout = opts.timeout.unwrap_or(self.inventory.ssh.command_timeout);
        self.exec(&*transport, inst, cmd, opts, timeout).await
    }

    pub async fn local(&self, cmd: &Cmd, opts: ExecOptions) -> ActionResult<ExecOutput> {
        let transport = self.providers.local.clone();
        let timeout = opts.timeout.unwrap_or(self.inventory.ssh.command_timeout);
        self.exec(&*transport, &Instance::local(), cmd, opts, timeout)
            .await
    }

    async fn exec(
        &self,
        transport: &dyn Transport,
        inst: &Instance,
        cmd: &Cmd,
        opts: ExecOptions,
        timeout: Duration,
    ) -> ActionResult<ExecOutput> {
        let text = transport.describe(inst, cmd);
        if self.record(
            text.clone(),
            Estimate::new(TYPICAL_COMMAND.min(timeout), timeout),
        ) {
            return Ok(ExecOutput::default());
        }
        info!(instance = %inst.name, step = "exec", "{}", crate::journal::redact(&text));
        let is_local = std::ptr::eq(
            transport as *const dyn Transport as *const u8,
            &*self.providers.local as *const dyn Transport as *const u8,
        );
        let (op, target) = if is_local {
            ("local", None)
        } else {
            ("ssh", Some(inst))
        };
        let checked = async {
            let out = transport.exec(inst, cmd, timeout).await?;
            if opts.check && out.status != 0 {
                return Err(ActionError::new(ErrorKind::CommandFailed, "command failed")
                    .host(inst.name.clone())
                    .command(cmd.to_shell())
                    .status(out.status)
                    .stderr_tail(&out.stderr));
            }
            Ok(out)
        };
        let out = self.act(op, target, &text, checked).await?;
        let is_rollback = matches!((cmd, &self.inventory.app.rollback),
            (Cmd::Shell(c), Some(r)) if c == r);
        if let (Some(inst), true) = (target, is_rollback) {
            self.ledger.rollback_ran(&inst.name);
        }
        Ok(out)
    }

    // ---- health ---------------------------------------------------------------

    /// The probe `health(inst)` runs, from the inventory's `[health]`.
    pub fn probe_for(&self, inst: &Instance) -> HealthProbe {
        let h = &self.inventory.health;
        HealthProbe {
            url: self.inventory.health_url(inst),
            expect_status: h.expect_status,
            expect_body: h.expect_body.clone(),
            timeout: h.timeout,
            interval: h.interval,
            retries: h.retries,
            healthy_threshold: h.healthy_threshold,
        }
    }

    pub async fn health(&self, who: &str, probe: &HealthProbe) -> ActionResult<HealthReport> {
        let worst = (probe.timeout + probe.interval) * probe.retries;
        let typical = probe.interval * probe.healthy_threshold.saturating_sub(1);
        let text = format!(
            "http GET {}: expect {}{}, {} in a row (up to {} tries)",
            probe.url,
            probe.expect_status,
            probe
                .expect_body
                .as_ref()
                .map(|b| format!(" with body containing {b:?}"))
                .unwrap_or_default(),
            probe.healthy_threshold,
            probe.retries
        );
        if self.record(text.clone(), Estimate::new(typical, worst)) {
            return Ok(HealthReport {
                url: probe.url.clone(),
                attempts: vec![Attempt {
                    at: Duration::ZERO,
                    outcome: "assumed healthy (dry run)".into(),
                    ok: true,
                    latency: Duration::ZERO,
                }],
                duration: Duration::ZERO,
            });
        }
        info!(instance = %who, step = "health", "{text}");
        let inst = self.inventory.instance(who).cloned();
        let check = async {
            self.providers.health.check(probe).await.map_err(|e| {
                if e.host.is_none() {
                    e.host(who)
                } else {
                    e
                }
            })
        };
        let report = self.act("health", inst.as_ref(), &text, check).await?;
        info!(instance = %who, step = "healthy", "{who} healthy after {} attempt(s) in {}",
            report.attempts.len(), format_duration(report.duration));
        Ok(report)
    }

    // ---- time -------------------------------------------------------------

    pub async fn sleep(&self, d: Duration) -> ActionResult<()> {
        if self.record(format!("wait {}", format_duration(d)), Estimate::exact(d)) {
            return Ok(());
        }
        info!(step = "sleep", "waiting {}", format_duration(d));
        self.cancellable(async {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await
    }

    /// Takes the migration lock (a PostgreSQL advisory lock); `Ok(None)` in a dry run.
    pub async fn migration_lock(
        &self,
        url: &str,
        key: i64,
    ) -> ActionResult<Option<crate::providers::postgres::AdvisoryLock>> {
        let text = format!(
            "postgres {}: pg_try_advisory_lock({key})",
            crate::journal::redact(url)
        );
        if self.record(text.clone(), Estimate::default()) {
            return Ok(None);
        }
        info!(step = "db_lock", "{text}");
        let lock = self
            .act(
                "db_lock",
                None,
                &text,
                crate::providers::postgres::try_lock(url, key),
            )
            .await?;
        match lock {
            Some(l) => Ok(Some(l)),
            None => Err(ActionError::new(
                ErrorKind::Locked,
                format!("another session holds the migration lock {key} on {}: a migration is already running", crate::journal::redact(url)),
            )),
        }
    }

    /// One Prometheus instant query; the first sample's value, `None` for
    /// no data (a dry run has none either).
    pub async fn prometheus(&self, url: &str, promql: &str) -> ActionResult<Option<f64>> {
        if self.is_dry_run() {
            return Ok(None);
        }
        self.cancellable(crate::providers::http::prometheus_query(url, promql))
            .await
    }

    /// Turns on `--step`: every mutating step asks first.
    pub fn enable_step_mode(&self) {
        *self.step_mode.lock().unwrap() = StepMode::Ask;
    }

    /// `--step`: asks before a mutating step (yes / no / all / abort). One
    /// prompt at a time, even from `parallel` branches.
    fn step_gate(&self, text: &str) -> ActionResult<()> {
        let mut mode = self.step_mode.lock().unwrap();
        if *mode != StepMode::Ask {
            return Ok(());
        }
        let answer = crate::ui::suspend(|| {
            use std::io::{BufRead, Write};
            let mut err = std::io::stderr();
            let _ = write!(err, "next step: {text}\n  run it? [y]es / [n]o, skip it / [a]ll, stop asking / a[b]ort: ");
            let _ = err.flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            line.trim().to_ascii_lowercase()
        });
        match answer.as_str() {
            "y" | "yes" | "" => Ok(()),
            "a" | "all" => {
                *mode = StepMode::All;
                Ok(())
            }
            "n" | "no" => Err(ActionError::new(
                ErrorKind::Cancelled,
                format!("skipped by the operator: {text}"),
            )),
            _ => {
                drop(mode);
                self.cancel_token().cancel();
                Err(ActionError::cancelled())
            }
        }
    }

    /// Posts `message` to a Slack-compatible webhook; failure is a warning.
    pub async fn notify(&self, url: &str, message: &str) -> bool {
        let text = format!("notify {}: {message:?}", crate::journal::redact(url));
        if self.record(text.clone(), Estimate::default()) {
            return true;
        }
        let r = self
            .act("notify", None, &text, async {
                crate::providers::http::notify(url, message)
                    .await
                    .map_err(|e| {
                        ActionError::new(
                            ErrorKind::Unreachable,
                            format!("notification not delivered: {e}"),
                        )
                    })
            })
            .await;
        match r {
            Ok(()) => true,
            Err(e) => {
                warn!("{e} (the deploy goes on)");
                false
            }
        }
    }

    /// A plan note (e.g. `confirm` prompts) — no time, no effect.
    pub fn note(&self, text: impl Into<String>) {
        if let Some(r) = &self.recorder {
            r.step(text.into(), Estimate::default());
        }
    }

    /// Closes every connection the run opened.
    pub async fn close(&self) {
        let started = Instant::now();
        self.providers.ssh.close().await;
        if started.elapsed() > Duration::from_secs(2) {
            warn!(
                "closing ssh connections took {}",
                format_duration(started.elapsed())
            );
        }
    }
}

/// Integer weights (1-256) for `g` instances against `o` others so that the
/// `g` receive about `share` of the traffic: (group weight, others' weight,
/// the share they give): the closest pair, the larger when several are as close.
pub fn weights_for_share(g: usize, o: usize, share: f64) -> (u32, u32, f64) {
    let given = |wg: u32, wo: u32| {
        let a = g as f64 * wg as f64;
        a / (a + o as f64 * wo as f64)
    };
    let mut best = (1, 256, given(1, 256));
    for wo in (1..=256u32).rev() {
        let exact = share * o as f64 * wo as f64 / ((1.0 - share) * g as f64);
        let wg = (exact.round() as u32).clamp(1, 256);
        let got = given(wg, wo);
        if (got - share).abs() < (best.2 - share).abs() - 1e-9 {
            best = (wg, wo, got);
        }
    }
    best
}

#[cfg(test)]
mod weight_tests {
    use super::weights_for_share;

    #[test]
    fn shares_are_close_and_weights_in_range() {
        for (g, o) in [(1, 2), (1, 9), (3, 27), (1, 9999), (2, 1)] {
            for share in [0.01, 0.05, 0.25, 0.5, 0.9] {
                let (wg, wo, got) = weights_for_share(g, o, share);
                assert!((1..=256).contains(&wg) && (1..=256).contains(&wo));
                let exact = g as f64 * wg as f64 / (g as f64 * wg as f64 + o as f64 * wo as f64);
                assert!((exact - got).abs() < 1e-12);
                // Reachable shares are matched closely; 1 of 10,000 at 256
                // against 1 is the limit of HAProxy's weights.
                let reachable = (g as f64 * 256.0) / (g as f64 * 256.0 + o as f64) >= share
                    && g as f64 / (g as f64 + o as f64 * 256.0) <= share;
                if reachable {
                    assert!(
                        (got - share).abs() < 0.005,
                        "{g}/{o} at {share}: {got} ({wg}, {wo})"
                    );
                }
            }
        }
        // 1 canary against 2: 5% exactly, with the largest such weights.
        assert_eq!(weights_for_share(1, 2, 0.05), (26, 247, 0.05));
    }
}
