//! LB weights: `set_weight`, `shift_traffic` (a share of the traffic for a
//! group) and `reset_weights`; the run remembers what it changed so a failed
//! run, or `recover`, puts the weights back as configured.

use tracing::info;

use super::Effects;
use crate::config::Instance;
use crate::plan::Estimate;
use crate::primitives::{ActionError, ActionResult, ErrorKind, LbOp};

impl Effects {
    pub async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        let lb = &self.providers.lb;
        let op = LbOp::SetWeight(weight);
        self.plan_safe_point();
        if self.record(lb.describe(op, inst), Estimate::default()) {
            return Ok(());
        }
        let text = lb.describe(op, inst);
        self.safe_point("set_weight", Some(inst)).await?;
        info!(instance = %inst.name, step = "set_weight", "{text}");
        if lb.supports_weights() {
            self.weighted.lock().unwrap().insert(inst.name.clone());
        }
        self.act("set_weight", Some(inst), &text, lb.set_weight(inst, weight))
            .await
    }

    pub fn supports_weights(&self) -> bool {
        self.providers.lb.supports_weights()
    }

    /// Counts every instance as re-weighted, so `reset_weights` puts the
    /// whole fleet back as configured (`recover` after a killed run).
    pub fn mark_all_weighted(&self) {
        self.weighted
            .lock()
            .unwrap()
            .extend(self.inventory.instances.iter().map(|i| i.name.clone()));
    }

    /// Instances whose weight this run changed and has not reset.
    pub fn weights_changed(&self) -> Vec<String> {
        self.weighted.lock().unwrap().iter().cloned().collect()
    }

    /// Sets LB weights so that `group` receives about `share` (0 < share < 1)
    /// of the traffic of its fleet (its pool, else the inventory): the rest
    /// of the fleet gets one weight, `group` another. Returns the share the
    /// integer weights give. Refused, before anything changes, where the LB
    /// has no per-instance weights.
    pub async fn shift_traffic(&self, group: &[Instance], share: f64) -> ActionResult<f64> {
        let lb = &self.providers.lb;
        if !lb.supports_weights() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "shift_traffic: lb.kind = {} has no per-instance weights (HAProxy and nginx have); stage by instance count instead",
                    self.inventory.lb.backend.kind()
                ),
            ));
        }
        if !(share > 0.0 && share < 1.0) {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "shift_traffic: the share must be between 0% and 100% (exclusive), got {share}"
                ),
            ));
        }
        let Some(first) = group.first() else {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                "shift_traffic: the group is empty",
            ));
        };
        let in_group = |i: &Instance| group.iter().any(|g| g.name == i.name);
        let others: Vec<&Instance> = self
            .inventory
            .instances
            .iter()
            .filter(|i| i.pool == first.pool && !in_group(i))
            .collect();
        if others.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                "shift_traffic: the group is the whole fleet; there is no traffic to shift",
            ));
        }
        let (wg, wo, got) = weights_for_share(group.len(), others.len(), share);
        let changes: Vec<(&Instance, Option<u32>)> = group
            .iter()
            .map(|i| (i, Some(wg)))
            .chain(others.iter().map(|i| (*i, Some(wo))))
            .collect();
        let names = group
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            "{}: weight {wg} for {names}, {wo} for the other {} instance(s): {:.1}% of the traffic to {names}",
            lb.kind(),
            others.len(),
            got * 100.0
        );
        self.weighted
            .lock()
            .unwrap()
            .extend(changes.iter().map(|(i, _)| i.name.clone()));
        self.plan_safe_point();
        if self.record(text.clone(), Estimate::default()) {
            return Ok(got);
        }
        self.safe_point("shift_traffic", None).await?;
        info!(step = "shift_traffic", "{text}");
        self.act("shift_traffic", None, &text, lb.set_weights(&changes))
            .await?;
        Ok(got)
    }

    /// Puts every weight this run changed back to the configured one.
    /// Returns how many instances it reset.
    pub async fn reset_weights(&self) -> ActionResult<usize> {
        let names = self.weights_changed();
        if names.is_empty() {
            return Ok(0);
        }
        let insts: Vec<&Instance> = names
            .iter()
            .filter_map(|n| self.inventory.instance(n))
            .collect();
        let changes: Vec<(&Instance, Option<u32>)> = insts.iter().map(|i| (*i, None)).collect();
        let lb = &self.providers.lb;
        let mut who = insts
            .iter()
            .take(5)
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if insts.len() > 5 {
            who.push_str(&format!(" and {} more", insts.len() - 5));
        }
        let text = format!("{}: weights back as configured: {who}", lb.kind());
        if !self.record(text.clone(), Estimate::default()) {
            info!(step = "reset_weights", "{text}");
            self.act("reset_weights", None, &text, lb.set_weights(&changes))
                .await?;
        }
        self.weighted.lock().unwrap().clear();
        Ok(insts.len())
    }
}

/// Integer weights (1-256) for `g` instances against `o` others so that the
/// `g` receive about `share` of the traffic: (group weight, others' weight,
/// the share they give): the closest pair, the larger when several are as close.
pub fn weights_for_share(g: usize, o: usize, share: f64) -> (u32, u32, f64) {
    let given = |wg: u32, wo: u32| {
        let a = g as f64 * wg as f64;
        a / (a + o as f64 * wo as f64)
    };
    let mut best = (1, 256, given(1, 256));
    for wo in (1..=256u32).rev() {
        let exact = share * o as f64 * wo as f64 / ((1.0 - share) * g as f64);
        let wg = (exact.round() as u32).clamp(1, 256);
        let got = given(wg, wo);
        if (got - share).abs() < (best.2 - share).abs() - 1e-9 {
            best = (wg, wo, got);
        }
    }
    best
}

#[cfg(test)]
mod weight_tests {
    use super::weights_for_share;

    #[test]
    pub(super) fn shares_are_close_and_weights_in_range() {
        for (g, o) in [(1, 2), (1, 9), (3, 27), (1, 9999), (2, 1)] {
            for share in [0.01, 0.05, 0.25, 0.5, 0.9] {
                let (wg, wo, got) = weights_for_share(g, o, share);
                assert!((1..=256).contains(&wg) && (1..=256).contains(&wo));
                let exact = g as f64 * wg as f64 / (g as f64 * wg as f64 + o as f64 * wo as f64);
                assert!((exact - got).abs() < 1e-12);
                // Reachable shares are matched closely; 1 of 10,000 at 256
                // against 1 is the limit of HAProxy's weights.
                let reachable = (g as f64 * 256.0) / (g as f64 * 256.0 + o as f64) >= share
                    && g as f64 / (g as f64 + o as f64 * 256.0) <= share;
                if reachable {
                    assert!(
                        (got - share).abs() < 0.005,
                        "{g}/{o} at {share}: {got} ({wg}, {wo})"
                    );
                }
            }
        }
        // 1 canary against 2: 5% exactly, with the largest such weights.
        assert_eq!(weights_for_share(1, 2, 0.05), (26, 247, 0.05));
    }
}
