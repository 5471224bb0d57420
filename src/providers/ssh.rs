//! `ssh(inst, cmd)`: OpenSSH with one multiplexed master connection per host.
//!
//! This module owns the whole life of those connections:
//!
//! - **The master** is OpenSSH's own `ssh -M -f -N`, so `~/.ssh/config` (or
//!   `ssh.config`), agents, `ProxyJump` and every other client option behave
//!   exactly as for the operator's own `ssh`. It is opened on a host's first
//!   command, shared by every later one (concurrent ones wait for the same
//!   connect), and closed in [`Transport::close`].
//! - **Commands** are sessions on that master over the native mux protocol (no
//!   `ssh` process per command), at most [`SESSIONS_PER_HOST`] at a time per
//!   host so sshd's default `MaxSessions` is never hit (fewer when a server
//!   turns out to allow fewer); `ssh.max_parallel` bounds how many hosts are
//!   being connected to at once.
//! - **Timeouts** stop the command on the host: each command reports its
//!   process group first (sshd makes every session a session leader), and a
//!   command past its limit — or abandoned by Ctrl-C — has that group
//!   signalled over the same master.
//! - **Connect failures** are classified from ssh's own messages into error
//!   kinds whose text says what to do.
//!
//! Remote lines run in the login shell, as with `ssh host 'line'`; the shell
//! is assumed to be POSIX-like (sh, bash, dash, zsh, ksh).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Cursor;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openssh::Session;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::output::drain;
use crate::config::{format_duration, HostKeyPolicy, Instance, Inventory, SshSettings};
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind, ExecOutput, Transport};

/// Sessions one host runs at once. sshd's default `MaxSessions` is 10 per
/// connection; commands use nine so the tenth is always free for the `kill`
/// that stops a timed-out command.
pub const SESSIONS_PER_HOST: usize = 9;

/// How long a master with no open session stays up (`ControlPersist`). A
/// later command reconnects transparently; the bound keeps a master orphaned
/// by a `kill -9` of rollscript from holding a connection for good.
const MASTER_IDLE: Duration = Duration::from_secs(600);

/// Keepalives on the master, so a host that vanishes mid-command is noticed
/// within about a minute rather than at `command_timeout`.
const SERVER_ALIVE_INTERVAL: u64 = 15;
const SERVER_ALIVE_COUNT_MAX: u64 = 4;

/// SIGTERM first, so a deploy script's traps can clean up; SIGKILL for the
/// group when it is still there after this many tenths of a second.
const STOP_GRACE_TENTHS: u32 = 30;

/// Bound on stopping a timed-out command, including waiting for its channel
/// to close, so a dead host cannot hang the run at its end.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The first line every command writes to stderr: its process group id.
/// The record separator makes a clash with real output implausible.
const PGID_MARKER: &[u8] = b"\x1erollscript-pgid=";

/// How often a session refused while none of ours is open is retried.
const REFUSED_ALONE_RETRIES: u32 = 20;

/// How much stderr is searched for the marker before giving up (login-shell
/// start-up files may print before it).
const MARKER_SEARCH_BYTES: usize = 64 * 1024;

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

/// One host's connection state.
struct Host {
    conn: tokio::sync::Mutex<MasterSlot>,
    /// Connection attempts finished; lets concurrent callers share the
    /// outcome of one attempt instead of each trying (and timing out) in turn.
    attempts: AtomicU64,
    /// std Mutex: nothing is awaited while it is held.
    sessions: Mutex<Sessions>,
    /// Signalled whenever one of this host's sessions ends.
    freed: Notify,
    /// The one session kept back for stopping timed-out commands.
    stop_slot: Semaphore,
}

/// Sessions open on a host, and how many may be.
struct Sessions {
    /// Slots held, including sessions still being opened.
    open: usize,
    /// Sessions the server has accepted and not yet closed.
    established: usize,
    /// [`SESSIONS_PER_HOST`], lowered when the server's `MaxSessions` turns
    /// out to be smaller (it refused a session while others were open).
    cap: usize,
}

#[derive(Default)]
struct MasterSlot {
    master: Option<MasterRef>,
    failure: Option<ActionError>,
}

