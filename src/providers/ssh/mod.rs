//! `ssh(inst, cmd)`: OpenSSH with one multiplexed master connection per host.
//!
//! This folder owns the whole life of those connections. This file is the
//! [`Transport`] a run calls: run a command, stop it on the host when it
//! runs past its limit, close everything at the end. Beside it:
//!
//! - `pool.rs`: one master per host, opened on the host's first command and
//!   shared by every later one (concurrent ones wait for the same connect),
//!   and at most [`SESSIONS_PER_HOST`] sessions at a time per host so sshd's
//!   default `MaxSessions` is never hit (fewer when a server turns out to
//!   allow fewer); `ssh.max_parallel` bounds how many hosts are being
//!   connected to at once.
//! - `connect.rs`: the master is OpenSSH's own `ssh -M -f -N`, so
//!   `~/.ssh/config` (or `ssh.config`), agents, `ProxyJump` and every other
//!   client option behave exactly as for the operator's own `ssh`; a failed
//!   connect is classified from ssh's own messages into an error kind whose
//!   text says what to do.
//! - `exec.rs`: commands are sessions on that master over the native mux
//!   protocol (no `ssh` process per command); each reports its process group
//!   first (sshd makes every session a session leader), and a command past
//!   its limit — or abandoned by Ctrl-C — has that group signalled over the
//!   same master.
//! - `conns.rs`: the established connections to a port, counted on the
//!   host with `ss` over its master (on-host drain detection).
//!
//! Remote lines run in the login shell, as with `ssh host 'line'`; the shell
//! is assumed to be POSIX-like (sh, bash, dash, zsh, ksh).

mod connect;
pub mod conns;
mod exec;
mod pool;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use super::output::drain;
use crate::config::{format_duration, Instance, Inventory};
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind, ExecOutput, Transport};
use exec::{
    error_chain, group_of, read_pgid, remote_line, stop_remote, StopOnDrop, STOP_GRACE_TENTHS,
    STOP_TIMEOUT,
};
use pool::{control_root, Host};

/// Sessions one host runs at once. sshd's default `MaxSessions` is 10 per
/// connection; commands use nine so the tenth is always free for the `kill`
/// that stops a timed-out command.
pub const SESSIONS_PER_HOST: usize = 9;

