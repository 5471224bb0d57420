//! Blue/green on HAProxy: switching the traffic from one pool's servers to
//! another's, once HAProxy's own checks say the incoming pool is up.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::commands::{set_state_cmd, AdminState};
use super::stat::{ServerStat, Status};
use super::HaproxyLb;
use crate::config::{format_duration, Instance};
use crate::primitives::{ActionError, ActionResult, ErrorKind};

impl HaproxyLb {
    /// The instances of every pool, split into the target pool and the rest.
    fn pool_members(&self, pool: &str) -> (Vec<&Instance>, Vec<&Instance>) {
        self.inv
            .instances
            .iter()
            .filter(|i| i.pool.is_some())
            .partition(|i| i.pool.as_deref() == Some(pool))
    }

    /// One socket write: the target pool's servers `ready` first (so there is
    /// no instant with nobody serving), then every other pool's `drain`. The
    /// old pool keeps running and health-checked, for an instant switch back.
    pub(super) async fn switch_to(&self, pool: &str) -> ActionResult<()> {
        let (target, others) = self.pool_members(pool);
        if target.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("no instance has pool = {pool:?}"),
            ));
        }
        // HAProxy's own checks decide when the pool may take traffic: wait
        // (≤ lb.register_timeout) until every incoming server it checks is
        // UP — a pool just deployed is DOWN until `rise` checks passed.
        // Servers in maint are not checked: their health is known only after
        // `ready`.
        let started = Instant::now();
        let deadline = started + self.inv.lb.register_timeout;
        let mut poll = self.poll();
        let resolve = loop {
            let mut rows: BTreeMap<&str, Vec<ServerStat>> = BTreeMap::new();
            let mut resolve = Vec::new();
            let mut missing = Vec::new();
            for (inst, up) in target
                .iter()
                .map(|i| (*i, true))
                .chain(others.iter().map(|i| (*i, false)))
            {
                let backend = self.backend_of(inst);
                if !rows.contains_key(backend) {
                    rows.insert(backend, self.servers(backend).await?);
                }
                match self.find(inst, &rows[backend]).await {
                    Some(row) => resolve.push((row.clone(), up)),
                    None => missing.push(self.missing(inst, backend, &rows[backend])),
                }
            }
            if !missing.is_empty() {
                return Err(ActionError::new(
                    ErrorKind::Lb,
                    format!(
                        "cannot switch to pool {pool}: {}; nothing was changed",
                        missing.join("; ")
                    ),
                ));
            }
            let not_up: Vec<&ServerStat> = resolve
                .iter()
                .filter(|(r, up)| {
                    *up && matches!(Status::of(&r.status), Status::Down | Status::Rising)
                })
                .map(|(r, _)| r)
                .collect();
            if not_up.is_empty() {
                break resolve;
            }
            let incoming = resolve.iter().filter(|(_, up)| *up).count();
            let now = Instant::now();
            if now >= deadline {
                let why: Vec<String> = not_up
                    .iter()
                    .map(|r| {
                        format!(
                            "{}/{} {} ({})",
                            r.backend,
                            r.server,
                            r.status,
                            r.check_text()
                        )
                    })
                    .collect();
                // Draining the serving pool for a pool HAProxy knows is dead
                // would take the site down.
                if not_up.len() == incoming {
                    return Err(ActionError::new(
                        ErrorKind::HealthFailed,
                        format!(
                            "refusing to switch to pool {pool}: after {} HAProxy's health checks report none of its servers up: {}; nothing was changed",
                            format_duration(started.elapsed()),
                            why.join(", ")
                        ),
                    ));
                }
                tracing::warn!(
                    "switching to pool {pool} with {} of its {incoming} servers not up after {}: {}",
                    not_up.len(),
                    format_duration(started.elapsed()),
                    why.join(", ")
                );
                break resolve;
            }
            poll.pause(now, deadline).await;
        };
        let mut cmds = Vec::new();
        for (row, up) in resolve
            .iter()
            .filter(|(_, up)| *up)
            .chain(resolve.iter().filter(|(_, up)| !*up))
        {
            let state = if *up {
                AdminState::Ready
            } else {
                AdminState::Drain
            };
            cmds.push(set_state_cmd(&row.backend, &row.server, state)?);
        }
        let line = cmds.join("; ");
        let reply = self.api.send(&line).await?;
        if !reply.is_empty() {
            return Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "HAProxy at {} replied {reply:?} to the switch to pool {pool}; check `show stat`: the commands before the failing one took effect",
                    self.api
                ),
            )
            .command(line));
        }
        Ok(())
    }

    /// The plan's line for a switch to `pool`.
    pub(super) fn describe_pools(&self, pool: &str) -> String {
        let (target, others) = self.pool_members(pool);
        let list = |v: &[&Instance]| {
            v.iter()
                .map(|i| self.label(i))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if others.is_empty() {
            format!("haproxy: ready {} (pool {pool})", list(&target))
        } else {
            format!(
                "haproxy: ready {} (pool {pool}), drain {} — one command",
                list(&target),
                list(&others)
            )
        }
    }
}
