//! The ELBv2 drain: what ends it.
//!
//! ELBv2 keeps a deregistered target `draining` for the target group's whole
//! `deregistration_delay` (300 s by default) even when its last request
//! ended a second after the deregister, and only then says `unused`. With
//! `lb.drain_detect = "auto"` the instance itself is asked too: once the
//! target is `draining` (the LB sends it no new request) and the host has
//! shown no established connection to the target's port for
//! `lb.drain_settle`, nothing is left to drain. Whichever comes first ends
//! the drain: that, or the LB's own `unused`, bounded by `lb.drain_timeout`.
//!
//! The LB is polled on its own backoff (ELBv2's answers change slowly and
//! API calls are billed); the host, over the ssh master already open, every
//! fifth of the settle time (at most 200 ms), and only while the target is
//! `draining`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::waits::{HealthSource, Subject, TargetStatus, TgState};
use crate::config::{format_duration, Instance};
use crate::primitives::{
    ActionError, ActionResult, DrainSignal, ErrorKind, MemberState, Transport,
};
use crate::providers::poll::Backoff;
use crate::providers::ssh::conns::{self, HostConns};

/// Where a drain counts the host's connections: ssh, or a script in tests.
#[async_trait]
pub(super) trait ConnSource: Send + Sync {
    async fn count(&self) -> ActionResult<HostConns>;
}

/// The instance's connections, counted over its ssh master.
pub(super) struct LiveHost<'a> {
    pub(super) ssh: &'a dyn Transport,
    pub(super) inst: &'a Instance,
    pub(super) port: u16,
    /// A host without `ss` is warned about once per run, not per drain.
    pub(super) warned_no_ss: &'a AtomicBool,
}

#[async_trait]
impl ConnSource for LiveHost<'_> {
    async fn count(&self) -> ActionResult<HostConns> {
        let found = conns::established(self.ssh, self.inst, self.port).await?;
        match found {
            HostConns::NoSs if !self.warned_no_ss.swap(true, Ordering::SeqCst) => warn!(
                instance = %self.inst.name,
                "{} has no `ss` (iproute2): its connections cannot be counted, so drains wait for the load balancer's own state (the whole deregistration delay); install iproute2, or set lb.drain_detect = \"lb\" to silence this",
                self.inst.name
            ),
            HostConns::NoListener => warn!(
                instance = %self.inst.name,
                "nothing listens on port {} where `ss` looks on {} (an app in a container behind NAT?): its connections cannot be counted there, so this drain waits for the load balancer alone",
                self.port, self.inst.name
            ),
            _ => {}
        }
        Ok(found)
    }
}

/// How long a drain took and what ended it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Drained {
    pub(super) waited: Duration,
    pub(super) ended_by: DrainSignal,
}

/// What a drain waits with.
pub(super) struct DrainWait<'a> {
    pub(super) who: Subject<'a>,
    pub(super) timeout: Duration,
    pub(super) poll: Backoff,
    /// The target group's deregistration delay, for the timeout's message.
    pub(super) configured_delay: Option<Duration>,
    /// `None`: the LB's state alone (`lb.drain_detect = "lb"`, or no ssh).
    pub(super) host: Option<&'a dyn ConnSource>,
    pub(super) settle: Duration,
}

/// The host poll: a fifth of the settle time, between 20 and 200 ms.
fn host_poll(settle: Duration) -> Duration {
    (settle / 5).clamp(Duration::from_millis(20), Duration::from_millis(200))
}