pub struct SshTransport {
    inv: Arc<Inventory>,
    /// `ssh`, found on PATH when a host is first connected to.
    program: PathBuf,
    /// Where control directories go: short, because a unix socket path must
    /// fit in 108 bytes.
    control_root: PathBuf,
    /// std Mutex, not tokio's: nothing is awaited while it is held.
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// `ssh.max_parallel`: hosts being connected to at once.
    connects: Semaphore,
    /// Stops started for commands abandoned mid-run (Ctrl-C); `close` waits
    /// for them before it closes the masters they use.
    stops: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SshTransport {
    pub fn new(inv: Arc<Inventory>) -> Self {
        let connects = Semaphore::new(inv.ssh.max_parallel.max(1));
        Self {
            inv,
            program: PathBuf::from("ssh"),
            control_root: control_root(),
            hosts: Mutex::new(HashMap::new()),
            connects,
            stops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Uses `program` instead of `ssh` from PATH (a wrapper, a specific build).
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    fn destination(&self, inst: &Instance) -> String {
        match &self.inv.ssh.user {
            Some(u) => format!("{u}@{}", inst.host),
            None => inst.host.clone(),
        }
    }

    fn host(&self, inst: &Instance) -> Arc<Host> {
        self.hosts
            .lock()
            .unwrap()
            .entry(inst.name.clone())
            .or_insert_with(|| Arc::new(Host::new()))
            .clone()
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn describe(&self, inst: &Instance, cmd: &Cmd) -> String {
        format!("ssh {}: {}", self.destination(inst), cmd.to_shell())
    }

    async fn warm(&self, inst: &Instance) {
        let host = self.host(inst);
        self.warm_master(inst, &host).await;
    }

    async fn exec(
        &self,
        inst: &Instance,
        cmd: &Cmd,
        timeout: Duration,
    ) -> ActionResult<ExecOutput> {
        let host = self.host(inst);
        let line = cmd.to_shell();
        let (_slot, master, mut child) = self.spawn(inst, &host, &remote_line(&line)).await?;
        // The command's own time: queueing for a session and connecting are not part of it.
        let started = Instant::now();

        let stdout = child.stdout().take().expect("stdout is piped");
        let stderr = child.stderr().take().expect("stderr is piped");
        // stderr is read by a task of its own, so the process group id still
        // arrives when this future is dropped (Ctrl-C) before reading it.
        let (pgid_tx, mut pgid) = watch::channel(0);
        let stderr = tokio::spawn({
            let name = inst.name.clone();
            async move {
                let (before, rest) = read_pgid(stderr, &pgid_tx).await;
                drain(Cursor::new(before).chain(rest), &name, true).await
            }
        });
        let mut guard = StopOnDrop {
            armed: true,
            master: master.clone(),
            host: host.clone(),
            pgid: pgid.clone(),
            name: inst.name.clone(),
            stops: self.stops.clone(),
        };
        let run = {
            let name = inst.name.clone();
            async move {
                let (stdout, stderr) = tokio::join!(drain(stdout, &name, false), stderr);
                (stdout, stderr.unwrap_or_default(), child.wait().await)
            }
        };
        tokio::pin!(run);
        let finished = tokio::select! {
            r = &mut run => Some(r),
            _ = tokio::time::sleep(timeout) => None,
        };

        if let Some((stdout, mut stderr, waited)) = finished {
            guard.armed = false;
            let status = match waited {
                Ok(status) => status.code().unwrap_or(255),
                // The native mux reports exit status 127 as this error.
                Err(openssh::Error::Remote(e)) if e.kind() == std::io::ErrorKind::NotFound => 127,
                // No exit status: killed by a signal, or the connection died.
                Err(openssh::Error::RemoteProcessTerminated | openssh::Error::Disconnected)
                    if master.check().await.is_ok() =>
                {
                    stderr.push_str(
                        "rollscript: the remote command was killed by a signal (no exit status)\n",
                    );
                    255
                }
                Err(e) => {
                    self.forget(&host, &master).await;
                    return Err(ActionError::new(
                        ErrorKind::Unreachable,
                        format!(
                            "lost the ssh connection to {} while the command ran ({}); it may still be running there",
                            self.destination(inst),
                            error_chain(&e)
                        ),
                    )
                    .host(inst.name.clone())
                    .command(line)
                    .stderr_tail(&stderr));
                }
            };
            return Ok(ExecOutput {
                status,
                stdout,
                stderr,
                duration: started.elapsed(),
            });
        }

        // Past its limit: stop it on the host, then collect what it printed.
        let pg = group_of(&mut pgid).await;
        let stopped = match pg {
            Some(pg) => stop_remote(master.clone(), host.clone(), pg).await,
            None => Err("its process group id never arrived".to_string()),
        };
        let pg = pg.unwrap_or_default();
        guard.armed = false;
        let partial = tokio::time::timeout(STOP_TIMEOUT, &mut run).await.ok();
        let message = match &stopped {
            Ok(()) => format!(
                "command timed out after {} and was stopped on the host (process group {pg} sent SIGTERM, then SIGKILL after {})",
                format_duration(timeout),
                format_duration(Duration::from_millis(u64::from(STOP_GRACE_TENTHS) * 100))
            ),
            Err(why) => format!(
                "command timed out after {}; stopping it on the host failed ({why}), so it may still be running there",
                format_duration(timeout)
            ),
        };
        let mut err = ActionError::new(ErrorKind::Timeout, message)
            .host(inst.name.clone())
            .command(line);
        if let Some((_, stderr, _)) = partial {
            err = err.stderr_tail(&stderr);
        }
        Err(err)
    }

    async fn close(&self) {
        let stops: Vec<_> = std::mem::take(&mut *self.stops.lock().unwrap());
        for stop in stops {
            let _ = tokio::time::timeout(STOP_TIMEOUT, stop).await;
        }
        let hosts: Vec<(String, Arc<Host>)> = self.hosts.lock().unwrap().drain().collect();
        let closes = hosts
            .into_iter()
            .map(|(name, host)| async move { host.close(&name).await });
        futures::future::join_all(closes).await;
    }
}
