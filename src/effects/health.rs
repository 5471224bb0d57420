//! Health checks from the inventory's `[health]`.

use std::time::Duration;

use tracing::info;

use super::Effects;
use crate::config::{format_duration, Instance};
use crate::plan::Estimate;
use crate::primitives::{ActionResult, Attempt, HealthProbe, HealthReport};

impl Effects {
    // ---- health ---------------------------------------------------------------

    /// The probe `health(inst)` runs, from the inventory's `[health]`.
    pub fn probe_for(&self, inst: &Instance) -> HealthProbe {
        let h = &self.inventory.health;
        HealthProbe {
            url: self.inventory.health_url(inst),
            expect_status: h.expect_status,
            expect_body: h.expect_body.clone(),
            timeout: h.timeout,
            interval: h.interval,
            retries: h.retries,
            healthy_threshold: h.healthy_threshold,
        }
    }

    pub async fn health(&self, who: &str, probe: &HealthProbe) -> ActionResult<HealthReport> {
        let worst = (probe.timeout + probe.interval) * probe.retries;
        let typical = probe.interval * probe.healthy_threshold.saturating_sub(1);
        let text = format!(
            "http GET {}: expect {}{}, {} in a row (up to {} tries)",
            probe.url,
            probe.expect_status,
            probe
                .expect_body
                .as_ref()
                .map(|b| format!(" with body containing {b:?}"))
                .unwrap_or_default(),
            probe.healthy_threshold,
            probe.retries
        );
        if self.record(text.clone(), Estimate::new(typical, worst)) {
            return Ok(HealthReport {
                url: probe.url.clone(),
                attempts: vec![Attempt {
                    at: Duration::ZERO,
                    outcome: "assumed healthy (dry run)".into(),
                    ok: true,
                    latency: Duration::ZERO,
                }],
                duration: Duration::ZERO,
            });
        }
        info!(instance = %who, step = "health", "{text}");
        let inst = self.inventory.instance(who).cloned();
        let check = async {
            self.providers.health.check(probe).await.map_err(|e| {
                if e.host.is_none() {
                    e.host(who)
                } else {
                    e
                }
            })
        };
        let report = self.act("health", inst.as_ref(), &text, check).await?;
        info!(instance = %who, step = "healthy", "{who} healthy after {} attempt(s) in {}",
            report.attempts.len(), format_duration(report.duration));
        Ok(report)
    }
}
