//! `ssh(inst, cmd)`: OpenSSH with one multiplexed master per host.
//!
//! Baseline implementation; error classification, remote kill on timeout and
//! per-host session limits are completed with the transports issue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openssh::{KnownHosts, Session, SessionBuilder};
use tokio::sync::{Mutex, OnceCell};

use super::output::drain;
use crate::config::{HostKeyPolicy, Instance, Inventory};
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind, ExecOutput, Transport};

pub struct SshTransport {
    inv: Arc<Inventory>,
    sessions: Mutex<HashMap<String, Arc<OnceCell<Arc<Session>>>>>,
}

impl SshTransport {
    pub fn new(inv: Arc<Inventory>) -> Self {
        Self {
            inv,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn destination(&self, inst: &Instance) -> String {
        match &self.inv.ssh.user {
            Some(u) => format!("{u}@{}", inst.host),
            None => inst.host.clone(),
        }
    }

    async fn session(&self, inst: &Instance) -> ActionResult<Arc<Session>> {
        let cell = self
            .sessions
            .lock()
            .await
            .entry(inst.name.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let s = &self.inv.ssh;
            let mut b = SessionBuilder::default();
            b.known_hosts_check(match s.host_key_checking {
                HostKeyPolicy::Strict => KnownHosts::Strict,
                HostKeyPolicy::AcceptNew => KnownHosts::Add,
            })
            .connect_timeout(s.connect_timeout);
            if let Some(p) = inst.ssh_port.or(s.port) {
                b.port(p);
            }
            if let Some(k) = &s.identity {
                b.keyfile(k);
            }
            if let Some(f) = &s.known_hosts {
                b.user_known_hosts_file(f);
            }
            if let Some(c) = &s.config {
                b.config_file(c);
            }
            b.connect_mux(self.destination(inst))
                .await
                .map(Arc::new)
                .map_err(|e| {
                    ActionError::new(ErrorKind::Unreachable, e.to_string()).host(inst.name.clone())
                })
        })
        .await
        .cloned()
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn describe(&self, inst: &Instance, cmd: &Cmd) -> String {
        format!("ssh {}: {}", self.destination(inst), cmd.to_shell())
    }

    async fn exec(
        &self,
        inst: &Instance,
        cmd: &Cmd,
        timeout: Duration,
    ) -> ActionResult<ExecOutput> {
        let session = self.session(inst).await?;
        let line = cmd.to_shell();
        let started = Instant::now();
        let mut child = session
            .raw_command(&line)
            .stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped())
            .spawn()
            .await
            .map_err(|e| {
                ActionError::new(ErrorKind::Unreachable, e.to_string()).host(inst.name.clone())
            })?;
        let out = drain(child.stdout().take().expect("piped"), &inst.name, false);
        let err = drain(child.stderr().take().expect("piped"), &inst.name, true);
        let run = async {
            let (stdout, stderr) = tokio::join!(out, err);
            (stdout, stderr, child.wait().await)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((stdout, stderr, status)) => {
                let status = status.map_err(|e| {
                    ActionError::new(ErrorKind::Unreachable, e.to_string()).host(inst.name.clone())
                })?;
                Ok(ExecOutput {
                    status: status.code().unwrap_or(255),
                    stdout,
                    stderr,
                    duration: started.elapsed(),
                })
            }
            Err(_) => Err(ActionError::new(ErrorKind::Timeout, "command timed out")
                .host(inst.name.clone())
                .command(line)),
        }
    }

    async fn close(&self) {
        let sessions: Vec<_> = self.sessions.lock().await.drain().collect();
        for (_, cell) in sessions {
            if let Some(s) = Arc::try_unwrap(cell).ok().and_then(|c| c.into_inner()) {
                if let Ok(s) = Arc::try_unwrap(s) {
                    let _ = s.close().await;
                }
            }
        }
    }
}
