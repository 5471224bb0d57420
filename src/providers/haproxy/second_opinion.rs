//! A second opinion on a finished HAProxy drain: HAProxy counts only the
//! sessions it carries itself, so a server it reports idle (`scur` 0) can
//! still have clients on its host that bypass this HAProxy (a second LB, a
//! cron job calling the app directly). With `lb.drain_detect = "auto"` the
//! host's established connections to the server's port are counted once,
//! over its ssh master, and a disagreement is logged. Nothing else changes:
//! the drain is over as far as this LB can tell — so the count runs beside
//! the deploy (a task of its own, started as the drain ends), never in front
//! of it: it is a log line, not a step the run waits for.

use tracing::{debug, info};

use super::HaproxyLb;
use crate::config::{DrainDetect, Instance};
use crate::providers::ssh::conns::{self, HostConns};
use crate::providers::Transport;

impl HaproxyLb {
    pub(super) fn second_opinion(&self, inst: &Instance, server: String) {
        let (DrainDetect::Auto, Some(ssh)) = (self.inv.lb.drain_detect, &self.ssh) else {
            return;
        };
        let port = self.inv.traffic_port(inst);
        let (ssh, inst) = (ssh.clone(), inst.clone());
        tokio::spawn(async move { opinion(ssh.as_ref(), &inst, port, &server).await });
    }
}

async fn opinion(ssh: &dyn Transport, inst: &Instance, port: u16, server: &str) {
    match conns::established(ssh, inst, port).await {
        Ok(HostConns::Established(n)) if n > 0 => info!(
            instance = %inst.name,
            "HAProxy reports no session left on {server} (scur 0), but {} has {n} established connection(s) to port {port}: clients that do not come through this HAProxy (or one of its health checks)? The drain is over for HAProxy; rollscript goes on",
            inst.name
        ),
        Ok(found) => debug!(instance = %inst.name, "second opinion on {server}: {found:?}"),
        Err(e) => debug!(instance = %inst.name, "no second opinion on {server}: {}", e.message),
    }
}
