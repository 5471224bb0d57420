//! Doctor's one table (rows: the fleet, then each instance; columns: the
//! checks), every failure below it as a sentence naming the instance, the
//! check and what to do, and the same as one JSON object
//! (`"type": "doctor"`, docs/logs.md).

use std::fmt::Write;
use std::time::Duration;

use super::{Check, Status};
use crate::config::Inventory;

/// The table's columns, in order.
const COLUMNS: [&str; 8] = [
    "lb_rights",
    "lb_read",
    "lb_member",
    "ssh",
    "deploy",
    "health",
    "capacity",
    "state",
];

pub struct Report<'a> {
    pub inventory: &'a Inventory,
    pub checks: &'a [Check],
    pub elapsed: Duration,
}

impl Report<'_> {
    pub fn failed(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect()
    }

    pub fn passed(&self) -> bool {
        self.failed().is_empty()
    }

    pub fn exit_code(&self) -> u8 {
        match self.passed() {
            true => 0,
            false => 1,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let inv = self.inventory;
        writeln!(
            out,
            "Doctor: {} ({} instance{}, load balancer: {}), nothing touched",
            inv.path.display(),
            inv.instances.len(),
            if inv.instances.len() == 1 { "" } else { "s" },
            inv.lb.backend.kind()
        )
        .unwrap();
        let columns: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .filter(|c| self.checks.iter().any(|x| x.check == *c))
            .collect();
        let mut rows: Vec<Option<&str>> = vec![None];
        rows.extend(inv.instances.iter().map(|i| Some(i.name.as_str())));
        let name_w = rows
            .iter()
            .map(|r| r.unwrap_or("(fleet)").len())
            .max()
            .unwrap_or(8)
            .max("instance".len());
        write!(out, "  {:<name_w$}", "instance").unwrap();
        for c in &columns {
            write!(out, "  {c:<w$}", w = c.len().max(4)).unwrap();
        }
        out.push('\n');
        for row in rows {
            write!(out, "  {:<name_w$}", row.unwrap_or("(fleet)")).unwrap();
            for c in &columns {
                let cell: Vec<&Check> = self
                    .checks
                    .iter()
                    .filter(|x| x.check == *c && x.instance.as_deref() == row)
                    .collect();
                let word = if cell.is_empty() {
                    "·"
                } else if cell.iter().any(|x| x.status == Status::Fail) {
                    "FAIL"
                } else if cell.iter().all(|x| x.status == Status::Skipped) {
                    "skip"
                } else {
                    "ok"
                };
                write!(out, "  {word:<w$}", w = c.len().max(4)).unwrap();
            }
            out.push('\n');
        }
        let failed = self.failed();
        if !failed.is_empty() {
            out.push_str("\nProblems\n");
            for c in &failed {
                writeln!(out, "  {}", c.sentence()).unwrap();
            }
        }
        let total = self
            .checks
            .iter()
            .filter(|c| c.status != Status::Skipped)
            .count();
        writeln!(
            out,
            "\n  {} of {total} checks passed in {:.1}s",
            total - failed.len(),
            self.elapsed.as_secs_f64()
        )
        .unwrap();
        match failed.len() {
            0 => writeln!(out, "  exit 0: a deploy can start").unwrap(),
            n => writeln!(
                out,
                "  exit 1: {n} check{} failed; a deploy would fail or refuse to start",
                if n == 1 { "" } else { "s" }
            )
            .unwrap(),
        }
        out
    }

    /// `{"type":"doctor","ok":…,"exit_code":…,"checks":[…]}`.
    pub fn json(&self) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "instance": c.instance,
                    "check": c.check,
                    "status": c.status.word().to_lowercase(),
                    "ok": c.status != Status::Fail,
                    "detail": c.detail,
                    "fix": c.fix,
                })
            })
            .collect();
        serde_json::json!({
            "type": "doctor",
            "inventory": self.inventory.path.display().to_string(),
            "lb": self.inventory.lb.backend.kind(),
            "ok": self.passed(),
            "exit_code": self.exit_code(),
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "failed": self.failed().len(),
            "checks": checks,
        })
    }
}
