//! A target's state as ELBv2 reports it (DescribeTargetHealth), and the
//! loop that waits for it to be healthy (`drain.rs` has the drain's). The
//! SDK's waiters poll at a fixed 15 s and never fail early on `unhealthy`,
//! so the loops are ours.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2 as elb;
use elb::types::TargetHealthDescription;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::clients::Target;
use super::errors;
use super::ElbV2;
use crate::config::format_duration;
use crate::primitives::{ActionError, ActionResult, ErrorKind, MemberState};
use crate::providers::poll::Backoff;

impl ElbV2 {
    /// DescribeTargetHealth of target group `group` for one target, or
    /// (`None`) every target the group lists: registered, initial, unhealthy
    /// and draining ones.
    pub(super) async fn describe_health(
        &self,
        group: &str,
        one: Option<&Target>,
    ) -> ActionResult<Vec<Listed>> {
        let out = self
            .clients()
            .await
            .elb
            .describe_target_health()
            .target_group_arn(group)
            .set_targets(one.map(|t| vec![t.description()]))
            .send()
            .await
            .map_err(|e| {
                let err = errors::sdk_error("DescribeTargetHealth", "target group", group, e);
                match one {
                    Some(t) => err.host(t.name.clone()),
                    None => err,
                }
            })?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(Listed::from_sdk)
            .collect())
    }

    /// The health of one target; a target the group does not list is `Absent`.
    pub(super) async fn health_of(&self, t: &Target) -> ActionResult<TargetStatus> {
        Ok(self
            .describe_health(&t.group, Some(t))
            .await?
            .into_iter()
            .find(|l| l.id == t.id && l.port.is_none_or(|p| p == t.port))
            .map(|l| l.status)
            .unwrap_or_else(TargetStatus::absent))
    }

    /// The deregistration delay the target group is configured with, for the
    /// drain report. Only informative: a failure to read it is logged.
    pub(super) async fn deregistration_delay(&self, group: &str) -> Option<Duration> {
        let read = self
            .clients()
            .await
            .elb
            .describe_target_group_attributes()
            .target_group_arn(group)
            .send()
            .await;
        match read {
            Ok(out) => out
                .attributes()
                .iter()
                .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
                .and_then(|a| a.value())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
            Err(e) => {
                warn!(
                    "{}",
                    errors::sdk_error("DescribeTargetGroupAttributes", "target group", group, e)
                        .message
                );
                None
            }
        }
    }
}

/// One row of DescribeTargetHealth.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) id: String,
    pub(super) port: Option<u16>,
    pub(super) status: TargetStatus,
}

impl Listed {
    fn from_sdk(d: &TargetHealthDescription) -> Option<Self> {
        let target = d.target()?;
        let health = d.target_health();
        Some(Self {
            id: target.id()?.to_string(),
            port: target.port().and_then(|p| u16::try_from(p).ok()),
            status: TargetStatus {
                state: TgState::parse(
                    health
                        .and_then(|h| h.state())
                        .map(|s| s.as_str())
                        .unwrap_or(""),
                ),
                reason: health
                    .and_then(|h| h.reason())
                    .map(|r| r.as_str().to_string()),
                description: health.and_then(|h| h.description()).map(str::to_string),
            },
        })
    }
}

/// ELBv2's target states, plus `Absent` for a target it does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TgState {
    Healthy,
    Initial,
    Draining,
    Unhealthy,
    Unused,
    Unavailable,
    Absent,
    Other(String),
}

impl TgState {
    fn parse(s: &str) -> Self {
        match s {
            "healthy" => Self::Healthy,
            "initial" => Self::Initial,
            "draining" => Self::Draining,
            "unhealthy" => Self::Unhealthy,
            "unused" => Self::Unused,
            "unavailable" => Self::Unavailable,
            other => Self::Other(other.to_string()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match self {
            Self::Healthy => "healthy",
            Self::Initial => "initial",
            Self::Draining => "draining",
            Self::Unhealthy => "unhealthy",
            Self::Unused => "unused",
            Self::Unavailable => "unavailable",
            Self::Absent => "not registered",
            Self::Other(s) => s,
        }
    }
}

/// A target's health: state, reason code and description, as ELBv2 gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TargetStatus {
    pub(super) state: TgState,
    pub(super) reason: Option<String>,
    pub(super) description: Option<String>,
}

impl TargetStatus {
    fn absent() -> Self {
        Self {
            state: TgState::Absent,
            reason: None,
            description: None,
        }
    }

