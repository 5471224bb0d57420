//! Several load balancers (`[[lb]]`): their default names, and the one
//! [`LbSettings`] the effects layer bounds its steps by.

use super::{Inventory, LbSettings};

impl Inventory {
    /// This inventory as seen by the provider of one `[[lb]]` entry: `lb` is
    /// that entry (and `lbs` only it), everything else shared.
    pub fn with_lb(&self, lb: LbSettings) -> Inventory {
        let mut one = self.clone();
        one.lbs = vec![lb.clone()];
        one.lb = lb;
        one
    }
}

/// A kind alone when it appears once (`haproxy`), numbered when several
/// entries share it (`haproxy-1`, `haproxy-2`).
pub(super) fn default_names(kinds: &[String]) -> Vec<String> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let same = kinds.iter().filter(|k| *k == kind).count();
            if same == 1 {
                kind.clone()
            } else {
                let n = kinds[..=i].iter().filter(|k| *k == kind).count();
                format!("{kind}-{n}")
            }
        })
        .collect()
}

/// The first entry, bounded by the longest `drain_timeout` and
/// `register_timeout` of all: a step that waits on every LB may take as long
/// as the slowest. Each LB still waits with its own bounds.
pub(super) fn merged(lbs: &[LbSettings]) -> LbSettings {
    let mut lb = lbs[0].clone();
    for other in &lbs[1..] {
        lb.drain_timeout = lb.drain_timeout.max(other.drain_timeout);
        lb.register_timeout = lb.register_timeout.max(other.register_timeout);
    }
    lb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_number_a_kind_only_when_it_repeats() {
        let kinds: Vec<String> = ["haproxy", "nginx", "haproxy"].map(String::from).to_vec();
        assert_eq!(default_names(&kinds), ["haproxy-1", "nginx", "haproxy-2"]);
    }
}
