//! HTTP health checks with `reqwest` (rustls): one fresh connection per
//! attempt, a per-attempt timeout, `healthy_threshold` successes in a row, and
//! on failure a summary of what every attempt saw.

use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use super::poll::fine_step;
use crate::config::format_duration;
use crate::primitives::{
    ActionError, ActionResult, Attempt, ErrorKind, HealthCheck, HealthProbe, HealthReport,
};

pub struct HttpHealth {
    /// Built on the first check: building it loads the system's root
    /// certificates (about half of `rollscript check`'s time), which plans
    /// and checks never need.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl HttpHealth {
    pub fn new() -> Self {
        Self {
            client: std::sync::OnceLock::new(),
        }
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                // Health endpoints are checked directly, never through a proxy
                // from the environment, and every attempt is a fresh connection
                // so a dead instance cannot hide behind a pooled socket.
                .no_proxy()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("rollscript/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("http client builds")
        })
    }

    async fn attempt(&self, probe: &HealthProbe) -> (bool, String) {
        let resp = self
            .client()
            .get(&probe.url)
            .timeout(probe.timeout)
            .send()
            .await;
        match resp {
            Err(e) => (false, describe_error(&e, probe.timeout)),
            Ok(r) => {
                let status = r.status().as_u16();
                if status != probe.expect_status {
                    return (false, status.to_string());
                }
                match &probe.expect_body {
                    None => (true, status.to_string()),
                    Some(needle) => match r.text().await {
                        Ok(body) if body.contains(needle.as_str()) => (true, status.to_string()),
                        Ok(_) => (false, format!("{status}, body lacks {needle:?}")),
                        Err(e) => (
                            false,
                            format!(
                                "{status}, body unreadable: {}",
                                describe_error(&e, probe.timeout)
                            ),
                        ),
                    },
                }
            }
        }
    }
}

impl Default for HttpHealth {
    fn default() -> Self {
        Self::new()
    }
}

/// One attempt's failure in a few words: `connection refused`, `timeout
/// after 2s`, `connection closed without a response`, …
fn describe_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timeout after {}", format_duration(timeout));
    }
    let mut innermost = e.to_string();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                std::io::ErrorKind::TimedOut => {
                    return format!("timeout after {}", format_duration(timeout))
                }
                _ => {}
            }
        }
        innermost = s.to_string();
        src = s.source();
    }
    let text = innermost.to_lowercase();
    if text.contains("dns error")
        || text.contains("failed to lookup")
        || text.contains("name or service not known")
        || text.contains("no address associated")
    {
        return "host name does not resolve".into();
    }
    // hyper: "connection closed before message completed".
    if text.contains("connection closed before message completed") {
        return "connection closed without a response".into();
    }
    innermost
}

#[async_trait]
impl HealthCheck for HttpHealth {
    async fn check(&self, probe: &HealthProbe) -> ActionResult<HealthReport> {
        let body = probe
            .expect_body
            .as_ref()
            .map(|b| format!(" with a body containing {b:?}"))
            .unwrap_or_default();
        let expect = format!("{}{body}", probe.expect_status);
        retry(probe, &probe.url, &expect, || async {
            Ok(self.attempt(probe).await)
        })
        .await
    }
}

/// The delay before the next attempt. After a failure: `interval`, except
/// around the moment earlier instances of this run first passed
/// (`ready_after`, e): from 0.8 e to 1.5 e + interval the attempts come
/// every [`fine_step`] of e (10 ms for an app that boots in 0.5 s), so a
/// friendly `interval` for real apps does not cost an interval on every
/// instance. Between the passes of one streak: always `interval` (the
/// threshold is about staying healthy over time). The bool: the attempt
/// counts against `retries` (fine ones do not).
fn next_attempt(probe: &HealthProbe, elapsed: Duration, streak: u32) -> (Duration, bool) {
    let interval = probe.interval;
    let Some(e) = probe.ready_after.filter(|_| streak == 0) else {
        return (interval, true);
    };
    let (from, until) = (e * 4 / 5, e * 3 / 2 + interval);
    if elapsed + interval <= from || elapsed >= until {
        (interval, true)
    } else if elapsed < from {
        (from - elapsed, true)
    } else {
        (fine_step(e, interval), false)
    }
}

