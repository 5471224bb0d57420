//! Which HAProxy server an instance is, and sending it one command.
//!
//! Servers are matched by inventory name, or by address (`host:port`, port =
//! the instance's traffic port) when the backend has no server of that name;
//! a by-address match is remembered for the run, so later commands take one
//! round trip.

use std::net::IpAddr;
use std::time::Duration;

use super::commands::{hint_for, show_stat_cmd, BadName, NO_SUCH_SERVER};
use super::stat::{parse_show_stat, ServerStat};
use super::HaproxyLb;
use crate::config::{host_for_url, Instance};
use crate::primitives::{ActionError, ActionResult, ErrorKind};

impl HaproxyLb {
    fn cached_server(&self, inst: &Instance) -> Option<String> {
        self.by_address.lock().unwrap().get(&inst.name).cloned()
    }

    /// Every server of `backend`, from `show stat`.
    pub(super) async fn servers(&self, backend: &str) -> ActionResult<Vec<ServerStat>> {
        let cmd = show_stat_cmd(backend)?;
        let reply = self.api.send(&cmd).await?;
        parse_show_stat(&reply).map_err(|reply| {
            let hint = hint_for(&reply, backend, "");
            ActionError::new(
                ErrorKind::Lb,
                format!("HAProxy at {} replied {reply:?}{hint}", self.api),
            )
            .command(cmd)
        })
    }

    /// The `show stat` row of `inst`, or None when the backend has no server
    /// of that name nor at its address.
    pub(super) async fn find<'a>(
        &self,
        inst: &Instance,
        rows: &'a [ServerStat],
    ) -> Option<&'a ServerStat> {
        if let Some(name) = self.cached_server(inst) {
            if let Some(row) = rows.iter().find(|r| r.server == name) {
                return Some(row);
            }
        }
        if let Some(row) = rows.iter().find(|r| r.server == inst.name) {
            return Some(row);
        }
        let addrs = address_forms(&inst.host, self.inv.traffic_port(inst)).await;
        let row = rows.iter().find(|r| addrs.contains(&r.addr))?;
        self.by_address
            .lock()
            .unwrap()
            .insert(inst.name.clone(), row.server.clone());
        Some(row)
    }

    /// Whether `row` is at `inst`'s `host:port`, as HAProxy prints it.
    pub(super) async fn at(&self, inst: &Instance, row: &ServerStat) -> bool {
        address_forms(&inst.host, self.inv.traffic_port(inst))
            .await
            .contains(&row.addr)
    }

    /// The row of `inst`, or an error naming what the backend does hold.
    pub(super) async fn row(&self, inst: &Instance) -> ActionResult<ServerStat> {
        let backend = self.backend_of(inst);
        let rows = self
            .servers(backend)
            .await
            .map_err(|e| e.host(&inst.name))?;
        match self.find(inst, &rows).await {
            Some(row) => Ok(row.clone()),
            None => Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "HAProxy at {}: {}",
                    self.api,
                    self.missing(inst, backend, &rows)
                ),
            )
            .host(&inst.name)),
        }
    }

    /// "backend x has no server named y nor one at h:p (servers: …)".
    pub(super) fn missing(&self, inst: &Instance, backend: &str, rows: &[ServerStat]) -> String {
        let names: Vec<&str> = rows.iter().map(|r| r.server.as_str()).collect();
        format!(
            "backend {backend} has no server named {} nor one at {}:{} (its servers: {})",
            inst.name,
            host_for_url(&inst.host),
            self.inv.traffic_port(inst),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    }

    /// Sends `build(backend, server)` for `inst`. The inventory name is tried
    /// first (one round trip in the common case); on `No such server.` the
    /// server is looked up by address and the command sent again.
    pub(super) async fn set_server(
        &self,
        inst: &Instance,
        build: impl Fn(&str, &str) -> Result<String, BadName>,
    ) -> ActionResult<()> {
        let backend = self.backend_of(inst);
        let cached = self.cached_server(inst);
        let name = cached.clone().unwrap_or_else(|| inst.name.clone());
        let cmd = build(backend, &name).map_err(|e| ActionError::from(e).host(&inst.name))?;
        let reply = self.api.send(&cmd).await.map_err(|e| e.host(&inst.name))?;
        if reply.is_empty() {
            return Ok(());
        }
        if reply != NO_SUCH_SERVER || cached.is_some() {
            return Err(self.refused(inst, &cmd, &reply, backend));
        }
        let rows = self
            .servers(backend)
            .await
            .map_err(|e| e.host(&inst.name))?;
        let Some(row) = self.find(inst, &rows).await else {
            return Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "HAProxy at {} replied {reply:?}: {}",
                    self.api,
                    self.missing(inst, backend, &rows)
                ),
            )
            .host(&inst.name)
            .command(cmd));
        };
        let cmd = build(backend, &row.server).map_err(|e| ActionError::from(e).host(&inst.name))?;
        let reply = self.api.send(&cmd).await.map_err(|e| e.host(&inst.name))?;
        if reply.is_empty() {
            Ok(())
        } else {
            Err(self.refused(inst, &cmd, &reply, backend))
        }
    }

    fn refused(&self, inst: &Instance, cmd: &str, reply: &str, backend: &str) -> ActionError {
        let hint = hint_for(reply, backend, &inst.name);
        ActionError::new(
            ErrorKind::Lb,
            format!("HAProxy at {} replied {reply:?}{hint}", self.api),
        )
        .host(&inst.name)
        .command(cmd)
    }
}

/// The ways HAProxy may print the address of `host:port` in `show stat`.
async fn address_forms(host: &str, port: u16) -> Vec<String> {
    let mut forms = vec![
        format!("{}:{port}", host_for_url(host)),
        format!("{host}:{port}"),
    ];
    if host.parse::<IpAddr>().is_err() {
        // HAProxy shows the address a name resolved to. Bounded: a slow
        // resolver must not stall a drain poll.
        let lookup = tokio::net::lookup_host((host, port));
        if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
            forms.extend(addrs.map(|a| a.to_string()));
        }
    }
    forms
}
