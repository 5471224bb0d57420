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
use tracing::warn;

mod capacity;
pub mod control;
mod drain;
mod exec;
mod health;
mod lb;
pub(crate) mod on_host;
mod operator;
mod services;
mod survey;
mod weights;

pub use capacity::{decide, CapacityGuard, Decision};
pub use drain::{measured_drains, saved as drain_saved, sentence as drain_sentence, MeasuredDrain};
pub use weights::weights_for_share;

use crate::config::{format_duration, Instance, Inventory};
use crate::journal::Journal;
use crate::ledger::Ledger;
use crate::plan::{Estimate, Recorder};
use crate::primitives::{ActionError, ActionResult, ErrorKind, MemberState, Providers};

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
    /// The phase (`renew_cancel` counts them) and the last phase seen
    /// cancelled: what [`Effects::seen_cancelled`] compares, two atomic
    /// loads where the token costs a lock and a mutex (the script engine asks
    /// on every operation).
    phase: std::sync::atomic::AtomicU64,
    cancelled_phase: std::sync::atomic::AtomicU64,
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
    compensating: std::sync::atomic::AtomicUsize,
    /// A signal came while compensating: the run stops once it is done.
    stop_after_compensation: std::sync::atomic::AtomicBool,
    /// What `rollscript pause|resume|abort|promote` said (see [`control`]).
    control: control::RunControl,
    /// Connections being opened ahead ([`Effects::connect_ahead`]): awaited
    /// before the transport closes.
    warming: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Plans: the drains an earlier run measured (see `drain.rs`).
    measured_drain: std::sync::OnceLock<MeasuredDrain>,
    /// How long instances took to first pass their health check in this
    /// run: later checks try finely around that moment.
    ready: crate::providers::poll::Learned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepMode {
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
            phase: 0.into(),
            cancelled_phase: u64::MAX.into(),
            journal: std::sync::OnceLock::new(),
            ledger,
            step_mode: std::sync::Mutex::new(StepMode::Off),
            weighted: Default::default(),
            guard: CapacityGuard::default(),
            pool_fleets,
            parked: Default::default(),
            include_parked: Default::default(),
            compensating: Default::default(),
            stop_after_compensation: Default::default(),
            control: Default::default(),
            warming: Default::default(),
            measured_drain: Default::default(),
            ready: Default::default(),
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
        use std::sync::atomic::Ordering::SeqCst;
        let token = self.cancel.read().unwrap();
        let cancelled = token.is_cancelled();
        if cancelled {
            // Under the read lock: `renew_cancel` cannot start a phase between.
            self.cancelled_phase.store(self.phase.load(SeqCst), SeqCst);
        }
        cancelled
    }

    /// Whether [`Effects::is_cancelled`] has seen this phase cancelled: a
    /// cheap check for between script operations. Exact right after a
    /// primitive (the script context asks `is_cancelled` when one returns),
    /// so a script never runs its `catch` after an "interrupted"; else as
    /// recent as the last `is_cancelled`.
    pub fn seen_cancelled(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.cancelled_phase.load(SeqCst) == self.phase.load(SeqCst)
    }

    /// Starts a new phase with its own token (compensation after a cancel).
    pub fn renew_cancel(&self) -> CancellationToken {
        let fresh = CancellationToken::new();
        let mut token = self.cancel.write().unwrap();
        self.phase.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *token = fresh.clone();
        fresh
    }

    pub fn lb_kind(&self) -> &'static str {
        self.providers.lb.kind()
    }

    /// The LBs for messages: the kind, or with several `[[lb]]` each
    /// entry's name and kind (`haproxy-1 (haproxy), nginx (nginx)`).
    pub fn lb_label(&self) -> String {
        match self.inventory.lbs.as_slice() {
            [_, _, ..] => self
                .inventory
                .lbs
                .iter()
                .map(|l| format!("{} ({})", l.name, l.backend.kind()))
                .collect::<Vec<_>>()
                .join(", "),
            _ => self.lb_kind().to_string(),
        }
    }

    /// Capacity may have changed (compensation put an instance back).
    pub fn capacity_changed(&self) {
        self.guard.changed();
    }

    /// Compensates `name` now when this run has it out of service (the
    /// script's `compensate(inst)`), as the runtime does after a failure:
    /// true when it is back in service, or was never out. Blocking.
    pub fn compensate_now(self: &Arc<Self>, handle: &tokio::runtime::Handle, name: &str) -> bool {
        let Some(target) = self
            .ledger
            .out_of_service()
            .into_iter()
            .find(|t| t.name == name)
        else {
            return true;
        };
        crate::compensate::compensate(self, handle, &[target], None)
            .first()
            .is_some_and(|f| f.restored)
    }

    /// Compensation starts or ends: while it runs, a first Ctrl-C is only
    /// announced (cancelling it would leave instances out).
    pub fn begin_compensation(&self) {
        self.compensating
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The last compensation under way ended: a signal that came during it
    /// now stops the run (at its next safe point).
    pub fn end_compensation(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.compensating.fetch_sub(1, SeqCst) == 1
            && self.stop_after_compensation.swap(false, SeqCst)
        {
            self.cancel_token().cancel();
        }
    }

    /// A signal during compensation: let it finish, then stop.
    pub fn stop_after_compensation(&self) {
        self.stop_after_compensation
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_compensating(&self) -> bool {
        self.compensating.load(std::sync::atomic::Ordering::SeqCst) > 0
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

    /// Journals what a step was told from outside the run (an operator's
    /// answer, a metric's value), redacted.
    pub(crate) fn journal_answer(&self, step: &str, question: &str, answer: &str) {
        if let Some(j) = self.journal.get() {
            j.best_effort(&crate::journal::Record::Answer {
                at: crate::journal::now(),
                step: step.to_string(),
                question: crate::journal::redact(question),
                answer: answer.to_string(),
            });
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
        if !matches!(op, "notify" | "health" | "wait_capacity" | "metrics") {
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

    /// A plan note (e.g. `confirm` prompts) — no time, no effect.
    pub fn note(&self, text: impl Into<String>) {
        if let Some(r) = &self.recorder {
            r.step(text.into(), Estimate::default());
        }
    }

    /// Closes every connection the run opened.
    pub async fn close(&self) {
        let started = Instant::now();
        let warming = std::mem::take(&mut *self.warming.lock().unwrap());
        for w in warming {
            let _ = w.await;
        }
        self.providers.ssh.close().await;
        if started.elapsed() > Duration::from_secs(2) {
            warn!(
                "closing ssh connections took {}",
                format_duration(started.elapsed())
            );
        }
    }
}
