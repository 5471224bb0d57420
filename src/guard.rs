//! The capacity guard: the rule that no run may leave fewer than
//! `lb.min_in_service` instances serving, whatever the script says.
//!
//! Checking capacity and deregistering are one critical section for the
//! whole run: every `parallel` branch goes through [`CapacityGuard::section`],
//! reads the LB once, and holds the section until its deregister has been
//! sent, so two branches can never both see the last spare instance. A
//! branch that would breach the floor waits (bounded) for an instance to come
//! back instead of failing; [`CapacityGuard::changed`] wakes it.
//!
//! The decision itself ([`decide`]) is a pure function of one reading of the
//! LB and of which instances this run holds out, so it is tested without any.

use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::config::Instance;
use crate::primitives::MemberState;

/// Shared by every branch of one run.
#[derive(Default)]
pub struct CapacityGuard {
    /// tokio's Mutex, not std's: the LB is read and the deregister sent
    /// while it is held.
    section: Mutex<()>,
    changed: Notify,
}

impl CapacityGuard {
    /// Enters the critical section (one branch at a time).
    pub async fn section(&self) -> MutexGuard<'_, ()> {
        self.section.lock().await
    }

    /// Something that affects capacity happened (an instance came back, a
    /// deregister failed): waiting branches look again.
    pub fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// A future that completes at the next [`Self::changed`]; create it
    /// *before* reading the LB so a change in between is not missed.
    pub fn next_change(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// What one reading of the LB says about taking `inst` out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Instances serving now: in service on the LB and not out because of
    /// this run (a deregister sent, or registered and not yet confirmed).
    pub serving: usize,
    /// Serving once `inst` is out.
    pub after: usize,
    /// `lb.min_in_service` resolved against the fleet.
    pub floor: usize,
    pub fleet: usize,
    /// Instances this run holds out: the ones that may come back.
    pub ours_out: usize,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.after >= self.floor
    }

    /// Waiting can help only if something this run holds out will return.
    pub fn worth_waiting(&self) -> bool {
        self.ours_out > 0
    }
}

/// Decides from `states` (one per instance of `fleet`, in order).
pub fn decide(
    fleet: &[Instance],
    states: &[MemberState],
    is_ours_out: impl Fn(&str) -> bool,
    inst: &str,
    floor: usize,
) -> Decision {
    let mut serving = 0;
    let mut ours_out = 0;
    let mut inst_serving = false;
    for (i, state) in fleet.iter().zip(states) {
        let ours = is_ours_out(&i.name);
        if ours {
            ours_out += 1;
        }
        let serves = *state == MemberState::InService && !ours;
        if serves {
            serving += 1;
            if i.name == inst {
                inst_serving = true;
            }
        }
    }
    Decision {
        serving,
        after: serving - inst_serving as usize,
        floor,
        fleet: fleet.len(),
        ours_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<Instance> {
        (1..=n)
            .map(|i| {
                let mut inst = Instance::local();
                inst.name = format!("web-{i}");
                inst
            })
            .collect()
    }

    use MemberState::*;

    #[test]
    fn the_last_spare_instance_is_refused_while_one_of_ours_is_out() {
        let f = fleet(3);
        let d = decide(&f, &[InService; 3], |n| n == "web-1", "web-2", 2);
        assert_eq!((d.serving, d.after), (2, 1));
        assert!(!d.allowed());
        assert!(d.worth_waiting());
    }

    #[test]
    fn an_instance_down_by_health_does_not_count_and_costs_nothing_to_take_out() {
        let f = fleet(3);
        let d = decide(
            &f,
            &[InService, Unhealthy, InService],
            |_| false,
            "web-2",
            2,
        );
        assert_eq!((d.serving, d.after), (2, 2));
        assert!(d.allowed());
        let d = decide(
            &f,
            &[InService, Unhealthy, InService],
            |_| false,
            "web-1",
            2,
        );
        assert!(!d.allowed());
        assert!(!d.worth_waiting(), "nothing of ours will come back");
    }

    #[test]
    fn parked_and_registered_but_unconfirmed_instances_are_not_serving() {
        let f = fleet(4);
        // web-1 parked by an operator (MAINT), web-2 registered by us but
        // not yet confirmed (the LB may already say UP).
        let d = decide(
            &f,
            &[OutOfService, InService, InService, InService],
            |n| n == "web-2",
            "web-3",
            2,
        );
        assert_eq!((d.serving, d.after), (2, 1));
        assert!(!d.allowed());
    }
}