    pub(super) fn member_state(&self) -> MemberState {
        if self.reason.as_deref() == Some("Target.NotRegistered") {
            return MemberState::OutOfService;
        }
        match self.state {
            TgState::Healthy => MemberState::InService,
            TgState::Initial => MemberState::Starting,
            TgState::Draining => MemberState::Draining,
            TgState::Unhealthy => MemberState::Unhealthy,
            TgState::Unused | TgState::Absent => MemberState::OutOfService,
            // With health checks disabled the LB routes to every target.
            TgState::Unavailable
                if self.reason.as_deref() == Some("Target.HealthCheckDisabled") =>
            {
                MemberState::InService
            }
            TgState::Unavailable | TgState::Other(_) => MemberState::Unknown,
        }
    }

    /// `unhealthy (Target.ResponseCodeMismatch: Health checks failed with these codes: [502])`.
    pub(super) fn render(&self) -> String {
        let mut s = self.state.as_str().to_string();
        match (&self.reason, &self.description) {
            (Some(r), Some(d)) => s.push_str(&format!(" ({r}: {d})")),
            (Some(r), None) => s.push_str(&format!(" ({r})")),
            (None, Some(d)) => s.push_str(&format!(" ({d})")),
            (None, None) => {}
        }
        s
    }
}

/// Where a wait reads a target's health from: ELBv2, or a scripted fake in tests.
#[async_trait]
pub(super) trait HealthSource: Send + Sync {
    async fn read(&self) -> ActionResult<TargetStatus>;
}

pub(super) struct LiveTarget<'a> {
    pub(super) lb: &'a ElbV2,
    pub(super) target: &'a Target,
}

#[async_trait]
impl HealthSource for LiveTarget<'_> {
    async fn read(&self) -> ActionResult<TargetStatus> {
        self.lb.health_of(self.target).await
    }
}

/// Who a wait is about, for its errors.
pub(super) struct Subject<'a> {
    pub(super) name: &'a str,
    pub(super) id: &'a str,
    pub(super) target_group: &'a str,
}