/// The retry loop of every health check (HTTP from here, curl or a command
/// on the instance): `attempt` makes one try and says (passed, what it
/// saw); its error ends the check at once (cancelled, or retrying cannot
/// help). `what` and `expect` word the failure.
pub(crate) async fn retry<F, Fut>(
    probe: &HealthProbe,
    what: &str,
    expect: &str,
    mut attempt: F,
) -> ActionResult<HealthReport>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ActionResult<(bool, String)>>,
{
    let started = Instant::now();
    let mut attempts = Vec::new();
    let mut streak = 0;
    let (mut counted, mut counts) = (0, true);
    loop {
        counted += counts as u32;
        let at = started.elapsed();
        let t0 = Instant::now();
        let (ok, outcome) = attempt().await?;
        attempts.push(Attempt {
            at,
            outcome,
            ok,
            latency: t0.elapsed(),
        });
        streak = if ok { streak + 1 } else { 0 };
        if streak >= probe.healthy_threshold {
            return Ok(HealthReport {
                url: probe.url.clone(),
                attempts,
                duration: started.elapsed(),
            });
        }
        let (delay, counts_next) = next_attempt(probe, started.elapsed(), streak);
        if counts_next && counted >= probe.retries {
            break;
        }
        counts = counts_next;
        tokio::time::sleep(delay).await;
    }
    // `health.retries` counts the attempts at `health.interval`; the finer
    // polls around the moment this run's instances became ready are extra.
    let closer = attempts.len() as u32 - counted;
    let extra = if closer > 0 {
        format!(" (and {closer} closer polls around when instances became ready so far)")
    } else {
        String::new()
    };
    Err(ActionError::new(
        ErrorKind::HealthFailed,
        format!(
            "{what} not healthy after {counted} attempts over {}{extra}: expected {expect}, {} in a row; saw {}",
            format_duration(started.elapsed()),
            probe.healthy_threshold,
            summarise(&attempts)
        ),
    )
    .detail("attempts", attempts.len())
    .detail(
        "last",
        attempts
            .last()
            .map(|a| a.outcome.clone())
            .unwrap_or_default(),
    ))
}

/// When `report`'s passing streak began: what `ready_after` learns from.
pub(crate) fn first_pass(report: &HealthReport) -> Duration {
    let fails = report.attempts.iter().rposition(|a| !a.ok);
    let first_ok = fails.map_or(0, |i| i + 1);
    report
        .attempts
        .get(first_ok)
        .map_or(report.duration, |a| a.at)
}

/// `3× connection refused, then 2× 503, then 200` — what each run of attempts saw.
pub fn summarise(attempts: &[Attempt]) -> String {
    let mut runs: Vec<(String, usize)> = Vec::new();
    for a in attempts {
        match runs.last_mut() {
            Some((o, n)) if *o == a.outcome => *n += 1,
            _ => runs.push((a.outcome.clone(), 1)),
        }
    }
    runs.iter()
        .map(|(o, n)| {
            if *n == 1 {
                o.clone()
            } else {
                format!("{n}× {o}")
            }
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// The live [`crate::primitives::Metrics`]: Prometheus' HTTP API.
pub struct PrometheusMetrics;

#[async_trait]
impl crate::primitives::Metrics for PrometheusMetrics {
    async fn query(&self, url: &str, promql: &str) -> ActionResult<Option<f64>> {
        prometheus_query(url, promql).await
    }
}

/// The live [`crate::primitives::Notifier`]: Slack-compatible webhooks.
pub struct WebhookNotifier;

#[async_trait]
impl crate::primitives::Notifier for WebhookNotifier {
    async fn notify(&self, url: &str, message: &str) -> Result<(), String> {
        notify(url, message).await
    }
}

/// Posts a Slack-compatible webhook (`{"text": message}`): 5 s per attempt,
/// 3 attempts with backoff. A notification that cannot be delivered is a
/// warning, never a failed deploy, so this returns the last error as text.
pub async fn notify(url: &str, message: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("rollscript/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({ "text": message }).to_string();
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 * 2u64.pow(attempt))).await;
        }
        match client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) => last = describe_error(&e, Duration::from_secs(5)),
        }
    }
    Err(last)
}