impl Host {
    fn new() -> Self {
        Self {
            conn: tokio::sync::Mutex::new(MasterSlot::default()),
            attempts: AtomicU64::new(0),
            sessions: Mutex::new(Sessions {
                open: 0,
                established: 0,
                cap: SESSIONS_PER_HOST,
            }),
            freed: Notify::new(),
            stop_slot: Semaphore::new(1),
        }
    }

    /// Waits for a session slot under the host's cap.
    async fn open_session(self: &Arc<Self>) -> SessionSlot {
        loop {
            // Registered before the check, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.sessions.lock().unwrap();
                if s.open < s.cap {
                    s.open += 1;
                    return SessionSlot {
                        host: self.clone(),
                        established: false,
                    };
                }
            }
            freed.await;
        }
    }

    /// The server refused a session: learn its limit from the sessions it
    /// has open for us, less one so a stop still fits. Returns that count.
    fn refused(&self) -> usize {
        let mut s = self.sessions.lock().unwrap();
        let established = s.established;
        if established > 0 {
            s.cap = s.cap.min(established.saturating_sub(1).max(1));
        }
        established
    }
}

/// One session slot on a host, given back on drop.
struct SessionSlot {
    host: Arc<Host>,
    established: bool,
}

impl SessionSlot {
    fn established(&mut self) {
        self.host.sessions.lock().unwrap().established += 1;
        self.established = true;
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut s = self.host.sessions.lock().unwrap();
        s.open -= 1;
        if self.established {
            s.established -= 1;
        }
        drop(s);
        self.host.freed.notify_waiters();
    }
}

/// A running `ssh -M` and the directory holding its control socket and log.
struct Master {
    /// Some until `close`; taken only from a uniquely owned `Master`.
    session: Option<Session>,
    dir: PathBuf,
    program: PathBuf,
}

