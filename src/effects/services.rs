//! The services beside the fleet, each through its trait: time, the
//! migration's database lock, metric queries, notifications.

use std::time::Duration;

use tracing::{info, warn};

use super::Effects;
use crate::config::format_duration;
use crate::plan::Estimate;
use crate::primitives::{ActionError, ActionResult, ErrorKind};

impl Effects {
    // ---- time -------------------------------------------------------------

    pub async fn sleep(&self, d: Duration) -> ActionResult<()> {
        if self.record(format!("wait {}", format_duration(d)), Estimate::exact(d)) {
            return Ok(());
        }
        info!(step = "sleep", "waiting {}", format_duration(d));
        // `rollscript abort` ends a wait at once, as Ctrl-C does.
        self.cancellable(self.abortable_sleep(d)).await
    }

    /// Takes the migration lock (a PostgreSQL advisory lock); `Ok(None)` in a dry run.
    pub async fn migration_lock(
        &self,
        url: &str,
        key: i64,
    ) -> ActionResult<Option<Box<dyn crate::primitives::DbLock>>> {
        let text = format!(
            "postgres {}: pg_try_advisory_lock({key})",
            crate::journal::redact(url)
        );
        if self.record(text.clone(), Estimate::default()) {
            return Ok(None);
        }
        info!(step = "db_lock", "{text}");
        let lock = self
            .act(
                "db_lock",
                None,
                &text,
                self.providers.database.try_lock(url, key),
            )
            .await?;
        match lock {
            Some(l) => Ok(Some(l)),
            None => Err(ActionError::new(
                ErrorKind::Locked,
                format!("another session holds the migration lock {key} on {}: a migration is already running", crate::journal::redact(url)),
            )),
        }
    }

    /// One Prometheus instant query, journalled; the first sample's value,
    /// `None` for no data (a dry run has none either).
    pub async fn prometheus(&self, url: &str, promql: &str) -> ActionResult<Option<f64>> {
        if self.is_dry_run() {
            return Ok(None);
        }
        let text = format!("prometheus {}: {promql}", crate::journal::redact(url));
        let value = self
            .act(
                "metrics",
                None,
                &text,
                self.providers.metrics.query(url, promql),
            )
            .await?;
        let shown = value.map_or("no data".into(), |v| v.to_string());
        info!(step = "metrics", "{text} = {shown}");
        self.journal_answer("metrics", &text, &shown);
        Ok(value)
    }

    /// Posts `message` to a Slack-compatible webhook; failure is a warning.
    pub async fn notify(&self, url: &str, message: &str) -> bool {
        let text = format!("notify {}: {message:?}", crate::journal::redact(url));
        if self.record(text.clone(), Estimate::default()) {
            return true;
        }
        let r = self
            .act("notify", None, &text, async {
                self.providers
                    .notifier
                    .notify(url, message)
                    .await
                    .map_err(|e| {
                        ActionError::new(
                            ErrorKind::Unreachable,
                            format!("notification not delivered: {e}"),
                        )
                    })
            })
            .await;
        match r {
            Ok(()) => true,
            Err(e) => {
                warn!("{e} (the deploy goes on)");
                false
            }
        }
    }
}
