//! One command on a host's master: opening its session (with the retries
//! that are safe before it starts), streaming its output, learning its
//! process group, and stopping that group on the host when the command runs
//! past its limit or its future is dropped (Ctrl-C).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::Session;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::pool::{Host, MasterRef, SessionSlot};
use super::SshTransport;
use crate::config::{format_duration, Instance};
use crate::primitives::{ActionError, ActionResult, ErrorKind};

/// SIGTERM first, so a deploy script's traps can clean up; SIGKILL for the
/// group when it is still there after this many tenths of a second.
pub(super) const STOP_GRACE_TENTHS: u32 = 30;

/// Bound on stopping a timed-out command, including waiting for its channel
/// to close, so a dead host cannot hang the run at its end.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The first line every command writes to stderr: its process group id.
/// The record separator makes a clash with real output implausible.
const PGID_MARKER: &[u8] = b"\x1erollscript-pgid=";

/// How often a session refused while none of ours is open is retried.
const REFUSED_ALONE_RETRIES: u32 = 20;

/// How much stderr is searched for the marker before giving up (login-shell
/// start-up files may print before it).
const MARKER_SEARCH_BYTES: usize = 64 * 1024;

impl SshTransport {
    /// Opens a session running `remote` under the host's session cap. Each
    /// retry here is safe because the command has not started: the master
    /// had exited (reconnect once), or the server refused the session (wait
    /// for one of ours to end; refused while none is open, give up soon).
    pub(super) async fn spawn(
        &self,
        inst: &Instance,
        host: &Arc<Host>,
        remote: &str,
    ) -> ActionResult<(SessionSlot, MasterRef, openssh::Child<MasterRef>)> {
        let mut reconnected = false;
        let mut refused_alone = 0;
        loop {
            let mut slot = host.open_session().await;
            let master = self.master(inst, host).await?;
            let spawned = Session::to_raw_command(master.clone(), remote)
                .stdin(openssh::Stdio::null())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped())
                .spawn()
                .await;
            match spawned {
                Ok(child) => {
                    slot.established();
                    return Ok((slot, master, child));
                }
                Err(openssh::Error::Disconnected) if !reconnected => {
                    debug!(instance = %inst.name, "ssh: master connection gone; reconnecting");
                    self.forget(host, &master).await;
                    reconnected = true;
                }
                Err(openssh::Error::InvalidCommand) => {
                    return Err(ActionError::new(
                        ErrorKind::InvalidArgument,
                        "the command contains a NUL byte, which no shell can receive",
                    )
                    .host(inst.name.clone()))
                }
                Err(openssh::Error::SshMux(e)) if e.to_string().contains("refused by peer") => {
                    if host.refused() > 0 {
                        debug!(instance = %inst.name, "ssh: session refused (server MaxSessions); waiting for one to end");
                    } else if refused_alone < REFUSED_ALONE_RETRIES {
                        // A session of ours that just ended may not be freed
                        // on the server yet.
                        refused_alone += 1;
                        drop(slot);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        return Err(ActionError::new(
                            ErrorKind::Unreachable,
                            format!(
                                "{} refuses new ssh sessions even with none open (sshd MaxSessions 0, or a ForceCommand/restriction on the key?)",
                                self.destination(inst)
                            ),
                        )
                        .host(inst.name.clone()));
                    }
                }
                Err(e) => {
                    self.forget(host, &master).await;
                    return Err(ActionError::new(
                        ErrorKind::Unreachable,
                        format!(
                            "cannot start a command over the ssh connection to {}: {}",
                            self.destination(inst),
                            error_chain(&e)
                        ),
                    )
                    .host(inst.name.clone()));
                }
            }
        }
    }
}

/// Stops a command abandoned mid-run (its future dropped by Ctrl-C) on the
/// host, in the background; `close` waits for it.
pub(super) struct StopOnDrop {
    pub(super) armed: bool,
    pub(super) master: MasterRef,
    pub(super) host: Arc<Host>,
    pub(super) pgid: watch::Receiver<i32>,
    pub(super) name: String,
    pub(super) stops: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (master, host, name) = (self.master.clone(), self.host.clone(), self.name.clone());
        let mut pgid = self.pgid.clone();
        let stop = rt.spawn(async move {
            let Some(pg) = group_of(&mut pgid).await else {
                warn!(instance = %name, "could not stop the interrupted command on {name}: its process group id never arrived; it may still be running");
                return;
            };
            match stop_remote(master, host, pg).await {
                Ok(()) => info!(instance = %name, "stopped the interrupted command on {name} (process group {pg})"),
                Err(why) => warn!(instance = %name, "could not stop the interrupted command on {name} (process group {pg}): {why}; it may still be running"),
            }
        });
        self.stops.lock().unwrap().push(stop);
    }
}

