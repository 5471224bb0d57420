//! What a run checks before its first side effect: the files it needs
//! exist, the fleet can satisfy its own capacity floor, and the load balancer
//! agrees with the inventory. Each problem is one sentence naming the
//! instance, key or file; any problem refuses the run (exit 2, nothing
//! touched).

use crate::config::CountOrPercent;
use crate::effects::Effects;

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
