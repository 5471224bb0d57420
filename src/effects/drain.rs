//! How a finished drain is told: one log line saying which signal ended it
//! and how much of the LB's fixed delay that saved, a `drained` journal
//! record with the same facts, and the ledger entry the summary reads.

use std::path::Path;
use std::time::Duration;

use tracing::info;

use super::Effects;
use crate::config::{format_duration, Instance};
use crate::journal::{now, Record};
use crate::primitives::{DrainReport, DrainSignal};

/// The LB's fixed delay minus the drain, when the drain was shorter.
pub fn saved(r: &DrainReport) -> Option<Duration> {
    r.configured_delay
        .map(|d| d.saturating_sub(r.waited))
        .filter(|d| !d.is_zero())
}

/// `web-1 drained in 1.2s: no connection on the host for 1s, 118.8s before
/// the deregistration delay (120s)`; a drain with nothing to compare with is
/// `web-1 drained in 0.3s`.
pub fn sentence(name: &str, r: &DrainReport, settle: Duration) -> String {
    let mut s = format!("{name} drained in {}", format_duration(r.waited));
    let by = match r.ended_by {
        DrainSignal::Host => Some(format!(
            "no connection on the host for {}",
            format_duration(settle)
        )),
        DrainSignal::Lb if r.configured_delay.is_some() => {
            Some("the load balancer reports it unused".to_string())
        }
        DrainSignal::Lb => None,
    };
    if let Some(by) = by {
        s.push_str(": ");
        s.push_str(&by);
    }
    match (saved(r), r.configured_delay) {
        (Some(saved), Some(delay)) => s.push_str(&format!(
            ", {} before the deregistration delay ({})",
            format_duration(saved),
            format_duration(delay)
        )),
        (None, Some(delay)) => s.push_str(&format!(
            ", after the whole deregistration delay ({})",
            format_duration(delay)
        )),
        _ => {}
    }
    s
}

/// The drains of the last run of an inventory that recorded any: what a
/// plan assumes a drain takes, instead of the LB's fixed delay.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredDrain {
    /// The median drain.
    pub typical: Duration,
    pub drains: usize,
    /// The run they come from.
    pub run: String,
}

/// Reads the local journals beside `inventory`, newest first, for the
/// first run with `drained` records.
pub fn measured_drains(inventory: &Path) -> Option<MeasuredDrain> {
    for file in crate::journal::list(inventory).iter().rev() {
        let Ok(records) = crate::journal::read(file) else {
            continue;
        };
        let mut waited: Vec<u64> = records
            .iter()
            .filter_map(|r| match r {
                Record::Drained { waited_ms, .. } => Some(*waited_ms),
                _ => None,
            })
            .collect();
        if waited.is_empty() {
            continue;
        }
        waited.sort_unstable();
        return Some(MeasuredDrain {
            typical: Duration::from_millis(waited[waited.len() / 2]),
            drains: waited.len(),
            run: crate::journal::run_id_of(file),
        });
    }
    None
}

impl Effects {
    /// A plan's drains take this (measured by an earlier run) typically.
    pub fn set_measured_drain(&self, m: MeasuredDrain) {
        let _ = self.measured_drain.set(m);
    }

    pub fn measured_drain(&self) -> Option<&MeasuredDrain> {
        self.measured_drain.get()
    }

    /// Logs, journals and books a finished drain.
    pub(super) fn drained(&self, inst: &Instance, r: &DrainReport) {
        let settle = self.inventory.lb.drain_settle;
        let ms = |d: Duration| d.as_millis() as u64;
        info!(
            instance = %inst.name, step = "drained", ended_by = r.ended_by.as_str(),
            waited_ms = ms(r.waited),
            "{}", sentence(&inst.name, r, settle)
        );
        if let Some(j) = self.journal() {
            j.best_effort(&Record::Drained {
                at: now(),
                instance: inst.name.clone(),
                ended_by: r.ended_by.as_str().to_string(),
                waited_ms: ms(r.waited),
                deregistration_delay_ms: r.configured_delay.map(ms),
                saved_ms: saved(r).map(ms),
            });
        }
        self.ledger.set_drain(&inst.name, r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_takes_the_median_drain_of_the_last_run_that_recorded_drains() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("rollscript.toml");
        assert_eq!(measured_drains(&inv), None);
        let runs = crate::journal::runs_dir(&inv);
        std::fs::create_dir_all(&runs).unwrap();
        let drained = |ms: u64| {
            serde_json::to_string(&Record::Drained {
                at: now(),
                instance: "web-1".into(),
                ended_by: "host".into(),
                waited_ms: ms,
                deregistration_delay_ms: Some(120_000),
                saved_ms: None,
            })
            .unwrap()
        };
        let write = |name: &str, lines: &[String]| {
            std::fs::write(runs.join(name), lines.join("\n") + "\n").unwrap()
        };
        write("20261201-100000-aaaa.jsonl", &[drained(9000)]);
        write(
            "20261202-100000-bbbb.jsonl",
            &[drained(1500), drained(1200), drained(4000)],
        );
        // A later run that drained nothing (a plan-only script, a failure).
        write("20261202-110000-cccc.jsonl", &[]);
        let m = measured_drains(&inv).unwrap();
        assert_eq!(m.typical, Duration::from_millis(1500));
        assert_eq!(m.drains, 3);
        assert_eq!(m.run, "20261202-100000-bbbb");
    }

    fn report(waited_ms: u64, delay_s: Option<u64>, ended_by: DrainSignal) -> DrainReport {
        DrainReport {
            waited: Duration::from_millis(waited_ms),
            connections_at_start: None,
            configured_delay: delay_s.map(Duration::from_secs),
            ended_by,
        }
    }

    const SETTLE: Duration = Duration::from_secs(1);

    #[test]
    fn a_drain_ended_by_the_host_says_so_and_what_it_saved() {
        assert_eq!(
            sentence("web-1", &report(1200, Some(120), DrainSignal::Host), SETTLE),
            "web-1 drained in 1.2s: no connection on the host for 1s, 118.8s before the deregistration delay (120s)"
        );
    }

    #[test]
    fn a_drain_ended_by_elbv2_says_whether_it_took_the_whole_delay() {
        assert_eq!(
            sentence("web-1", &report(8100, Some(8), DrainSignal::Lb), SETTLE),
            "web-1 drained in 8.1s: the load balancer reports it unused, after the whole deregistration delay (8s)"
        );
        assert_eq!(
            sentence("web-1", &report(500, Some(8), DrainSignal::Lb), SETTLE),
            "web-1 drained in 500ms: the load balancer reports it unused, 7.5s before the deregistration delay (8s)"
        );
    }

    #[test]
    fn a_drain_without_a_fixed_delay_is_its_time() {
        assert_eq!(
            sentence("web-1", &report(300, None, DrainSignal::Lb), SETTLE),
            "web-1 drained in 300ms"
        );
        assert_eq!(saved(&report(300, None, DrainSignal::Lb)), None);
    }
}