impl Master {
    fn ctl(&self) -> PathBuf {
        self.dir.join("m")
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.session.take().is_some() {
            // Not closed by `close` (a panic, an early return): ask the master
            // to exit now rather than idle for `MASTER_IDLE`. Blocking, but
            // only on this abnormal path.
            let _ = std::process::Command::new(&self.program)
                .arg("-S")
                .arg(self.ctl())
                .args(["-O", "exit", "rollscript"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shared master, usable as openssh's session handle.
#[derive(Clone)]
struct MasterRef(Arc<Master>);

impl Deref for MasterRef {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.0
            .session
            .as_ref()
            .expect("a shared master is open until close")
    }
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

    /// The host's master, connecting if there is none. Callers that arrive
    /// while a connect is under way share its outcome, success or failure.
    async fn master(&self, inst: &Instance, host: &Host) -> ActionResult<MasterRef> {
        let asked = host.attempts.load(Ordering::SeqCst);
        let mut slot = host.conn.lock().await;
        if let Some(m) = &slot.master {
            return Ok(m.clone());
        }
        if host.attempts.load(Ordering::SeqCst) > asked {
            if let Some(e) = &slot.failure {
                return Err(e.clone());
            }
        }
        let result = {
            let _permit = self.connects.acquire().await.expect("never closed");
            self.connect(inst).await
        };
        host.attempts.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok(m) => {
                let m = MasterRef(Arc::new(m));
                slot.master = Some(m.clone());
                slot.failure = None;
                Ok(m)
            }
            Err(e) => {
                slot.failure = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Drops `dead` as the host's master (it exited: idle, network loss), so
    /// the next command connects afresh.
    async fn forget(&self, host: &Host, dead: &MasterRef) {
        let mut slot = host.conn.lock().await;
        if slot
            .master
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(&m.0, &dead.0))
        {
            slot.master = None;
        }
    }

    /// Starts `ssh -M -f -N` for `inst`; it forks into the background once
    /// authenticated, and its log tells why when it could not.
    async fn connect(&self, inst: &Instance) -> ActionResult<Master> {
        let s = &self.inv.ssh;
        let dir = make_control_dir(&self.control_root).map_err(|e| {
            ActionError::new(
                ErrorKind::Unreachable,
                format!(
                    "cannot create an ssh control directory in {}: {e}",
                    self.control_root.display()
                ),
            )
            .host(inst.name.clone())
        })?;
        let mut master = Master {
            session: None,
            dir,
            program: self.program.clone(),
        };
        let log = master.dir.join("log");
        let args = master_args(s, inst, &master.ctl(), &log);
        let started = Instant::now();
        debug!(instance = %inst.name, "ssh: connecting to {}", self.destination(inst));
        let mut launch = tokio::process::Command::new(&self.program);
        launch
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // ssh's ConnectTimeout covers TCP, banner and key exchange but not
        // authentication; this outer bound covers a server that stalls there.
        let bound = s.connect_timeout * 2 + Duration::from_secs(10);
        let target = Target::new(s, inst);
        let status = match tokio::time::timeout(bound, launch.status()).await {
            Err(_) => {
                return Err(ActionError::new(
                    ErrorKind::ConnectTimeout,
                    format!(
                        "connecting to {} port {} did not finish within {} (the server accepted but stalled, e.g. in authentication); check sshd on the host",
                        target.host,
                        target.port_text(""),
                        format_duration(bound)
                    ),
                )
                .host(inst.name.clone()))
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(missing_ssh(&self.program).host(inst.name.clone()))
            }
            Ok(Err(e)) => {
                return Err(ActionError::new(
                    ErrorKind::Unreachable,
                    format!("cannot run {}: {e}", self.program.display()),
                )
                .host(inst.name.clone()))
            }
            Ok(Ok(status)) => status,
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            return Err(target.classify(&text).host(inst.name.clone()));
        }
        if let Some(line) = line_with(&text, "Permanently added") {
            info!(instance = %inst.name, "ssh: {line} (ssh.host_key_checking = \"accept-new\")");
        }
        debug!(instance = %inst.name, "ssh: connected to {} in {}", self.destination(inst),
            format_duration(started.elapsed()));
        master.session = Some(Session::resume_mux(
            master.ctl().into_boxed_path(),
            Some(log.into_boxed_path()),
        ));
        Ok(master)
    }

    /// Opens a session running `remote` under the host's session cap. Each
    /// retry here is safe because the command has not started: the master
    /// had exited (reconnect once), or the server refused the session (wait
    /// for one of ours to end; refused while none is open, give up soon).
    async fn spawn(
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
        let closes = hosts.into_iter().map(|(name, host)| async move {
            let master = host.conn.lock().await.master.take();
            if let Some(MasterRef(master)) = master {
                // Still shared only if a command outlived the run; its last
                // user's drop then asks the master to exit.
                if let Ok(mut master) = Arc::try_unwrap(master) {
                    if let Some(session) = master.session.take() {
                        // The master stops accepting sessions and exits once
                        // the last one ends.
                        if let Err(e) = session.close().await {
                            debug!(instance = %name, "ssh: closing the master: {}", error_chain(&e));
                        }
                    }
                }
            }
        });
        futures::future::join_all(closes).await;
    }
}

/// Stops a command abandoned mid-run (its future dropped by Ctrl-C) on the
/// host, in the background; `close` waits for it.
struct StopOnDrop {
    armed: bool,
    master: MasterRef,
    host: Arc<Host>,
    pgid: watch::Receiver<i32>,
    name: String,
    stops: Arc<Mutex<Vec<JoinHandle<()>>>>,
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
async fn group_of(pgid: &mut watch::Receiver<i32>) -> Option<i32> {
    match tokio::time::timeout(STOP_TIMEOUT, pgid.wait_for(|pg| *pg > 0)).await {
        Ok(Ok(pg)) => Some(*pg),
        _ => None,
    }
}

/// Signals process group `pg` on the host over `master`: SIGTERM, then
/// SIGKILL if it outlives the grace period.
async fn stop_remote(master: MasterRef, host: Arc<Host>, pg: i32) -> Result<(), String> {
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
fn remote_line(line: &str) -> String {
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
async fn read_pgid<R: AsyncRead + Unpin>(
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

/// The `ssh` arguments that start a master for `inst`. Only what rollscript
/// must decide is set here; everything else comes from the ssh config, as
/// for the operator's own `ssh` (command-line options win over it).
fn master_args(s: &SshSettings, inst: &Instance, ctl: &Path, log: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let opt = |a: &mut Vec<OsString>, o: String| {
        a.push("-o".into());
        a.push(o.into());
    };
    a.extend(["-E".into(), log.into(), "-S".into(), ctl.into()]);
    a.extend(["-M", "-f", "-N"].map(OsString::from));
    opt(&mut a, format!("ControlPersist={}", MASTER_IDLE.as_secs()));
    // Never prompt: a password or passphrase prompt would hang the run.
    opt(&mut a, "BatchMode=yes".into());
    opt(
        &mut a,
        match s.host_key_checking {
            HostKeyPolicy::Strict => "StrictHostKeyChecking=yes".into(),
            HostKeyPolicy::AcceptNew => "StrictHostKeyChecking=accept-new".into(),
        },
    );
    // ssh takes whole seconds; round up so "1500ms" is not cut to 1 s.
    let secs = s.connect_timeout.as_millis().div_ceil(1000).max(1);
    opt(&mut a, format!("ConnectTimeout={secs}"));
    opt(
        &mut a,
        format!("ServerAliveInterval={SERVER_ALIVE_INTERVAL}"),
    );
    opt(
        &mut a,
        format!("ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}"),
    );
    // Forwardings a user's config declares for the host would only collide
    // between parallel masters; deploys need none.
    opt(&mut a, "ClearAllForwardings=yes".into());
    if let Some(p) = inst.ssh_port.or(s.port) {
        a.extend(["-p".into(), p.to_string().into()]);
    }
    if let Some(u) = &s.user {
        a.extend(["-l".into(), u.into()]);
    }
    if let Some(k) = &s.identity {
        // Only that key: the one the error message can then name.
        opt(&mut a, "IdentitiesOnly=yes".into());
        a.extend(["-i".into(), k.into()]);
    }
    if let Some(f) = &s.known_hosts {
        // ssh splits this option's value on spaces unless it is quoted.
        opt(&mut a, format!("UserKnownHostsFile=\"{}\"", f.display()));
    }
    if let Some(c) = &s.config {
        a.extend(["-F".into(), c.into()]);
    }
    a.push("--".into());
    a.push(inst.host.clone().into());
    a
}

/// What a connect was aimed at, for error messages.
struct Target {
    host: String,
    user: Option<String>,
    port: Option<u16>,
    identity: Option<PathBuf>,
    known_hosts: String,
    /// Said after the known_hosts path when it is ssh's default, which the
    /// user's ssh config may replace.
    known_hosts_note: &'static str,
    connect_timeout: Duration,
}

impl Target {
    fn new(s: &SshSettings, inst: &Instance) -> Self {
        Self {
            host: inst.host.clone(),
            user: s.user.clone(),
            port: inst.ssh_port.or(s.port),
            identity: s.identity.clone(),
            known_hosts: s
                .known_hosts
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.ssh/known_hosts".into()),
            known_hosts_note: match s.known_hosts {
                Some(_) => "",
                None => " (or the UserKnownHostsFile your ssh config names)",
            },
            connect_timeout: s.connect_timeout,
        }
    }

    /// The port: as configured, else as ssh reported it, else 22.
    fn port_text(&self, log: &str) -> String {
        if let Some(p) = self.port {
            return p.to_string();
        }
        log.split("port ")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                (!digits.is_empty()).then_some(digits)
            })
            .next()
            .unwrap_or_else(|| "22".into())
    }

    /// How known_hosts names the host: `[host]:port` off port 22.
    fn known_hosts_name(&self) -> String {
        match self.port {
            Some(p) if p != 22 => format!("[{}]:{p}", self.host),
            _ => self.host.clone(),
        }
    }

    fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// Turns ssh's log of a failed connect into an error kind and a message
    /// that says what to do.
    fn classify(&self, log: &str) -> ActionError {
        let port = self.port_text(log);
        let said = |needle: &str| line_with(log, needle).unwrap_or_default();
        if log.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || log.contains("has changed and you have requested strict checking")
        {
            let recorded = offending_entry(log).unwrap_or_else(|| self.known_hosts.clone());
            let file = recorded
                .rsplit_once(':')
                .filter(|(_, line)| line.chars().all(|c| c.is_ascii_digit()))
                .map(|(f, _)| f.to_string())
                .unwrap_or_else(|| recorded.clone());
            return ActionError::new(
                ErrorKind::HostKeyChanged,
                format!(
                    "the host key of {name} has CHANGED since it was recorded in {recorded}: this can be a man-in-the-middle attack, or the host was rebuilt; rollscript never accepts a changed key. If the change is expected, verify the new key, remove the old one (ssh-keygen -f {file} -R '{name}') and add the new one",
                    name = self.known_hosts_name(),
                ),
            );
        }
        if log.contains("host key is known for") || log.contains("Host key verification failed") {
            let keyscan_port = match self.port {
                Some(p) if p != 22 => format!(" -p {p}"),
                _ => String::new(),
            };
            return ActionError::new(
                ErrorKind::HostKeyUnknown,
                format!(
                    "the host key of {name} is not in {kh}{note} and host-key checking is strict: verify the host's key fingerprint, then add it (ssh-keyscan{keyscan_port} {host} >> {kh}), or set ssh.host_key_checking = \"accept-new\" to trust hosts on first contact",
                    name = self.known_hosts_name(),
                    kh = self.known_hosts,
                    note = self.known_hosts_note,
                    host = self.host,
                ),
            );
        }
        if log.contains("Could not resolve hostname") {
            return ActionError::new(
                ErrorKind::Dns,
                format!(
                    "host name {} does not resolve (ssh: {}): check the instance's host in the inventory, or DNS",
                    self.host,
                    said("Could not resolve hostname")
                        .trim_start_matches("ssh: ")
                        .rsplit(": ")
                        .next()
                        .unwrap_or_default()
                ),
            );
        }
        if log.contains("Connection refused") {
            return ActionError::new(
                ErrorKind::ConnectionRefused,
                format!(
                    "connection refused by {} port {port}: no sshd is listening there; check that sshd is running and the port (ssh.port, or ssh_port on the instance)",
                    self.host
                ),
            );
        }
        if log.contains("timed out") {
            return ActionError::new(
                ErrorKind::ConnectTimeout,
                format!(
                    "no SSH answer from {} port {port} within {} (ssh: {}): check the address, firewalls or security groups and that sshd is up, or raise ssh.connect_timeout",
                    self.host,
                    format_duration(self.connect_timeout),
                    said("timed out").trim_start_matches("ssh: "),
                ),
            );
        }
        if log.contains("Permission denied (")
            || log.contains("Too many authentication failures")
            || log.contains("No more authentication methods")
        {
            let who = match &self.user {
                Some(u) => format!("{u}@{}", self.host),
                None => format!(
                    "{} (user from your ssh config, else your login name)",
                    self.host
                ),
            };
            let remote_user = self.user.as_deref().unwrap_or("the remote user");
            // ssh warns about an unreadable key on its stderr, not in the
            // log: look at the file itself.
            let unreadable = self
                .identity
                .as_ref()
                .and_then(|k| std::fs::File::open(k).err());
            let message = match (&self.identity, unreadable) {
                (Some(key), Some(e)) => format!(
                    "authentication failed for {who}: the key ssh.identity = {} cannot be read ({e}); point ssh.identity at the deploy key",
                    key.display(),
                ),
                (Some(key), None) => format!(
                    "authentication failed for {who} with key {}: the server refused it; add {}.pub to ~/.ssh/authorized_keys of {remote_user} on the host, or set ssh.identity to the key it accepts",
                    key.display(),
                    key.display()
                ),
                (None, _) => format!(
                    "authentication failed for {who} with the keys ssh offers by default (ssh-agent, ~/.ssh/id_*, IdentityFile in your ssh config): set ssh.identity to the deploy key, or add its public half to ~/.ssh/authorized_keys of {remote_user} on the host"
                ),
            };
            return ActionError::new(ErrorKind::AuthFailed, message);
        }
        let last = log
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("ssh exited without saying why");
        ActionError::new(
            ErrorKind::Unreachable,
            format!(
                "cannot connect to {} port {port}: {}",
                self.destination(),
                last.trim_start_matches("ssh: ")
            ),
        )
        .stderr_tail(log)
    }
}

fn missing_ssh(program: &Path) -> ActionError {
    if program == Path::new("ssh") {
        ActionError::new(
            ErrorKind::SshMissing,
            "no `ssh` program found on PATH: install the OpenSSH client (e.g. apt-get install openssh-client) on the machine running rollscript",
        )
    } else {
        ActionError::new(
            ErrorKind::SshMissing,
            format!(
                "the ssh program {} does not exist: install the OpenSSH client or fix the path",
                program.display()
            ),
        )
    }
}

/// `FILE:LINE` from ssh's "Offending ED25519 key in FILE:LINE".
fn offending_entry(log: &str) -> Option<String> {
    let line = line_with(log, "Offending ")?;
    line.split(" key in ").nth(1).map(|s| s.trim().to_string())
}

/// The first line of `log` containing `needle`, trimmed.
fn line_with(log: &str, needle: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().to_string())
}

/// An error and its sources, `a: b: c`, since openssh's own Display is terse.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// Where control directories go: the temp dir when its path is short enough
/// for a socket (ssh binds `<path>.<16 random chars>` before renaming),
/// else `/tmp`.
fn control_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    if tmp.as_os_str().len() <= 48 {
        tmp
    } else {
        PathBuf::from("/tmp")
    }
}

/// A fresh, private (0700) directory `<root>/rs<pid>.<n>`; `mkdir` refuses an
/// existing path, so nobody else's directory or symlink is ever used.
fn make_control_dir(root: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("rs{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Inventory;

    fn inventory(ssh: &str) -> Inventory {
        let text = format!(
            "[app]\nname = \"t\"\n[ssh]\n{ssh}\n[[instances]]\nname = \"web-1\"\nhost = \"10.0.1.10\"\n"
        );
        Inventory::parse(Path::new("/inv/rollscript.toml"), &text).unwrap()
    }

    fn target(ssh: &str) -> Target {
        let inv = inventory(ssh);
        Target::new(&inv.ssh, &inv.instances[0])
    }

    fn args(ssh: &str) -> Vec<String> {
        let inv = inventory(ssh);
        master_args(
            &inv.ssh,
            &inv.instances[0],
            Path::new("/tmp/rs1.0/m"),
            Path::new("/tmp/rs1.0/log"),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
    }

    #[test]
    fn master_is_strict_batch_and_takes_only_configured_settings() {
        let a = args("");
        assert_eq!(
            a.join(" "),
            "-E /tmp/rs1.0/log -S /tmp/rs1.0/m -M -f -N -o ControlPersist=600 -o BatchMode=yes \
             -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 \
             -o ServerAliveCountMax=4 -o ClearAllForwardings=yes -- 10.0.1.10"
        );
    }

    #[test]
    fn master_passes_user_port_key_known_hosts_and_config() {
        let a = args(
            "user = \"ubuntu\"\nport = 2222\nidentity = \"keys/deploy\"\nknown_hosts = \"kh\"\n\
             config = \"ssh_config\"\nhost_key_checking = \"accept-new\"\nconnect_timeout = \"1500ms\"",
        );
        let text = a.join(" ");
        assert!(
            text.contains("-o StrictHostKeyChecking=accept-new"),
            "{text}"
        );
        assert!(text.contains("-o ConnectTimeout=2"), "{text}");
        assert!(
            text.ends_with(
                "-p 2222 -l ubuntu -o IdentitiesOnly=yes -i /inv/keys/deploy \
                 -o UserKnownHostsFile=\"/inv/kh\" -F /inv/ssh_config -- 10.0.1.10"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_instance_ssh_port_overrides_ssh_port() {
        let inv = Inventory::parse(
            Path::new("/inv/rollscript.toml"),
            "[app]\nname = \"t\"\n[ssh]\nport = 2222\n\
             [[instances]]\nname = \"a\"\nhost = \"10.0.1.10\"\nssh_port = 2200\n\
             [[instances]]\nname = \"b\"\nhost = \"10.0.1.11\"\n",
        )
        .unwrap();
        let port_of = |i: usize| {
            let a = master_args(&inv.ssh, &inv.instances[i], Path::new("m"), Path::new("l"));
            let at = a.iter().position(|x| x == "-p").unwrap();
            a[at + 1].clone().into_string().unwrap()
        };
        assert_eq!(port_of(0), "2200");
        assert_eq!(port_of(1), "2222");
    }

    #[test]
    fn unknown_host_key_without_a_configured_file_points_at_the_default() {
        let e = target("").classify(
            "No ED25519 host key is known for 10.0.1.10 and you have requested strict checking.\r\nHost key verification failed.\r\n",
        );
        assert!(
            e.message.starts_with("the host key of 10.0.1.10 is not in ~/.ssh/known_hosts (or the UserKnownHostsFile your ssh config names) and host-key checking is strict"),
            "{}",
            e.message
        );
        assert!(e
            .message
            .contains("(ssh-keyscan 10.0.1.10 >> ~/.ssh/known_hosts)"));
    }

    #[test]
    fn refused_names_host_and_port() {
        let e = target("port = 2299")
            .classify("ssh: connect to host 10.0.1.10 port 2299: Connection refused\r\n");
        assert_eq!(e.kind, ErrorKind::ConnectionRefused);
        assert_eq!(
            e.message,
            "connection refused by 10.0.1.10 port 2299: no sshd is listening there; check that sshd is running and the port (ssh.port, or ssh_port on the instance)"
        );
    }

    #[test]
    fn banner_timeout_is_a_connect_timeout() {
        let e = target("connect_timeout = \"1s\"").classify(
            "Connection timed out during banner exchange\r\nConnection to 10.0.1.10 port 22 timed out\r\n",
        );
        assert_eq!(e.kind, ErrorKind::ConnectTimeout);
        assert!(
            e.message.starts_with("no SSH answer from 10.0.1.10 port 22 within 1s (ssh: Connection timed out during banner exchange)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn auth_failure_names_the_key() {
        // Any readable file stands in for a key the server refused.
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let e = target(&format!("user = \"root\"\nidentity = \"{key}\""))
            .classify("root@10.0.1.10: Permission denied (publickey).\r\n");
        assert_eq!(e.kind, ErrorKind::AuthFailed);
        assert_eq!(
            e.message,
            format!("authentication failed for root@10.0.1.10 with key {key}: the server refused it; add {key}.pub to ~/.ssh/authorized_keys of root on the host, or set ssh.identity to the key it accepts")
        );
        let e = target("identity = \"/keys/none\"")
            .classify("root@10.0.1.10: Permission denied (publickey).\r\n");
        assert!(
            e.message.contains(
                "the key ssh.identity = /keys/none cannot be read (No such file or directory (os error 2))"
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_and_changed_host_keys_are_told_apart() {
        let unknown = target("port = 2222\nknown_hosts = \"/kh\"").classify(
            "No ED25519 host key is known for [10.0.1.10]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n",
        );
        assert_eq!(unknown.kind, ErrorKind::HostKeyUnknown);
        assert!(
            unknown.message.starts_with(
                "the host key of [10.0.1.10]:2222 is not in /kh and host-key checking is strict"
            ),
            "{}",
            unknown.message
        );
        assert!(unknown
            .message
            .contains("ssh-keyscan -p 2222 10.0.1.10 >> /kh"));

        let changed = target("port = 2222\nknown_hosts = \"/kh\"").classify(
            "@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\nOffending ED25519 key in /kh:3\r\n  remove with:\r\nHost key for [10.0.1.10]:2222 has changed and you have requested strict checking.\r\nHost key verification failed.\r\n",
        );
        assert_eq!(changed.kind, ErrorKind::HostKeyChanged);
        assert!(
            changed.message.starts_with(
                "the host key of [10.0.1.10]:2222 has CHANGED since it was recorded in /kh:3"
            ),
            "{}",
            changed.message
        );
        assert!(changed
            .message
            .contains("ssh-keygen -f /kh -R '[10.0.1.10]:2222'"));
    }

    #[test]
    fn unresolvable_name_is_dns() {
        let e = target("")
            .classify("ssh: Could not resolve hostname web.invalid: Name or service not known\r\n");
        assert_eq!(e.kind, ErrorKind::Dns);
        assert_eq!(
            e.message,
            "host name 10.0.1.10 does not resolve (ssh: Name or service not known): check the instance's host in the inventory, or DNS"
        );
    }

    #[test]
    fn anything_else_is_unreachable_with_ssh_words() {
        let e = target("").classify("ssh: connect to host 10.0.1.10 port 22: No route to host\r\n");
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert_eq!(
            e.message,
            "cannot connect to 10.0.1.10 port 22: connect to host 10.0.1.10 port 22: No route to host"
        );
    }

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

    #[test]
    fn control_socket_paths_fit_the_unix_limit() {
        let dir = make_control_dir(&control_root()).unwrap();
        // ssh binds `<ControlPath>.<16 chars>` first; sun_path holds 107 bytes.
        assert!(
            dir.join("m").as_os_str().len() + 17 < 108,
            "{}",
            dir.display()
        );
        std::fs::remove_dir(dir).unwrap();
    }

    #[test]
    fn known_hosts_names_use_brackets_off_port_22() {
        assert_eq!(target("port = 22").known_hosts_name(), "10.0.1.10");
        assert_eq!(target("port = 2200").known_hosts_name(), "[10.0.1.10]:2200");
    }
}
