//! When one upstream server has drained: nginx (open source) reports no
//! per-server connections, so they are counted on the nginx host with `ss`
//! (`providers::connections`). A server is drained when nginx has no
//! established connection to it left — or when every worker that served
//! before the `down` reload has exited, whichever comes first (both mean no
//! request is in flight to it). A request held on another server no longer
//! delays this one's drain. Without `ss` on the nginx host: old workers only.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::workers::Until;
use super::NginxLb;
use crate::config::{format_duration, Instance};
use crate::primitives::{ActionError, ActionResult, DrainReport, ErrorKind};
use crate::providers::connections::{self, CountError};
use crate::providers::poll::Backoff;

/// How a per-server drain ended.
pub(super) enum Drained {
    Done(DrainReport),
    /// Timed out: connections still open, the old workers still alive.
    TimedOut {
        connections: u64,
        workers: Vec<u32>,
    },
    /// No `ss` on the nginx host: wait for the old workers instead.
    NoSs(ActionError),
}

impl NginxLb {
    pub(super) async fn drain_server(
        &self,
        inst: &Instance,
        old: &BTreeSet<u32>,
        timeout: Duration,
    ) -> ActionResult<Drained> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut poll = Backoff::fast_or_fixed(self.inv.lb.poll_interval);
        let port = self.inv.traffic_port(inst);
        let (transport, on) = self.host.transport();
        let mut at_start = None;
        loop {
            let open = match connections::established(transport, on, &inst.host, port).await {
                Ok(n) => n,
                Err(CountError::Missing(e)) => return Ok(Drained::NoSs(e)),
                Err(CountError::Other(e)) => return Err(e.host(&inst.name)),
            };
            at_start.get_or_insert(open);
            let report = || DrainReport {
                waited: started.elapsed(),
                connections_at_start: at_start,
                configured_delay: None,
                ended_by: Default::default(),
            };
            if open == 0 {
                return Ok(Drained::Done(report()));
            }
            let procs = self
                .host
                .processes()
                .await
                .map_err(|e| e.host(&inst.name))?;
            let alive: Vec<u32> = old
                .iter()
                .copied()
                .filter(|pid| procs.iter().any(|p| p.pid == *pid))
                .collect();
            if alive.is_empty() {
                return Ok(Drained::Done(report()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Drained::TimedOut {
                    connections: open,
                    workers: alive,
                });
            }
            poll.pause(now, deadline).await;
        }
    }

    /// The drain of [`Self::drain_server`], falling back to the old
    /// workers alone when the nginx host has no `ss`.
    pub(super) async fn drain(
        &self,
        inst: &Instance,
        old: &BTreeSet<u32>,
        timeout: Duration,
    ) -> ActionResult<DrainReport> {
        let started = Instant::now();
        let addr = self.addr(inst);
        let timed_out = |connections: Option<u64>, workers: &[u32]| {
            // Kept, so a retry waits for the same workers.
            self.add_pending(&inst.name, &workers.iter().copied().collect());
            let open = match connections {
                Some(n) => format!("{n} connection(s) from {} to {addr} still open", self.who()),
                None => format!(
                    "{} old nginx worker(s) (pids {}) still finishing requests",
                    workers.len(),
                    workers
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            ActionError::new(
                ErrorKind::DrainTimeout,
                format!(
                    "{open} after {}; {addr} is marked down, so it gets no new ones. Raise lb.drain_timeout, or set nginx's worker_shutdown_timeout for long-lived connections (websockets, streaming)",
                    format_duration(timeout)
                ),
            )
            .host(&inst.name)
            .detail("connections", connections.unwrap_or(0))
            .detail("workers", workers.len())
        };
        match self.drain_server(inst, old, timeout).await? {
            Drained::Done(report) => Ok(report),
            Drained::TimedOut {
                connections,
                workers,
            } => Err(timed_out(Some(connections), &workers)),
            Drained::NoSs(why) => {
                warn!(instance = %inst.name, "{}; waiting for nginx's old workers to exit instead", why.message);
                let left = timeout.saturating_sub(started.elapsed());
                match self
                    .host
                    .wait_for(old, Until::Gone, left, self.inv.lb.poll_interval)
                    .await
                    .map_err(|e| e.host(&inst.name))?
                {
                    Ok(()) => Ok(DrainReport {
                        waited: started.elapsed(),
                        connections_at_start: None,
                        configured_delay: None,
                        ended_by: Default::default(),
                    }),
                    Err(still) => Err(timed_out(None, &still)),
                }
            }
        }
    }
}
