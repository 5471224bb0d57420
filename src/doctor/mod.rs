//! `rollscript doctor` (and `run --preflight`): would a deploy of this
//! inventory work, proven against the real LB, hosts and state — touching
//! nothing. Every check runs at once, each instance's in parallel; the
//! result is one table (instance × check) and, with JSON, the same table as
//! data.
//!
//! - `checks.rs`: each check, built on the providers' own calls (`verify`,
//!   `states`, the ssh transport, the health probe, the capacity guard's
//!   `decide`) so doctor judges exactly what a run would;
//! - `report.rs`: the table and the JSON record.

mod checks;
mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{HostKeyPolicy, Inventory};
use crate::outcome::{Failure, Outcome};
use crate::primitives::Providers;
use crate::providers;
use crate::run::SummaryFormat;

pub use report::Report;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    /// Not run: what it needs failed first (no ssh: no deploy check).
    Skipped,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Fail => "FAIL",
            Self::Skipped => "skip",
        }
    }
}

/// One cell of the table: an instance's check, or a check of the whole
/// fleet (`instance` None: the LB's rights, the state backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub instance: Option<String>,
    /// `lb_rights`, `lb_member`, `ssh`, `deploy`, `health`, `capacity`, `state`.
    pub check: &'static str,
    pub status: Status,
    /// What was seen (the LB's own words, ssh's, the HTTP status).
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(instance: Option<&str>, check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            instance: instance.map(str::to_string),
            check,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(
        instance: Option<&str>,
        check: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let fix: String = fix.into();
        Self {
            instance: instance.map(str::to_string),
            check,
            status: Status::Fail,
            detail: detail.into(),
            fix: (!fix.is_empty()).then_some(fix),
        }
    }

    fn skipped(instance: Option<&str>, check: &'static str, why: impl Into<String>) -> Self {
        Self {
            instance: instance.map(str::to_string),
            check,
            status: Status::Skipped,
            detail: why.into(),
            fix: None,
        }
    }

    /// `web-2: ssh: … — fix: …`, one sentence for a refused `--preflight`.
    pub fn sentence(&self) -> String {
        let who = self.instance.as_deref().unwrap_or("fleet");
        match &self.fix {
            Some(f) => format!("{who}: {}: {} — {f}", self.check, self.detail),
            None => format!("{who}: {}: {}", self.check, self.detail),
        }
    }
}

/// `rollscript doctor`: exit 0 when every check passes, 1 otherwise (2 when
/// the inventory itself is refused).
pub async fn doctor(inventory: &Path, summary: SummaryFormat) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let inv = load(inventory, &providers::build).await?;
    let checks = run_checks(Arc::new(inv.clone()), providers::build).await;
    let report = Report {
        inventory: &inv,
        checks: &checks,
        elapsed: started.elapsed(),
    };
    crate::ui::summary(&report.render(), &report.json());
    if summary == SummaryFormat::Json {
        println!("{}", report.json());
    }
    Ok(match report.passed() {
        true => Outcome::Success,
        false => Outcome::Failed,
    })
}

/// The inventory as a run sees it: loaded, and with `lb.discover` the
/// target group's members added.
async fn load(
    path: &Path,
    make: &impl Fn(&Arc<Inventory>) -> Providers,
) -> Result<Inventory, Failure> {
    let inv = Inventory::load(path)?;
    let discovery = make(&Arc::new(inv.clone())).discovery;
    providers::discover(inv, &*discovery)
        .await
        .map_err(|e| Failure::failed(format!("discovering instances: {e}")))
}

/// Every check against `inv`, with providers from `make`. Host keys are
/// checked strictly whatever `ssh.host_key_checking` says: accepting a new
/// key would write known_hosts, and doctor touches nothing.
pub async fn run_checks(
    inv: Arc<Inventory>,
    make: impl Fn(&Arc<Inventory>) -> Providers,
) -> Vec<Check> {
    let mut strict = (*inv).clone();
    let relaxed = strict.ssh.host_key_checking == HostKeyPolicy::AcceptNew;
    strict.ssh.host_key_checking = HostKeyPolicy::Strict;
    let strict = Arc::new(strict);
    let p = make(&strict);
    let checks = checks::all(&strict, &p, relaxed).await;
    p.ssh.close().await;
    checks
}
