//! Health checks from the inventory's `[health]`.

use std::time::Duration;

use tracing::info;

use super::Effects;
use crate::config::{format_duration, Instance, OnHost};
use crate::plan::Estimate;
use crate::primitives::{ActionResult, Attempt, HealthProbe, HealthReport};

impl Effects {
    // ---- health ---------------------------------------------------------------

    /// The probe `health(inst)` runs, from the inventory's `[health]`.
    pub fn probe_for(&self, inst: &Instance) -> HealthProbe {
        let h = &self.inventory.health;
        let url = match &h.on_host {
            None => self.inventory.health_url(inst),
            // On the instance: its own loopback, as the seed's
            // `ssh host "curl -f http://localhost:4000/"` does.
            Some(_) => {
                let port = inst.health_port.or(inst.port).unwrap_or(h.port);
                format!("{}://localhost:{port}{}", h.scheme, h.path)
            }
        };
        HealthProbe {
            ready_after: None,
            on_host: h.on_host.clone(),
            url,
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
        let is_instance = self.inventory.position(who).is_some();
        // Only an instance has a host to check on; `health_url` is HTTP.
        let on_host = probe.on_host.clone().filter(|_| is_instance);
        let what = match &on_host {
            None => format!("http GET {}", probe.url),
            Some(OnHost::Curl) => format!("ssh {who}: curl {}", probe.url),
            Some(OnHost::Command(cmd)) => format!("ssh {who}: {cmd}"),
        };
        let expect = match &on_host {
            Some(OnHost::Command(_)) => "exit 0".to_string(),
            _ => probe.expect_status.to_string(),
        };
        let text = format!(
            "{what}: expect {expect}{}, {} in a row (up to {} tries)",
            probe
                .expect_body
                .as_ref()
                .map(|b| format!(" with body containing {b:?}"))
                .unwrap_or_default(),
            probe.healthy_threshold,
            probe.retries
        );
        if self.is_dry_run() {
            self.record(text, Estimate::new(typical, worst));
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
        let mut probe = probe.clone();
        if inst.is_some() {
            probe.ready_after = self.ready.expected();
        }
        let probe = &probe;
        let check = async {
            let checked = match (&on_host, &inst) {
                (Some(how), Some(i)) => self.check_on_host(i, probe, how).await,
                _ => self.providers.health.check(probe).await,
            };
            checked.map_err(|e| if e.host.is_none() { e.host(who) } else { e })
        };
        let report = self.act("health", inst.as_ref(), &text, check).await?;
        if inst.is_some() {
            self.ready
                .record(crate::providers::http::first_pass(&report));
        }
        info!(instance = %who, step = "healthy", "{who} healthy after {} attempt(s) in {}",
            report.attempts.len(), format_duration(report.duration));
        Ok(report)
    }
}