/// The command's process group id, once its stderr reported it; None when
/// stderr ended without it or it does not come within [`STOP_TIMEOUT`].
pub(super) async fn group_of(pgid: &mut watch::Receiver<i32>) -> Option<i32> {
    match tokio::time::timeout(STOP_TIMEOUT, pgid.wait_for(|pg| *pg > 0)).await {
        Ok(Ok(pg)) => Some(*pg),
        _ => None,
    }
}

/// Signals process group `pg` on the host over `master`: SIGTERM, then
/// SIGKILL if it outlives the grace period.
pub(super) async fn stop_remote(master: MasterRef, host: Arc<Host>, pg: i32) -> Result<(), String> {
    let _slot = host.stop_slot.acquire().await.expect("never closed");
    let mut kill = Session::to_raw_command(master, stop_line(pg));
    kill.stdin(openssh::Stdio::null())
        .stdout(openssh::Stdio::null())
        .stderr(openssh::Stdio::null());
    let run = kill.status();
    match tokio::time::timeout(STOP_TIMEOUT, run).await {
        Err(_) => Err(format!(
            "no answer within {}",
            format_duration(STOP_TIMEOUT)
        )),
        Ok(Err(e)) => Err(error_chain(&e)),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the kill command exited with {status}")),
    }
}

/// The line the remote login shell runs: the process group id first (the
/// shell is the session leader sshd created, so its pid is the group), then
/// the operator's line, unchanged.
pub(super) fn remote_line(line: &str) -> String {
    format!("printf '\\036rollscript-pgid=%s\\n' \"$$\" >&2; {line}")
}

/// Stops process group `pg`: TERM, wait up to the grace period, then KILL.
fn stop_line(pg: i32) -> String {
    format!(
        "kill -s TERM -- -{pg} 2>/dev/null || exit 0; i=0; \
         while [ $i -lt {STOP_GRACE_TENTHS} ]; do kill -s 0 -- -{pg} 2>/dev/null || exit 0; sleep 0.1; i=$((i+1)); done; \
         kill -s KILL -- -{pg} 2>/dev/null; exit 0"
    )
}

/// Reads stderr up to the pgid marker line, records the id, and returns what
/// came before it (start-up noise, kept as output) and the rest of the stream.
pub(super) async fn read_pgid<R: AsyncRead + Unpin>(
    r: R,
    pgid: &watch::Sender<i32>,
) -> (Vec<u8>, BufReader<R>) {
    let mut reader = BufReader::new(r);
    let mut before = Vec::new();
    let mut line = Vec::new();
    while before.len() < MARKER_SEARCH_BYTES {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(rest) = line.strip_prefix(PGID_MARKER) {
            let id = String::from_utf8_lossy(rest)
                .trim()
                .parse::<i32>()
                .unwrap_or(0);
            pgid.send_replace(id);
            break;
        }
        before.extend_from_slice(&line);
    }
    (before, reader)
}

/// An error and its sources, `a: b: c`, since openssh's own Display is terse.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn remote_line_reports_the_group_then_runs_the_line_unchanged() {
        assert_eq!(
            remote_line("cd /app && ./deploy.sh 'v 1'"),
            "printf '\\036rollscript-pgid=%s\\n' \"$$\" >&2; cd /app && ./deploy.sh 'v 1'"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(remote_line("echo out"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert!(out.stderr.starts_with(PGID_MARKER));
    }

    #[tokio::test]
    async fn pgid_marker_is_taken_out_of_stderr() {
        let (pgid, seen) = watch::channel(0);
        let input: &[u8] = b"rc noise\n\x1erollscript-pgid=4242\nreal error\n";
        let (before, mut rest) = read_pgid(input, &pgid).await;
        let mut tail = String::new();
        rest.read_to_string(&mut tail).await.unwrap();
        assert_eq!(*seen.borrow(), 4242);
        assert_eq!(String::from_utf8(before).unwrap(), "rc noise\n");
        assert_eq!(tail, "real error\n");
    }
}
