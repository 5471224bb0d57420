//! HTTP health checks with `reqwest` (rustls): one fresh connection per
//! attempt, a per-attempt timeout, `healthy_threshold` successes in a row, and
//! on failure a summary of what every attempt saw.

use std::time::{Duration, Instant};

use async_trait::async_trait;

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
        let started = Instant::now();
        let mut attempts = Vec::new();
        let mut streak = 0;
        for n in 0..probe.retries {
            if n > 0 {
                tokio::time::sleep(probe.interval).await;
            }
            let at = started.elapsed();
            let t0 = Instant::now();
            let (ok, outcome) = self.attempt(probe).await;
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
        }
        let body = probe
            .expect_body
            .as_ref()
            .map(|b| format!(" with a body containing {b:?}"))
            .unwrap_or_default();
        Err(ActionError::new(
            ErrorKind::HealthFailed,
            format!(
                "{} not healthy after {} attempts over {}: expected {}{body}, {} in a row; saw {}",
                probe.url,
                attempts.len(),
                format_duration(started.elapsed()),
                probe.expect_status,
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