/// Polls until the target is `healthy`. Fails early (`health_failed`) when it
/// stays `unhealthy` for longer than `unhealthy_grace`, or is `unused` for a
/// reason waiting cannot fix (instance stopped, AZ not enabled); fails with
/// `timeout` at `timeout`.
pub(super) async fn wait_healthy(
    src: &dyn HealthSource,
    who: &Subject<'_>,
    timeout: Duration,
    mut poll: Backoff,
    unhealthy_grace: Duration,
) -> ActionResult<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut unhealthy_since: Option<Instant> = None;
    let mut last: Option<TgState> = None;
    loop {
        let status = src.read().await?;
        let now = Instant::now();
        if last.as_ref() != Some(&status.state) {
            debug!(instance = %who.name, "{} {}", who.id, status.render());
            last = Some(status.state.clone());
        }
        let failed = |why: String| {
            let mut e = ActionError::new(
                ErrorKind::HealthFailed,
                format!(
                    "{} is {} in target group {}{why}",
                    who.id,
                    status.render(),
                    who.target_group
                ),
            )
            .host(who.name)
            .detail("state", status.state.as_str());
            if let Some(r) = &status.reason {
                e = e.detail("reason", r);
            }
            e
        };
        match status.state {
            _ if status.member_state() == MemberState::InService => return Ok(now - start),
            TgState::Unhealthy => {
                let since = *unhealthy_since.get_or_insert(now);
                if now - since >= unhealthy_grace {
                    return Err(failed(format!(
                        " (unhealthy for {}; rollscript waits health.retries × health.interval = {})",
                        format_duration(now - since),
                        format_duration(unhealthy_grace)
                    )));
                }
            }
            TgState::Unused
                if matches!(
                    status.reason.as_deref(),
                    Some("Target.InvalidState" | "Target.IpUnusable" | "Target.NotInUse")
                ) =>
            {
                return Err(failed(String::new()));
            }
            _ => unhealthy_since = None,
        }
        if now >= deadline {
            return Err(ActionError::new(
                ErrorKind::Timeout,
                format!(
                    "{} not healthy in target group {} after {} (lb.register_timeout); last state: {}",
                    who.id,
                    who.target_group,
                    format_duration(timeout),
                    status.render()
                ),
            )
            .host(who.name)
            .detail("state", status.state.as_str()));
        }
        poll.pause(now, deadline).await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::providers::aws::drain::{wait_drained, DrainWait};
    use crate::providers::aws::tests::TG;

    /// A target whose health follows a script, one state per read; the last
    /// state repeats.
    pub(in crate::providers::aws) struct Scripted(Mutex<VecDeque<TargetStatus>>);

    impl Scripted {
        pub(in crate::providers::aws) fn new(states: &[(&str, Option<&str>)]) -> Self {
            Self(Mutex::new(
                states
                    .iter()
                    .map(|(s, r)| TargetStatus {
                        state: if *s == "absent" {
                            TgState::Absent
                        } else {
                            TgState::parse(s)
                        },
                        reason: r.map(str::to_string),
                        description: r.map(|_| "described by ELBv2".to_string()),
                    })
                    .collect(),
            ))
        }

        fn reads_left(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    #[async_trait]
    impl HealthSource for Scripted {
        async fn read(&self) -> ActionResult<TargetStatus> {
            let mut q = self.0.lock().unwrap();
            Ok(if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().unwrap().clone()
            })
        }
    }

    const WHO: Subject<'static> = Subject {
        name: "web-1",
        id: "i-0abc",
        target_group: TG,
    };

    // These loops run on the real clock with millisecond polls: every outcome
    // is decided by the scripted states (the timeouts are far away) or by a
    // target that never changes (the timeout is certain), never by timing.
    // With tokio's `test-util` feature they could pause the clock instead.
    fn fast() -> Backoff {
        Backoff::doubling(Duration::from_millis(1), Duration::from_millis(2))
    }

    const FAR: Duration = Duration::from_secs(60);

    fn lb_only(timeout: Duration, configured_delay: Option<Duration>) -> DrainWait<'static> {
        DrainWait {
            who: WHO,
            timeout,
            poll: fast(),
            configured_delay,
            host: None,
            settle: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn drain_ends_when_the_target_is_unused() {
        let src = Scripted::new(&[
            ("healthy", None),
            ("draining", Some("Target.DeregistrationInProgress")),
            ("draining", Some("Target.DeregistrationInProgress")),
            ("unused", Some("Target.NotRegistered")),
        ]);
        let d = wait_drained(&src, lb_only(FAR, None)).await.unwrap();
        assert_eq!(d.ended_by, crate::primitives::DrainSignal::Lb);
        assert_eq!(src.reads_left(), 1);
    }

    #[tokio::test]
    async fn drain_ends_when_the_target_is_no_longer_listed() {
        let src = Scripted::new(&[("draining", None), ("absent", None)]);
        wait_drained(&src, lb_only(FAR, None)).await.unwrap();
    }

    #[tokio::test]
    async fn a_drain_past_its_timeout_names_the_state_and_the_configured_delay() {
        let src = Scripted::new(&[("draining", Some("Target.DeregistrationInProgress"))]);
        let err = wait_drained(
            &src,
            lb_only(Duration::from_millis(20), Some(Duration::from_secs(300))),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::DrainTimeout);
        assert_eq!(err.host.as_deref(), Some("web-1"));
        assert_eq!(
            err.message,
            format!(
                "i-0abc still draining (Target.DeregistrationInProgress: described by ELBv2) in target group {TG} \
                 after 20ms (lb.drain_timeout; the target group's deregistration_delay is 300s)"
            )
        );
    }

    #[tokio::test]
    async fn in_service_after_initial_checks_pass() {
        let src = Scripted::new(&[
            ("unused", Some("Target.NotRegistered")),
            ("initial", Some("Elb.RegistrationInProgress")),
            ("initial", Some("Elb.InitialHealthChecking")),
            ("healthy", None),
        ]);
        wait_healthy(&src, &WHO, FAR, fast(), FAR).await.unwrap();
        assert_eq!(src.reads_left(), 1);
    }

    #[tokio::test]
    async fn a_target_that_stays_unhealthy_fails_early_with_the_elbv2_reason() {
        let src = Scripted::new(&[
            ("initial", Some("Elb.InitialHealthChecking")),
            ("unhealthy", Some("Target.ResponseCodeMismatch")),
        ]);
        let err = wait_healthy(&src, &WHO, FAR, fast(), Duration::from_millis(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::HealthFailed);
        assert_eq!(err.host.as_deref(), Some("web-1"));
        assert!(
            err.message.starts_with(&format!(
                "i-0abc is unhealthy (Target.ResponseCodeMismatch: described by ELBv2) in target group {TG} (unhealthy for "
            )),
            "{}",
            err.message
        );
        assert!(
            err.message
                .ends_with("; rollscript waits health.retries × health.interval = 5ms)"),
            "{}",
            err.message
        );
        assert!(err
            .details
            .contains(&("reason".into(), "Target.ResponseCodeMismatch".into())));
    }

    #[tokio::test]
    async fn a_target_that_recovers_within_the_grace_is_in_service() {
        let src = Scripted::new(&[
            ("unhealthy", Some("Target.Timeout")),
            ("unhealthy", Some("Target.Timeout")),
            ("initial", None),
            ("healthy", None),
        ]);
        wait_healthy(&src, &WHO, FAR, fast(), FAR).await.unwrap();
    }

    #[tokio::test]
    async fn unhealthy_with_no_grace_fails_at_the_first_sight() {
        let src = Scripted::new(&[
            ("unhealthy", Some("Target.FailedHealthChecks")),
            ("healthy", None),
        ]);
        let err = wait_healthy(&src, &WHO, FAR, fast(), Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::HealthFailed);
        assert_eq!(src.reads_left(), 1);
    }

    #[tokio::test]
    async fn a_stopped_instance_fails_at_once_instead_of_waiting_for_the_timeout() {
        let src = Scripted::new(&[("unused", Some("Target.InvalidState")), ("healthy", None)]);
        let err = wait_healthy(&src, &WHO, FAR, fast(), FAR)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::HealthFailed);
        assert_eq!(
            err.message,
            format!(
                "i-0abc is unused (Target.InvalidState: described by ELBv2) in target group {TG}"
            )
        );
    }

    #[tokio::test]
    async fn a_target_still_initial_at_the_timeout_reports_its_last_state() {
        let src = Scripted::new(&[("initial", Some("Elb.InitialHealthChecking"))]);
        let err = wait_healthy(&src, &WHO, Duration::from_millis(20), fast(), FAR)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert_eq!(
            err.message,
            format!(
                "i-0abc not healthy in target group {TG} after 20ms (lb.register_timeout); \
                 last state: initial (Elb.InitialHealthChecking: described by ELBv2)"
            )
        );
    }

    #[tokio::test]
    async fn health_checks_disabled_counts_as_in_service() {
        let src = Scripted::new(&[("unavailable", Some("Target.HealthCheckDisabled"))]);
        wait_healthy(&src, &WHO, FAR, fast(), FAR).await.unwrap();
    }

    #[test]
    fn target_states_map_to_member_states() {
        let s = |state: &str, reason: Option<&str>| {
            TargetStatus {
                state: TgState::parse(state),
                reason: reason.map(str::to_string),
                description: None,
            }
            .member_state()
        };
        assert_eq!(s("healthy", None), MemberState::InService);
        assert_eq!(s("initial", None), MemberState::Starting);
        assert_eq!(s("draining", None), MemberState::Draining);
        assert_eq!(s("unhealthy", None), MemberState::Unhealthy);
        assert_eq!(s("unused", None), MemberState::OutOfService);
        assert_eq!(
            s("unavailable", Some("Target.NotRegistered")),
            MemberState::OutOfService
        );
        assert_eq!(
            s("unavailable", Some("Target.HealthCheckDisabled")),
            MemberState::InService
        );
        assert_eq!(s("unavailable", None), MemberState::Unknown);
        assert_eq!(
            TargetStatus::absent().member_state(),
            MemberState::OutOfService
        );
    }
}
