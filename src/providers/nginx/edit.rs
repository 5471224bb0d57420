//! One edit of the upstream file: read it (reconciled with the inventory),
//! change it, write it atomically, test, reload, wait until no old worker
//! accepts; put the file back as it was when anything fails.

use std::collections::BTreeSet;
use std::time::Duration;

use tracing::warn;

use super::upstream::Upstream;
use super::workers::{find_master, workers_of, Until};
use super::{join, NginxLb, RELOAD_TIMEOUT};
use crate::config::format_duration;
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind, ExecOutput};

impl NginxLb {
    /// The upstream as it is now: the file's state for known servers, the
    /// inventory's defaults for new ones. None when the file does not exist.
    pub(super) async fn current(&self) -> ActionResult<(Option<String>, Upstream)> {
        let text = self.host.read(&self.file).await?;
        let parsed = match &text {
            Some(t) => Upstream::parse(t, &self.upstream).map_err(|m| {
                ActionError::new(
                    ErrorKind::Lb,
                    format!(
                        "{} (lb.upstream_file): {m}; rollscript owns this file — keep only the upstream block in it",
                        self.file.display()
                    ),
                )
            })?,
            None => None,
        };
        let up = Upstream::reconcile(parsed, &self.upstream, &self.inv, |i| self.addr(i));
        Ok((text, up))
    }

    /// Reads the file (for `state`): None when it does not exist yet.
    pub(super) async fn read_state(&self) -> ActionResult<Option<Upstream>> {
        match self.current().await? {
            (None, _) => Ok(None),
            (Some(_), up) => Ok(Some(up)),
        }
    }

    /// Applies `change` to the upstream, writes it, tests, reloads, and waits
    /// until no old worker accepts connections any more. Returns the workers
    /// that were serving before (they may still be finishing requests).
    /// Whatever fails, the file is put back as it was.
    pub(super) async fn apply(
        &self,
        change: impl FnOnce(&mut Upstream) -> Result<(), String>,
    ) -> ActionResult<BTreeSet<u32>> {
        let _edit = self.edit.lock().await;
        let (before, mut up) = self.current().await?;
        change(&mut up).map_err(|m| {
            ActionError::new(ErrorKind::Lb, format!("{}: {m}", self.file.display()))
        })?;
        let text = up.render(&self.inv.path);
        let procs = self.host.processes().await?;
        let master = find_master(&procs, &self.reload_command, &self.test_command)
            .map_err(|m| ActionError::new(ErrorKind::Lb, m))?;
        let old: BTreeSet<u32> = workers_of(&procs, master).map(|p| p.pid).collect();
        let accepting: BTreeSet<u32> = workers_of(&procs, master)
            .filter(|p| !p.shutting_down())
            .map(|p| p.pid)
            .collect();

        self.host.write(&self.file, &text).await?;
        for (what, command) in [
            ("test", &self.test_command),
            ("reload", &self.reload_command),
        ] {
            let out = self
                .host
                .exec(&Cmd::Shell(command.clone()), self.timeout())
                .await;
            let failed = match out {
                Ok(out) if out.status == 0 => continue,
                Ok(out) => self.rejected(what, command, &out),
                Err(e) => e,
            };
            return Err(self.restore(before.as_deref(), failed, false).await);
        }
        match self
            .host
            .wait_for(
                &accepting,
                Until::NotAccepting,
                RELOAD_TIMEOUT,
                self.inv.lb.poll_interval,
            )
            .await?
        {
            Ok(()) => Ok(old),
            Err(still) => {
                let e = ActionError::new(
                    ErrorKind::Lb,
                    format!(
                        "{} ran `{}` but its master (pid {master}) kept the old workers (pids {}) for {}: it most likely refused the new configuration (errors only the master finds, like a failed bind, appear only in nginx's error log)",
                        self.who(),
                        self.reload_command,
                        join(&still),
                        format_duration(RELOAD_TIMEOUT)
                    ),
                )
                .command(self.reload_command.clone());
                Err(self.restore(before.as_deref(), e, true).await)
            }
        }
    }

    pub(super) fn timeout(&self) -> Duration {
        self.inv.ssh.command_timeout
    }

    /// nginx's refusal, as the operator needs it: its `[emerg]` line first.
    pub(super) fn rejected(&self, what: &str, command: &str, out: &ExecOutput) -> ActionError {
        let text = if out.stderr.trim().is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        let why = text
            .lines()
            .find(|l| l.contains("[emerg]"))
            .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output")
            .trim();
        ActionError::new(
            ErrorKind::Lb,
            format!(
                "{} {what} failed after rewriting {}: {why}",
                self.who(),
                self.file.display()
            ),
        )
        .command(command)
        .status(out.status)
        .stderr_tail(text)
    }

    /// Puts the file back as it was (removes it if it did not exist) and
    /// says so in `e`; with `reload`, reloads too, so nginx runs what the
    /// file says whether or not the master took the rejected version.
    pub(super) async fn restore(
        &self,
        before: Option<&str>,
        mut e: ActionError,
        reload: bool,
    ) -> ActionError {
        let restored = match before {
            Some(text) => self.host.write(&self.file, text).await,
            None => self.host.remove(&self.file).await,
        };
        match restored {
            Ok(()) => {
                e.message
                    .push_str(&format!("; {} restored", self.file.display()));
                if reload {
                    let cmd = Cmd::Shell(self.reload_command.clone());
                    if let Ok(out) = self.host.exec(&cmd, self.timeout()).await {
                        if out.status != 0 {
                            warn!(
                                "reloading nginx with the restored upstream failed: {}",
                                out.stderr.trim()
                            );
                        }
                    }
                }
            }
            Err(r) => e.message.push_str(&format!(
                "; restoring {} failed too ({}): check it before the next reload",
                self.file.display(),
                r.message
            )),
        }
        e
    }
}
