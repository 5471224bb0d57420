//! How a finished drain is told: one log line saying which signal ended it
//! and how much of the LB's fixed delay that saved, a `drained` journal
//! record with the same facts, and the ledger entry the summary reads.

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

impl Effects {
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
