//! Per-instance bookkeeping of one run: what happened to each instance, how
//! long it took and how much of that was waiting on the load balancer. The
//! final summary, compensation and `--only-failed` read it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::primitives::{ActionError, ErrorKind};

#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub steps: u32,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Time spent in drain and in-service waits.
    pub lb_wait: Duration,
    /// Out of rotation because of this run.
    pub out: bool,
    /// A command ran while it was out (a deploy may be half done).
    pub touched: bool,
    /// A command succeeded while out and it went back in: updated.
    pub updated: bool,
    /// `app.rollback` ran while out: going back in makes it rolled back,
    /// not updated.
    pub rollback_ran: bool,
    /// Back in after `app.rollback`: on the old release again.
    pub rolled_back: bool,
    /// `register` succeeded and the LB has not yet confirmed it in service
    /// (`wait_in_service`): still counted out, so a failure from here on is
    /// compensated and the capacity guard does not count it.
    pub registered: bool,
    /// Out of rotation before the run (the LB's word: `MAINT`, `down`, …):
    /// left as found.
    pub parked: Option<String>,
    pub error: Option<String>,
    /// What compensation did, if it ran.
    pub compensation: Option<String>,
    /// What the run is doing there now (an op name), for progress.
    pub current: Option<&'static str>,
    pub step_started: Option<Instant>,
    /// A live detail of the current step ("3 connections"), for progress.
    pub detail: Option<String>,
    /// The last drain: how long, what ended it, the LB's fixed delay.
    pub drain: Option<crate::primitives::DrainReport>,
}

/// The ledger at one instant, in inventory order.
pub type Snapshot = Vec<(String, Entry)>;

/// An instance a run (or a dead run) left out of service: what compensation
/// needs to know before it reads the LB's own view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// A command ran on it while it was out: a deploy may be half done.
    pub touched: bool,
    /// It was registered again and the LB had not confirmed it in service.
    pub registered: bool,
}

impl Target {
    fn of(name: String, e: &Entry) -> Self {
        Self {
            name,
            touched: e.touched,
            registered: e.registered,
        }
    }
}

impl Entry {
    pub fn outcome(&self) -> String {
        if let Some(word) = &self.parked {
            return match &self.error {
                Some(e) => format!("parked ({word}), failed: {e}"),
                None if self.steps > 0 => {
                    format!("parked ({word}): deployed, left out of rotation")
                }
                None => format!("parked ({word}): left as found"),
            };
        }
        match (&self.error, self.out, &self.compensation) {
            (_, false, Some(c)) => format!("restored ({c})"),
            (_, true, Some(c)) => format!("LEFT OUT: {c}"),
            (Some(e), true, None) => format!("LEFT OUT: {e}"),
            (Some(e), false, None) => format!("failed: {e}"),
            (None, true, None) => "out of service".into(),
            (None, false, None) if self.rolled_back => "rolled back".into(),
            (None, false, None) if self.updated => "updated".into(),
            (None, false, None) if self.steps > 0 => "ok".into(),
            _ => "untouched".into(),
        }
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The outcome as one stable word, for machines: `updated`,
    /// `rolled_back`, `restored`, `left_out`, `failed`, `parked`, `ok`,
    /// `out_of_service`, `untouched`.
    pub fn state(&self) -> &'static str {
        if self.parked.is_some() {
            return "parked";
        }
        match (&self.error, self.out, &self.compensation) {
            (_, false, Some(_)) => "restored",
            (_, true, _) => "left_out",
            (Some(_), false, None) => "failed",
            (None, false, None) if self.rolled_back => "rolled_back",
            (None, false, None) if self.updated => "updated",
            (None, false, None) if self.steps > 0 => "ok",
            _ => "untouched",
        }
    }

    /// Done with, one way or another: updated, failed, or compensated.
    pub fn finished(&self) -> bool {
        self.current.is_none()
            && (self.updated
                || self.rolled_back
                || self.error.is_some()
                || self.compensation.is_some())
    }

