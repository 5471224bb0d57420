//! `local(cmd)`: `sh -c` on the machine running rollscript.

use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Command;

use super::output::drain;
use crate::config::{format_duration, Instance};
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind, ExecOutput, Transport};

pub struct LocalTransport;

#[async_trait]
impl Transport for LocalTransport {
    fn describe(&self, _inst: &Instance, cmd: &Cmd) -> String {
        format!("local: {}", cmd.to_shell())
    }

    async fn exec(
        &self,
        _inst: &Instance,
        cmd: &Cmd,
        timeout: Duration,
    ) -> ActionResult<ExecOutput> {
        let line = cmd.to_shell();
        let started = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout can stop everything it started.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                ActionError::new(ErrorKind::CommandFailed, format!("cannot start sh: {e}"))
                    .command(line.clone())
            })?;
        let pid = child.id();
        let out = drain(child.stdout.take().expect("piped"), "local", false);
        let err = drain(child.stderr.take().expect("piped"), "local", true);
        let waited = async {
            let (stdout, stderr, status) = tokio::join!(out, err, child.wait());
            (stdout, stderr, status)
        };
        match tokio::time::timeout(timeout, waited).await {
            Ok((stdout, stderr, status)) => {
                let status = status.map_err(|e| {
                    ActionError::new(ErrorKind::CommandFailed, format!("waiting for sh: {e}"))
                        .command(line.clone())
                })?;
                Ok(ExecOutput {
                    status: status.code().unwrap_or(128 + signal_of(&status)),
                    stdout,
                    stderr,
                    duration: started.elapsed(),
                })
            }
            Err(_) => {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on the process group we created; no memory involved.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                Err(ActionError::new(
                    ErrorKind::Timeout,
                    format!(
                        "command timed out after {} and was stopped",
                        format_duration(timeout)
                    ),
                )
                .host("local")
                .command(line))
            }
        }
    }
}

fn signal_of(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().unwrap_or(0)
}
