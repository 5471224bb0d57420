//! The run summary printed at the end: each instance's outcome, steps and
//! time, the time spent waiting on the load balancer against what the
//! runbook's fixed sleeps would have cost, and where the journal is.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use crate::config::format_duration;
use crate::ledger::Entry;
use crate::plan::format_duration_long;

/// The runbook waits `sleep 60` after deregistering and again after
/// registering: two minutes per instance, whatever the LB says.
pub const RUNBOOK_SLEEPS_PER_INSTANCE: Duration = Duration::from_secs(120);

/// One run's summary: a table for a terminal, an object for machines
/// (`docs/logs.md` documents its fields; keep them stable).
pub struct Summary<'a> {
    pub run: &'a str,
    pub entries: &'a [(String, Entry)],
    pub elapsed: Duration,
    pub journal: Option<&'a Path>,
    pub outcome: crate::outcome::Outcome,
    /// `user@host` of a `rollscript abort`.
    pub aborted_by: Option<&'a str>,
}

impl Summary<'_> {
    pub fn render(&self) -> String {
        let meaning = match self.aborted_by {
            Some(by) => format!("aborted by {by}"),
            None => self.outcome.meaning().to_string(),
        };
        render(
            self.entries,
            self.elapsed,
            self.journal,
            self.outcome.exit_code(),
            &meaning,
        )
    }

    /// `{"type":"summary","run":…,"exit_code":…,"instances":[…]}`.
    pub fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_millis() as u64;
        let instances: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|(name, e)| {
                serde_json::json!({
                    "name": name,
                    "outcome": e.outcome(),
                    "state": e.state(),
                    "steps": e.steps,
                    "time_ms": ms(e.duration()),
                    "lb_wait_ms": ms(e.lb_wait),
                    "error": e.error,
                    "compensation": e.compensation,
                    "parked": e.parked,
                    "drain": e.drain.as_ref().map(|d| serde_json::json!({
                        "ended_by": d.ended_by.as_str(),
                        "waited_ms": ms(d.waited),
                        "deregistration_delay_ms": d.configured_delay.map(ms),
                        "saved_ms": crate::effects::drain_saved(d).map(ms),
                    })),
                })
            })
            .collect();
        let lb_wait: Duration = self.entries.iter().map(|(_, e)| e.lb_wait).sum();
        serde_json::json!({
            "type": "summary",
            "run": self.run,
            "exit_code": self.outcome.exit_code(),
            "outcome": self.outcome.word(),
            "meaning": self.outcome.meaning(),
            "elapsed_ms": ms(self.elapsed),
            "lb_wait_ms": ms(lb_wait),
            "journal": self.journal.map(|p| p.display().to_string()),
            "aborted_by": self.aborted_by,
            "instances": instances,
        })
    }
}

pub fn render(
    entries: &[(String, Entry)],
    elapsed: Duration,
    journal: Option<&Path>,
    exit_code: u8,
    meaning: &str,
) -> String {
    let mut out = String::new();
    let name_w = entries
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let touched: Vec<&(String, Entry)> = entries
        .iter()
        .filter(|(_, e)| e.steps > 0 || e.compensation.is_some())
        .collect();
    writeln!(out, "\nSummary").unwrap();
    writeln!(
        out,
        "  {:<name_w$}  {:>5}  {:>8}  {:>8}  outcome",
        "instance", "steps", "time", "lb wait"
    )
    .unwrap();
    for (name, e) in entries {
        writeln!(
            out,
            "  {:<name_w$}  {:>5}  {:>8}  {:>8}  {}",
            name,
            e.steps,
            format_duration_short(e.duration()),
            format_duration_short(e.lb_wait),
            e.outcome()
        )
        .unwrap();
    }
    write_drains(&mut out, entries);
    let lb_wait: Duration = entries.iter().map(|(_, e)| e.lb_wait).sum();
    let cycled = entries
        .iter()
        .filter(|(_, e)| e.lb_wait > Duration::ZERO)
        .count() as u32;
    if cycled > 0 {
        let sleeps = RUNBOOK_SLEEPS_PER_INSTANCE * cycled;
        writeln!(
            out,
            "  waited on the load balancer {} in all, against {} of fixed `sleep 60`s in the runbook ({} saved)",
            format_duration_long(lb_wait),
            format_duration_long(sleeps),
            format_duration_long(sleeps.saturating_sub(lb_wait)),
        )
        .unwrap();
    }
    writeln!(
        out,
        "  {} of {} instances touched in {}",
        touched.len(),
        entries.len(),
        format_duration_long(elapsed)
    )
    .unwrap();
    if let Some(j) = journal {
        writeln!(out, "  journal: {}", j.display()).unwrap();
    }
    writeln!(out, "  exit {exit_code}: {meaning}").unwrap();
    out
}

/// One line per drain that had a fixed LB delay to beat or was ended by the
/// host: `drain web-1: 1.2s, ended by the host's connections, 118.8s before
/// the deregistration delay`; and the delay saved in all.
fn write_drains(out: &mut String, entries: &[(String, Entry)]) {
    let mut saved_total = Duration::ZERO;
    let mut shown = 0;
    for (name, e) in entries {
        let Some(d) = &e.drain else { continue };
        if d.configured_delay.is_none() && d.ended_by == crate::primitives::DrainSignal::Lb {
            continue;
        }
        let by = match d.ended_by {
            crate::primitives::DrainSignal::Host => "ended by the host's connections",
            crate::primitives::DrainSignal::Lb => "ended by the load balancer",
        };
        let saved = crate::effects::drain_saved(d);
        saved_total += saved.unwrap_or_default();
        let vs = match (saved, d.configured_delay) {
            (Some(s), Some(_)) => format!(
                ", {} before the deregistration delay",
                format_duration_short(s)
            ),
            (None, Some(delay)) => format!(
                ", the whole deregistration delay ({})",
                format_duration(delay)
            ),
            _ => String::new(),
        };
        writeln!(
            out,
            "  drain {name}: {}, {by}{vs}",
            format_duration_short(d.waited)
        )
        .unwrap();
        shown += 1;
    }
    if shown > 1 && !saved_total.is_zero() {
        writeln!(
            out,
            "  drains ended {} before the deregistration delays in all",
            format_duration_long(saved_total)
        )
        .unwrap();
    }
}

fn format_duration_short(d: Duration) -> String {
    if d.is_zero() {
        "-".into()
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format_duration(Duration::from_secs(d.as_secs()))
    }
}