/// Polls until the target is `unused` or no longer listed (the LB's word),
/// or — with a host to ask — is `draining` and its host has had no
/// established connection for the settle time; fails with `drain_timeout`
/// at the timeout.
pub(super) async fn wait_drained(
    src: &dyn HealthSource,
    w: DrainWait<'_>,
) -> ActionResult<Drained> {
    let DrainWait {
        who,
        timeout,
        mut poll,
        configured_delay,
        mut host,
        settle,
    } = w;
    let start = Instant::now();
    let deadline = start + timeout;
    let mut last_state: Option<TgState> = None;
    let mut status: Option<TargetStatus> = None;
    let mut next_lb = start;
    // The LB sends it nothing new: connections can only end from here.
    let mut stopped_sending = false;
    let mut idle_since: Option<Instant> = None;
    let mut last_count: Option<u32> = None;
    loop {
        if Instant::now() >= next_lb {
            let s = src.read().await?;
            let now = Instant::now();
            if last_state.as_ref() != Some(&s.state) {
                debug!(instance = %who.name, "{} {}", who.id, s.render());
                last_state = Some(s.state.clone());
            }
            // `unused` or not listed (OutOfService): ELBv2 sends it nothing more.
            if s.member_state() == MemberState::OutOfService {
                return Ok(Drained {
                    waited: now - start,
                    ended_by: DrainSignal::Lb,
                });
            }
            stopped_sending = s.state == TgState::Draining;
            if !stopped_sending {
                // Still routed to (the deregister not yet applied): a quiet
                // host proves nothing yet.
                idle_since = None;
            }
            status = Some(s);
            next_lb = now + poll.next();
        }
        if let (true, Some(h)) = (stopped_sending, host) {
            match h.count().await {
                Ok(HostConns::Established(n)) => {
                    let now = Instant::now();
                    if last_count != Some(n) {
                        debug!(instance = %who.name, "{}: {n} established connection(s) on the host", who.name);
                        last_count = Some(n);
                    }
                    if n > 0 {
                        idle_since = None;
                    } else if now - *idle_since.get_or_insert(now) >= settle {
                        return Ok(Drained {
                            waited: now - start,
                            ended_by: DrainSignal::Host,
                        });
                    }
                }
                Ok(HostConns::NoSs | HostConns::NoListener) => {
                    host = None;
                    idle_since = None;
                }
                Err(e) => {
                    // Counting is an optimisation: the LB's state still ends the drain.
                    info!(
                        instance = %who.name,
                        "{}; this drain waits for the load balancer alone",
                        e.message
                    );
                    host = None;
                    idle_since = None;
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out(
                &who,
                timeout,
                configured_delay,
                status.as_ref(),
                last_count,
            ));
        }
        let wake = match (stopped_sending, host) {
            (true, Some(_)) => (now + host_poll(settle)).min(next_lb),
            _ => next_lb,
        };
        tokio::time::sleep_until(wake.min(deadline)).await;
    }
}

fn timed_out(
    who: &Subject<'_>,
    timeout: Duration,
    configured_delay: Option<Duration>,
    status: Option<&TargetStatus>,
    host_count: Option<u32>,
) -> ActionError {
    let delay = configured_delay
        .map(|d| {
            format!(
                "; the target group's deregistration_delay is {}",
                format_duration(d)
            )
        })
        .unwrap_or_default();
    let on_host = match host_count {
        Some(n) if n > 0 => format!("; {n} connection(s) still established on the host"),
        _ => String::new(),
    };
    let state = status.map_or_else(|| "unknown".to_string(), |s| s.render());
    let mut e = ActionError::new(
        ErrorKind::DrainTimeout,
        format!(
            "{} still {state} in target group {} after {} (lb.drain_timeout{delay}){on_host}",
            who.id,
            who.target_group,
            format_duration(timeout)
        ),
    )
    .host(who.name);
    if let Some(s) = status {
        e = e.detail("state", s.state.as_str());
    }
    e
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::providers::aws::tests::TG;
    use crate::providers::aws::waits::tests::Scripted;

    const WHO: Subject<'static> = Subject {
        name: "web-1",
        id: "i-0abc",
        target_group: TG,
    };

    /// A host whose count follows a script, one answer per count; the last repeats.
    struct Counts(Mutex<VecDeque<ActionResult<HostConns>>>, Mutex<usize>);

    impl Counts {
        fn new(answers: Vec<ActionResult<HostConns>>) -> Self {
            Self(Mutex::new(answers.into()), Mutex::new(0))
        }
        fn of(counts: &[u32]) -> Self {
            Self::new(
                counts
                    .iter()
                    .map(|n| Ok(HostConns::Established(*n)))
                    .collect(),
            )
        }
        fn asked(&self) -> usize {
            *self.1.lock().unwrap()
        }
    }

    #[async_trait]
    impl ConnSource for Counts {
        async fn count(&self) -> ActionResult<HostConns> {
            *self.1.lock().unwrap() += 1;
            let mut q = self.0.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().unwrap().clone()
            }
        }
    }

    fn fast() -> Backoff {
        Backoff::doubling(Duration::from_millis(1), Duration::from_millis(2))
    }

    const FAR: Duration = Duration::from_secs(60);

    fn wait<'a>(host: Option<&'a dyn ConnSource>, settle: Duration) -> DrainWait<'a> {
        DrainWait {
            who: WHO,
            timeout: FAR,
            poll: fast(),
            configured_delay: Some(Duration::from_secs(120)),
            host,
            settle,
        }
    }

    const DRAINING: (&str, Option<&str>) = ("draining", Some("Target.DeregistrationInProgress"));

    #[tokio::test]
    async fn a_draining_target_whose_host_stays_idle_for_the_settle_time_is_drained() {
        let src = Scripted::new(&[DRAINING]);
        let host = Counts::of(&[2, 1, 0]);
        let settle = Duration::from_millis(30);
        let d = wait_drained(&src, wait(Some(&host), settle)).await.unwrap();
        assert_eq!(d.ended_by, DrainSignal::Host);
        assert!(d.waited >= settle, "{d:?}");
        // Asked until the two connections closed, then through the settle time.
        assert!(host.asked() >= 4, "{}", host.asked());
    }

    #[tokio::test]
    async fn a_connection_during_the_settle_time_starts_it_again() {
        let src = Scripted::new(&[DRAINING]);
        // Idle, then a late connection (an LB node still sending), then idle.
        let mut answers = vec![0, 0, 1];
        answers.extend([0; 3]);
        let host = Counts::of(&answers);
        let d = wait_drained(&src, wait(Some(&host), Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(d.ended_by, DrainSignal::Host);
        assert!(host.asked() >= 4);
    }

    #[tokio::test]
    async fn an_idle_host_is_not_asked_while_the_lb_still_routes_to_it() {
        let src = Scripted::new(&[
            ("healthy", None),
            ("healthy", None),
            ("unused", Some("Target.NotRegistered")),
        ]);
        let host = Counts::of(&[0]);
        let d = wait_drained(&src, wait(Some(&host), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(d.ended_by, DrainSignal::Lb);
        assert_eq!(host.asked(), 0);
    }

    #[tokio::test]
    async fn unused_from_the_lb_ends_the_drain_while_connections_are_open() {
        let src = Scripted::new(&[DRAINING, DRAINING, ("unused", Some("Target.NotRegistered"))]);
        let host = Counts::of(&[3]);
        let d = wait_drained(&src, wait(Some(&host), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(d.ended_by, DrainSignal::Lb);
    }

    #[tokio::test]
    async fn a_host_without_ss_falls_back_to_the_lb_and_is_not_asked_again() {
        let src = Scripted::new(&[
            DRAINING,
            DRAINING,
            DRAINING,
            ("unused", Some("Target.NotRegistered")),
        ]);
        let host = Counts::new(vec![Ok(HostConns::NoSs)]);
        let d = wait_drained(&src, wait(Some(&host), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(d.ended_by, DrainSignal::Lb);
        assert_eq!(host.asked(), 1);
    }

    #[tokio::test]
    async fn a_failed_count_falls_back_to_the_lb() {
        let src = Scripted::new(&[DRAINING, DRAINING, ("absent", None)]);
        let host = Counts::new(vec![Err(ActionError::new(
            ErrorKind::Unreachable,
            "ssh to web-1 lost",
        ))]);
        let d = wait_drained(&src, wait(Some(&host), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(d.ended_by, DrainSignal::Lb);
        assert_eq!(host.asked(), 1);
    }

    #[tokio::test]
    async fn a_drain_past_its_timeout_names_the_connections_left_on_the_host() {
        let src = Scripted::new(&[DRAINING]);
        let host = Counts::of(&[2]);
        let mut w = wait(Some(&host), Duration::ZERO);
        w.timeout = Duration::from_millis(30);
        w.configured_delay = Some(Duration::from_secs(300));
        let err = wait_drained(&src, w).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::DrainTimeout);
        assert_eq!(err.host.as_deref(), Some("web-1"));
        assert_eq!(
            err.message,
            format!(
                "i-0abc still draining (Target.DeregistrationInProgress: described by ELBv2) in target group {TG} \
                 after 30ms (lb.drain_timeout; the target group's deregistration_delay is 300s); \
                 2 connection(s) still established on the host"
            )
        );
    }

    #[test]
    fn the_host_is_polled_five_times_per_settle_within_bounds() {
        assert_eq!(
            host_poll(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
        assert_eq!(
            host_poll(Duration::from_millis(250)),
            Duration::from_millis(50)
        );
        assert_eq!(host_poll(Duration::ZERO), Duration::from_millis(20));
    }
}
