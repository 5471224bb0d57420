//! What a run checks before its first side effect: the files it needs
//! exist, the fleet can satisfy its own capacity floor, and the load balancer
//! agrees with the inventory. Each problem is one sentence naming the
//! instance, key or file; any problem refuses the run (exit 2, nothing
//! touched).

use std::sync::Arc;

use crate::config::{CountOrPercent, Inventory};
use crate::effects::Effects;
use crate::outcome::{Failure, Outcome};
use crate::primitives::Providers;

/// Every problem found (empty: the run may start). Reads only.
pub async fn problems(effects: &Effects) -> Vec<String> {
    let inv = &effects.inventory;
    let mut problems: Vec<String> = inv.missing_files().iter().map(|e| e.to_string()).collect();
    // Discovered fleets are only known now.
    if let CountOrPercent::Count(n) = inv.lb.min_in_service {
        if n as usize > inv.instances.len() {
            problems.push(format!(
                "{}: lb.min_in_service: {n} is more than the {} instances of the fleet: no instance could ever be taken out",
                inv.path.display(),
                inv.instances.len()
            ));
        }
    }
    match effects.verify_lb().await {
        Ok(found) => problems.extend(found),
        Err(e) => problems.push(format!(
            "cannot check the inventory against the load balancer: {}",
            e.to_string().lines().next().unwrap_or_default()
        )),
    }
    problems
}

/// `run --preflight`: every check of `rollscript doctor` (ssh, app.deploy,
/// health, capacity, LB rights, state) before the first side effect; any
/// failure refuses the run with one sentence per failed check.
pub async fn doctor(
    inv: &Arc<Inventory>,
    make: &impl Fn(&Arc<Inventory>) -> Providers,
) -> Result<(), Failure> {
    let checks = crate::doctor::run_checks(inv.clone(), make).await;
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.status == crate::doctor::Status::Fail)
        .map(|c| c.sentence())
        .collect();
    if failed.is_empty() {
        tracing::info!(
            "preflight: all {} checks of `rollscript doctor` passed",
            checks.len()
        );
        return Ok(());
    }
    Err(Failure::many(Outcome::Invalid, failed).with_hint(
        "nothing was touched: --preflight refused the run (`rollscript doctor` shows every check)",
    ))
}
