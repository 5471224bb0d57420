//! Instances found out of rotation before the run: parked, left as found.

use tracing::info;

use super::Effects;
use crate::config::Instance;
use crate::primitives::ActionResult;

impl Effects {
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
    pub(super) fn skip_parked(&self, inst: &Instance, op: &str) -> bool {
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
}