    pub fn duration(&self) -> Duration {
        match (self.first, self.last) {
            (Some(a), Some(b)) => b.saturating_duration_since(a),
            _ => Duration::ZERO,
        }
    }
}

#[derive(Default)]
pub struct Ledger {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// The names with `out` set, kept beside the entries so the capacity
    /// guard does not scan the whole fleet on every deregister.
    out: Mutex<std::collections::BTreeSet<String>>,
    order: Mutex<Vec<String>>,
}

impl Ledger {
    pub fn new(instances: impl IntoIterator<Item = String>) -> Self {
        let order: Vec<String> = instances.into_iter().collect();
        Self {
            out: Mutex::new(Default::default()),
            entries: Mutex::new(
                order
                    .iter()
                    .map(|n| (n.clone(), Entry::default()))
                    .collect(),
            ),
            order: Mutex::new(order),
        }
    }

    fn begin_inner(entry: &mut Entry, step: &'static str) {
        entry.first.get_or_insert_with(Instant::now);
        entry.current = Some(step);
        entry.step_started = Some(Instant::now());
        // Pessimistic: from the moment a deregister is sent the instance may
        // be out, even if we are interrupted before the LB answers.
        if step == "deregister" {
            entry.out = true;
        }
    }

    /// Records the end of `op` on `inst`.
    fn finish_inner(entry: &mut Entry, op: &str, took: Duration, err: Option<&ActionError>) {
        entry.steps += 1;
        entry.last = Some(Instant::now());
        entry.current = None;
        entry.step_started = None;
        entry.detail = None;
        if matches!(op, "wait_drained" | "wait_in_service") {
            entry.lb_wait += took;
        }
        match (op, err) {
            ("deregister", Some(err))
                if !err.unknown_outcome
                    && !matches!(err.kind, ErrorKind::Cancelled | ErrorKind::Timeout) =>
            {
                // The LB refused: the instance is still in rotation. (A
                // request that may have been applied leaves it "maybe out":
                // compensation reads the LB before deciding.)
                entry.out = false;
                entry.error = Some(
                    err.to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            (_, Some(err)) => {
                let first_line = err
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                entry.error = Some(first_line);
                if op == "ssh" && entry.out && !err.kind.command_never_started() {
                    entry.touched = true;
                }
            }
            ("deregister", None) => {
                entry.out = true;
                entry.registered = false;
            }
            ("ssh", None) if entry.out => entry.touched = true,
            ("register", None) if entry.out => entry.registered = true,
            // Back only once the LB says so: a failure between register and
            // in service is compensated like any other.
            ("wait_in_service", None) if entry.registered => Self::back_in(entry),
            _ => {}
        }
    }

    /// The LB confirmed `entry` in service again.
    fn back_in(entry: &mut Entry) {
        if entry.touched {
            entry.updated = !entry.rollback_ran;
            entry.rolled_back = entry.rollback_ran;
        }
        entry.out = false;
        entry.touched = false;
        entry.rollback_ran = false;
        entry.registered = false;
    }

    /// `inst` was registered without a `wait_in_service` and the LB reports
    /// it in service now (checked at the end of the run).
    pub fn confirm_in(&self, inst: &str) {
        self.update_known(inst, |e| {
            if e.registered {
                Self::back_in(e);
            }
        });
    }

    /// Out of rotation before the run: `word` is how the LB put it.
    pub fn park(&self, inst: &str, word: &str) {
        if let Some(e) = self.entries.lock().unwrap().get_mut(inst) {
            e.parked = Some(word.to_string());
        }
    }

    /// Registered by this run and not yet confirmed in service.
    pub fn registered_unconfirmed(&self) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|(_, e)| e.out && e.registered)
            .map(|(n, _)| n)
            .collect()
    }

