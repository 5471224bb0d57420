//! The capacity guard as the effects layer runs it: check and deregister in
//! one critical section, from one reading of the LB per decision, waiting
//! (bounded) for capacity instead of breaching `lb.min_in_service`; and the
//! plan's view of the same rule.

use tokio::sync::{Mutex, MutexGuard, Notify};

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

use std::time::Duration;

use tracing::info;

use super::Effects;
use crate::config::{format_duration, Instance};
use crate::primitives::{ActionError, ActionResult, ErrorKind, MemberState};

impl Effects {
    /// The fleet `inst`'s capacity is counted in: its pool (blue/green),
    /// else the inventory. Borrowed: a plan over 10,000 instances asks this
    /// for every one of them.
    pub(super) fn fleet_of(&self, inst: &Instance) -> &[Instance] {
        match inst.pool.as_ref().and_then(|p| self.pool_fleets.get(p)) {
            Some(pool) => pool,
            None => &self.inventory.instances,
        }
    }

    pub(super) fn floor_of(&self, fleet: &[Instance]) -> usize {
        self.inventory.lb.min_in_service.of_ceil(fleet.len())
    }

    /// One reading of the LB inside the critical section.
    pub(super) async fn capacity_now(&self, inst: &Instance) -> ActionResult<Decision> {
        let fleet = self.fleet_of(inst);
        let states = self.cancellable(self.providers.lb.states(fleet)).await?;
        Ok(decide(
            fleet,
            &states,
            |n| self.ledger.is_out(n),
            &inst.name,
            self.floor_of(fleet),
        ))
    }

    pub(super) fn capacity_error(
        &self,
        inst: &Instance,
        d: &Decision,
        waited: Option<Duration>,
    ) -> ActionError {
        let why = match waited {
            Some(w) => format!(
                "; waited {} for an instance to come back",
                format_duration(w)
            ),
            None if !d.worth_waiting() => {
                "; no instance this run took out is there to come back".to_string()
            }
            None => String::new(),
        };
        ActionError::new(
            ErrorKind::Capacity,
            format!(
                "capacity guard: taking {} out would leave {} of {} instances in service, below lb.min_in_service = {} ({}){why}",
                inst.name,
                d.after,
                d.fleet,
                self.inventory.lb.min_in_service,
                d.floor
            ),
        )
        .host(inst.name.clone())
        .detail("in_service", d.serving)
        .detail("min_in_service", d.floor)
    }

    /// Enters the capacity critical section with room to take `inst` out,
    /// counted from the LB's real state — whatever the script says. Waits
    /// (journalled as `wait_capacity`, bounded by `lb.register_timeout` +
    /// `lb.drain_timeout`) while instances this run took out are on their
    /// way back; refuses at once when none is.
    pub(super) async fn take_capacity(
        &self,
        inst: &Instance,
    ) -> ActionResult<Option<tokio::sync::MutexGuard<'_, ()>>> {
        if self.providers.lb.kind() == "none" {
            return Ok(None);
        }
        let mut changed = Box::pin(self.guard.next_change());
        changed.as_mut().enable();
        let section = self
            .cancellable(async { Ok(self.guard.section().await) })
            .await?;
        let d = self.capacity_now(inst).await?;
        if d.allowed() {
            return Ok(Some(section));
        }
        drop(section);
        if !d.worth_waiting() {
            return Err(self.capacity_error(inst, &d, None));
        }
        let bound = self.inventory.lb.register_timeout + self.inventory.lb.drain_timeout;
        let text = format!(
            "{}: waiting for capacity: taking it out would leave {} of {} in service (lb.min_in_service = {}); waiting up to {} for an instance to come back",
            inst.name,
            d.after,
            d.fleet,
            self.inventory.lb.min_in_service,
            format_duration(bound)
        );
        info!(instance = %inst.name, step = "wait_capacity", "{text}");
        let wait = async {
            let started = tokio::time::Instant::now();
            let mut changed = changed;
            loop {
                self.ledger.set_detail(
                    &inst.name,
                    format!(
                        "waiting for capacity ({} of {} in service)",
                        d.serving, d.fleet
                    ),
                );
                // An instance may also come back by the LB's own checks.
                let poll = self
                    .inventory
                    .lb
                    .poll_interval
                    .unwrap_or(Duration::from_millis(500));
                tokio::select! {
                    _ = &mut changed => {},
                    _ = tokio::time::sleep(poll) => {},
                }
                changed = Box::pin(self.guard.next_change());
                changed.as_mut().enable();
                let section = self.guard.section().await;
                let d = self.capacity_now(inst).await?;
                if d.allowed() {
                    return Ok(section);
                }
                drop(section);
                let waited = started.elapsed();
                if waited >= bound || !d.worth_waiting() {
                    return Err(self.capacity_error(inst, &d, Some(waited)));
                }
            }
        };
        let section = self.act("wait_capacity", Some(inst), &text, wait).await?;
        Ok(Some(section))
    }

    /// The plan's view of the guard: parallel branches run one after another
    /// in a dry run, so the instances of the branches that would be out at
    /// the same time are counted from the recorder's lanes. A branch that
    /// would wait is noted, and the group's concurrency capped to what the
    /// floor allows, so the estimate is the real one.
    pub(super) fn plan_capacity(&self, inst: &Instance) -> ActionResult<()> {
        if self.providers.lb.kind() == "none" {
            return Ok(());
        }
        let Some(rec) = &self.recorder else {
            return Ok(());
        };
        let fleet = self.fleet_of(inst);
        let floor = self.floor_of(fleet);
        // Only this run's own removals count in a plan; they are few.
        let out = self.ledger.out_names();
        let out_here = match &inst.pool {
            None => out.len(),
            Some(_) => fleet.iter().filter(|i| out.contains(&i.name)).count(),
        };
        let siblings = rec.concurrent_siblings();
        let serving = fleet.len().saturating_sub(out_here + siblings);
        let inst_serving = !out.contains(&inst.name);
        let d = Decision {
            serving,
            after: serving.saturating_sub(inst_serving as usize),
            floor,
            fleet: fleet.len(),
            ours_out: out_here + siblings,
        };
        if d.allowed() {
            return Ok(());
        }
        if out_here > 0 || siblings == 0 {
            return Err(self.capacity_error(inst, &d, None));
        }
        let lanes = fleet.len().saturating_sub(floor).max(1);
        rec.note(format!(
            "{} waits for capacity: {} of {} would be out at once, lb.min_in_service = {} ({floor}); it goes when one is back in service (at most {lanes} at a time)",
            inst.name,
            siblings + 1,
            fleet.len(),
            self.inventory.lb.min_in_service,
        ));
        rec.cap_lanes(lanes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn fleet(n: usize) -> Vec<Instance> {
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
    pub(super) fn the_last_spare_instance_is_refused_while_one_of_ours_is_out() {
        let f = fleet(3);
        let d = decide(&f, &[InService; 3], |n| n == "web-1", "web-2", 2);
        assert_eq!((d.serving, d.after), (2, 1));
        assert!(!d.allowed());
        assert!(d.worth_waiting());
    }

    #[test]
    pub(super) fn an_instance_down_by_health_does_not_count_and_costs_nothing_to_take_out() {
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
    pub(super) fn parked_and_registered_but_unconfirmed_instances_are_not_serving() {
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