/// `GET {base}/api/v1/query?query=…`: the first sample's value, 0.0 if none.
/// The first sample's value; `None` when there is none or it is not a
/// number (NaN, ±Inf: `0/0` over no traffic): no data, never "0".
pub async fn prometheus_query(base: &str, promql: &str) -> ActionResult<Option<f64>> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let fail =
        |m: String| ActionError::new(ErrorKind::GateFailed, format!("prometheus {url}: {m}"));
    let full = reqwest::Url::parse_with_params(&url, &[("query", promql)])
        .map_err(|e| fail(e.to_string()))?;
    let resp = reqwest::Client::new()
        .get(full)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| fail(describe_error(&e, Duration::from_secs(10))))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| fail(format!("HTTP {status}, unreadable body: {e}")))?;
    let body: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("HTTP {status}, not JSON ({e})")))?;
    if body["status"] != "success" {
        return Err(fail(format!("query {promql:?} failed: {}", body["error"])));
    }
    let first = &body["data"]["result"][0]["value"][1];
    match first {
        serde_json::Value::Null => Ok(None),
        v => v
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .map(|x| x.is_finite().then_some(x))
            .ok_or_else(|| fail(format!("unexpected sample {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ready_after: Option<Duration>) -> HealthProbe {
        HealthProbe {
            url: "http://127.0.0.1:1/health".into(),
            expect_status: 200,
            expect_body: None,
            timeout: Duration::from_secs(1),
            interval: Duration::from_millis(100),
            retries: 30,
            healthy_threshold: 2,
            on_host: None,
            ready_after,
        }
    }

    /// An app that answers from `ready` on; the attempts' times.
    async fn run(p: &HealthProbe, ready: Duration) -> (HealthReport, Vec<u128>) {
        let start = tokio::time::Instant::now();
        let seen = std::sync::Mutex::new(Vec::new());
        let report = retry(p, &p.url, "200", || async {
            let t = start.elapsed();
            seen.lock().unwrap().push(t.as_millis());
            Ok((
                t >= ready,
                if t >= ready {
                    "200"
                } else {
                    "connection refused"
                }
                .into(),
            ))
        })
        .await
        .unwrap();
        (report, seen.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_learned_moment_attempts_come_every_interval() {
        let (report, at) = run(&probe(None), Duration::from_millis(450)).await;
        assert_eq!(at, [0, 100, 200, 300, 400, 500, 600]);
        assert_eq!(first_pass(&report).as_millis(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn around_the_learned_moment_attempts_are_fine_then_the_streak_keeps_its_interval() {
        let (report, at) = run(
            &probe(Some(Duration::from_millis(500))),
            Duration::from_millis(455),
        )
        .await;
        // Regular up to 0.8 × 500 = 400 ms, then every 10 ms; the second
        // pass of the streak an interval after the first.
        assert_eq!(&at[..6], &[0, 100, 200, 300, 400, 410]);
        assert_eq!(*at.last().unwrap() - at[at.len() - 2], 100);
        assert_eq!(first_pass(&report).as_millis(), 460);
    }

    #[tokio::test(start_paused = true)]
    async fn fine_attempts_do_not_spend_the_retries() {
        let mut p = probe(Some(Duration::from_millis(500)));
        p.retries = 3;
        let err = retry(&p, &p.url, "200", || async {
            Ok((false, "503".to_string()))
        })
        .await
        .unwrap_err();
        // 3 counted attempts (0, 100, 200 ms) and none in the window, which
        // starts at 400 ms: the budget ends before it.
        assert!(err.message.contains("after 3 attempts"), "{}", err.message);
        p.retries = 6;
        let err = retry(&p, &p.url, "200", || async {
            Ok((false, "503".to_string()))
        })
        .await
        .unwrap_err();
        // 0..400 ms counted (5), then 45 fine ones up to 850 ms, then one
        // more counted: the message counts the retries and names the rest.
        assert!(
            err.message.contains(
                "not healthy after 6 attempts over 950ms (and 45 closer polls around when instances became ready so far)"
            ) && err.message.ends_with("saw 51× 503"),
            "{}",
            err.message
        );
    }
}