    pub fn begin(&self, inst: &str, step: &'static str) {
        self.update(inst, |e| Self::begin_inner(e, step));
    }

    /// Records the end of `op` on `inst`.
    pub fn finish(&self, inst: &str, op: &str, took: Duration, err: Option<&ActionError>) {
        self.update(inst, |e| Self::finish_inner(e, op, took, err));
    }

    /// `app.rollback` succeeded on `inst`.
    pub fn rollback_ran(&self, inst: &str) {
        if let Some(e) = self.entries.lock().unwrap().get_mut(inst) {
            e.rollback_ran = true;
        }
    }

    pub fn compensated(&self, inst: &str, restored: bool, rolled_back: bool, detail: &str) {
        self.update(inst, |entry| {
            entry.compensation = Some(detail.to_string());
            entry.out = !restored;
            entry.registered = false;
            if rolled_back {
                entry.touched = false;
            }
        });
    }

    /// Changes `inst`'s entry (made if it has none; a name is copied only
    /// then: a plan of 100,000 instances records 600,000 steps) under one
    /// lock, and mirrors a change of its `out` flag into the set.
    fn update(&self, inst: &str, f: impl FnOnce(&mut Entry)) {
        let mut entries = self.entries.lock().unwrap();
        if !entries.contains_key(inst) {
            entries.insert(inst.to_string(), Entry::default());
        }
        self.change(entries, inst, f);
    }

    /// [`Ledger::update`] for an entry that exists; nothing otherwise.
    fn update_known(&self, inst: &str, f: impl FnOnce(&mut Entry)) {
        let entries = self.entries.lock().unwrap();
        if entries.contains_key(inst) {
            self.change(entries, inst, f);
        }
    }

    fn change(
        &self,
        mut entries: std::sync::MutexGuard<'_, BTreeMap<String, Entry>>,
        inst: &str,
        f: impl FnOnce(&mut Entry),
    ) {
        let entry = entries.get_mut(inst).expect("looked up by the caller");
        let was = entry.out;
        f(entry);
        let now = entry.out;
        drop(entries);
        self.mirror(inst, was, now);
    }

    /// The out-set follows every change of an entry's `out` flag (all of
    /// them go through [`Ledger::update`]).
    fn mirror(&self, inst: &str, was: bool, now: bool) {
        if was == now {
            return;
        }
        let mut set = self.out.lock().unwrap();
        if now {
            set.insert(inst.to_string());
        } else {
            set.remove(inst);
        }
    }

    /// Names of the instances this run has out of rotation.
    pub fn out_names(&self) -> std::collections::BTreeSet<String> {
        self.out.lock().unwrap().clone()
    }

    /// Whether this run has `inst` out of rotation: one lookup, no copy
    /// (the capacity guard asks this for every instance of the fleet).
    pub fn is_out(&self, inst: &str) -> bool {
        self.entries
            .lock()
            .unwrap()
            .get(inst)
            .is_some_and(|e| e.out)
    }

    /// Whether this run put `inst` back on the new release.
    pub fn is_updated(&self, inst: &str) -> bool {
        self.entries
            .lock()
            .unwrap()
            .get(inst)
            .is_some_and(|e| e.updated)
    }

    pub fn set_drain(&self, inst: &str, report: crate::primitives::DrainReport) {
        if let Some(e) = self.entries.lock().unwrap().get_mut(inst) {
            e.drain = Some(report);
        }
    }

