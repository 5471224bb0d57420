//! Commands on an instance (ssh) or on this machine (local).

use std::time::Duration;

use tracing::info;

use super::{Effects, ExecOptions, TYPICAL_COMMAND};
use crate::config::Instance;
use crate::plan::Estimate;
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind, ExecOutput, Transport};

impl Effects {
    // ---- commands -----------------------------------------------------------

    pub async fn ssh(
        &self,
        inst: &Instance,
        cmd: &Cmd,
        opts: ExecOptions,
    ) -> ActionResult<ExecOutput> {
        let transport = self.providers.ssh.clone();
        let timeout = opts.timeout.unwrap_or(self.inventory.ssh.command_timeout);
        self.exec(&*transport, inst, cmd, opts, timeout).await
    }

    /// Opens ssh connections to `insts` in the background (at most
    /// `ssh.max_parallel` connects at once), while the current step works,
    /// so their first command does not wait for the handshake. Not a step:
    /// nothing in a plan, nothing journalled; a host that cannot be reached
    /// is reported at its own turn, never here. Parked instances are skipped.
    pub fn connect_ahead(&self, rt: &tokio::runtime::Handle, insts: &[Instance]) {
        if self.is_dry_run() || self.cancel_token().is_cancelled() {
            return;
        }
        let mut warming = self.warming.lock().unwrap();
        warming.retain(|w| !w.is_finished());
        for inst in insts {
            if self.hidden(&inst.name) {
                continue;
            }
            let (ssh, inst) = (self.providers.ssh.clone(), inst.clone());
            warming.push(rt.spawn(async move { ssh.warm(&inst).await }));
        }
    }

    pub async fn local(&self, cmd: &Cmd, opts: ExecOptions) -> ActionResult<ExecOutput> {
        let transport = self.providers.local.clone();
        let timeout = opts.timeout.unwrap_or(self.inventory.ssh.command_timeout);
        self.exec(&*transport, &Instance::local(), cmd, opts, timeout)
            .await
    }

    pub(super) async fn exec(
        &self,
        transport: &dyn Transport,
        inst: &Instance,
        cmd: &Cmd,
        opts: ExecOptions,
        timeout: Duration,
    ) -> ActionResult<ExecOutput> {
        let text = transport.describe(inst, cmd);
        self.plan_safe_point();
        if self.record(
            text.clone(),
            Estimate::new(TYPICAL_COMMAND.min(timeout), timeout),
        ) {
            return Ok(ExecOutput::default());
        }
        info!(instance = %inst.name, step = "exec", "{}", crate::journal::redact(&text));
        let is_local = std::ptr::eq(
            transport as *const dyn Transport as *const u8,
            &*self.providers.local as *const dyn Transport as *const u8,
        );
        let (op, target) = if is_local {
            ("local", None)
        } else {
            ("ssh", Some(inst))
        };
        self.safe_point(op, target).await?;
        let checked = async {
            let out = transport.exec(inst, cmd, timeout).await?;
            if opts.check && out.status != 0 {
                return Err(ActionError::new(ErrorKind::CommandFailed, "command failed")
                    .host(inst.name.clone())
                    .command(cmd.to_shell())
                    .status(out.status)
                    .stderr_tail(&out.stderr));
            }
            Ok(out)
        };
        let out = self.act(op, target, &text, checked).await?;
        let is_rollback = matches!((cmd, &self.inventory.app.rollback),
            (Cmd::Shell(c), Some(r)) if c == r);
        if let (Some(inst), true) = (target, is_rollback) {
            self.ledger.rollback_ran(&inst.name);
        }
        Ok(out)
    }
}