    pub fn set_detail(&self, inst: &str, detail: String) {
        if let Some(e) = self.entries.lock().unwrap().get_mut(inst) {
            if e.current.is_some() {
                e.detail = Some(detail);
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let e = self.entries.lock().unwrap();
        let order = self.order.lock().unwrap();
        let mut out: Vec<(String, Entry)> = order
            .iter()
            .filter_map(|n| e.get(n).map(|x| (n.clone(), x.clone())))
            .collect();
        let known: std::collections::HashSet<&str> = order.iter().map(String::as_str).collect();
        for (n, x) in e.iter() {
            if !known.contains(n.as_str()) {
                out.push((n.clone(), x.clone()));
            }
        }
        out
    }

    /// Instances out of rotation because of this run, as compensation targets.
    pub fn out_of_service(&self) -> Vec<Target> {
        self.snapshot()
            .into_iter()
            .filter(|(_, e)| e.out)
            .map(|(n, e)| Target::of(n, &e))
            .collect()
    }

    /// Out of service and not yet compensated (a script may have called
    /// `compensate` already: its verdict stands).
    pub fn needs_compensation(&self) -> Vec<Target> {
        self.snapshot()
            .into_iter()
            .filter(|(_, e)| e.out && e.compensation.is_none())
            .map(|(n, e)| Target::of(n, &e))
            .collect()
    }

    pub fn failed(&self) -> Vec<String> {
        self.snapshot()
            .into_iter()
            .filter(|(_, e)| e.failed())
            .map(|(n, _)| n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(l: &Ledger, inst: &str, rollback: bool) {
        for op in ["deregister", "wait_drained", "ssh"] {
            l.begin(inst, "x");
            l.finish(inst, op, Duration::ZERO, None);
        }
        if rollback {
            l.rollback_ran(inst);
        }
        for op in ["register", "wait_in_service"] {
            l.begin(inst, "x");
            l.finish(inst, op, Duration::ZERO, None);
        }
    }

    #[test]
    fn an_instance_deployed_then_rolled_back_is_rolled_back_not_updated() {
        let l = Ledger::new(["web-1".to_string(), "web-2".to_string()]);
        cycle(&l, "web-1", false);
        cycle(&l, "web-2", false);
        cycle(&l, "web-1", true);
        let s = l.snapshot();
        assert_eq!(s[0].1.outcome(), "rolled back");
        assert_eq!(s[1].1.outcome(), "updated");
        assert!(s[0].1.finished());
        // Deployed again after the rollback: updated once more.
        cycle(&l, "web-1", false);
        assert_eq!(l.snapshot()[0].1.outcome(), "updated");
    }

    #[test]
    fn registered_is_not_back_until_the_lb_confirms_it() {
        let l = Ledger::new(["web-1".to_string()]);
        for op in ["deregister", "wait_drained", "ssh", "register"] {
            l.begin("web-1", "x");
            l.finish("web-1", op, Duration::ZERO, None);
        }
        assert_eq!(l.out_names().len(), 1, "registered, not yet in service");
        let err = ActionError::new(ErrorKind::HealthFailed, "marked DOWN");
        l.begin("web-1", "wait_in_service");
        l.finish("web-1", "wait_in_service", Duration::ZERO, Some(&err));
        let t = l.needs_compensation();
        assert_eq!(
            t,
            vec![Target {
                name: "web-1".into(),
                touched: true,
                registered: true
            }]
        );
    }

    #[test]
    fn a_deregister_whose_outcome_is_unknown_is_maybe_out() {
        let l = Ledger::new(["web-1".to_string(), "web-2".to_string()]);
        let unknown = ActionError::new(ErrorKind::Lb, "connection reset").outcome_unknown();
        let refused = ActionError::new(ErrorKind::Lb, "No such server.");
        l.begin("web-1", "deregister");
        l.finish("web-1", "deregister", Duration::ZERO, Some(&unknown));
        l.begin("web-2", "deregister");
        l.finish("web-2", "deregister", Duration::ZERO, Some(&refused));
        assert_eq!(
            l.out_names().into_iter().collect::<Vec<_>>(),
            vec!["web-1".to_string()]
        );
    }

    #[test]
    fn a_parked_instance_says_so() {
        let l = Ledger::new(["web-2".to_string()]);
        l.park("web-2", "MAINT");
        assert_eq!(l.snapshot()[0].1.outcome(), "parked (MAINT): left as found");
    }
}
