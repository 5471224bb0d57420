//! `lb.kind = "haproxy"`: membership, drains, weights, stats and blue/green
//! switches through the HAProxy runtime API (`stats socket … level admin`).
//!
//! Owns the conversation with the socket (one command per connection, as
//! HAProxy's non-interactive CLI expects), the `show stat` CSV reader, and
//! the mapping of HAProxy's server status onto [`MemberState`]. Commands are
//! built by plain functions from validated names, so what is sent is exactly
//! what the plan and the tests see.
//!
//! Servers are matched by inventory name, or by address (`host:port`, port =
//! the instance's traffic port) when the backend has no server of that name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::config::{format_duration, host_for_url, Instance, Inventory, LbBackend};
use crate::primitives::{
    ActionError, ActionResult, DrainReport, ErrorKind, LbOp, LoadBalancer, MemberState, MemberStats,
};

/// How long one runtime-API exchange may take. HAProxy answers from memory
/// in microseconds; anything near this means it is wedged or not HAProxy.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// HAProxy's reply when a backend has no server of the given name.
const NO_SUCH_SERVER: &str = "No such server.";

pub struct HaproxyLb {
    inv: Arc<Inventory>,
    api: RuntimeApi,
    backend: String,
    /// Inventory name → HAProxy server name, for instances found by address;
    /// std Mutex: nothing is awaited while it is held.
    by_address: Mutex<HashMap<String, String>>,
    /// Instances this provider put `ready` from `maint` and has not yet
    /// waited for: HAProxy reset their health, so any DOWN is a new verdict.
    from_maint: Mutex<HashSet<String>>,
}

impl HaproxyLb {
    /// Connects to nothing: the first call does.
    ///
    /// # Panics
    /// When the inventory's `lb.kind` is not `haproxy` (`providers::build`
    /// only calls this for haproxy inventories).
    pub fn new(inv: Arc<Inventory>) -> Self {
        let LbBackend::Haproxy { socket, backend } = &inv.lb.backend else {
            panic!("HaproxyLb needs lb.kind = \"haproxy\"");
        };
        Self {
            api: RuntimeApi::new(socket),
            backend: backend.clone(),
            by_address: Mutex::new(HashMap::new()),
            from_maint: Mutex::new(HashSet::new()),
            inv,
        }
    }

    /// The backend serving `inst`: its pool's own backend when `lb.pools`
    /// names one, else `lb.backend`.
    fn backend_of(&self, inst: &Instance) -> &str {
        inst.pool
            .as_ref()
            .and_then(|p| self.inv.lb.pools.get(p))
            .and_then(|t| t.backend.as_deref())
            .unwrap_or(&self.backend)
    }

    fn cached_server(&self, inst: &Instance) -> Option<String> {
        self.by_address.lock().unwrap().get(&inst.name).cloned()
    }

    /// The server name the plan shows: the inventory name (a by-address match
    /// is only known after asking HAProxy, and a plan asks nothing).
    fn label(&self, inst: &Instance) -> String {
        format!("{}/{}", self.backend_of(inst), inst.name)
    }

    fn poll(&self) -> Backoff {
        Backoff::new(self.inv.lb.poll_interval)
    }

    /// Every server of `backend`, from `show stat`.
    async fn servers(&self, backend: &str) -> ActionResult<Vec<ServerStat>> {
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
    async fn find<'a>(&self, inst: &Instance, rows: &'a [ServerStat]) -> Option<&'a ServerStat> {
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

    /// The row of `inst`, or an error naming what the backend does hold.
    async fn row(&self, inst: &Instance) -> ActionResult<ServerStat> {
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
    fn missing(&self, inst: &Instance, backend: &str, rows: &[ServerStat]) -> String {
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
    async fn set_server(
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

    /// HAProxy's health checks say `inst` is down (still, after `waited`).
    fn marked_down(
        &self,
        inst: &Instance,
        row: &ServerStat,
        waited: Option<Duration>,
    ) -> ActionError {
        let still = waited
            .map(|w| format!(" (still, after {})", format_duration(w)))
            .unwrap_or_default();
        ActionError::new(
            ErrorKind::HealthFailed,
            format!(
                "HAProxy's health checks marked {}/{} DOWN{still}: {}",
                row.backend,
                row.server,
                row.check_text()
            ),
        )
        .host(&inst.name)
        .detail("check_status", &row.check_status)
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

    /// The instances of every pool, split into the target pool and the rest.
    fn pool_members(&self, pool: &str) -> (Vec<&Instance>, Vec<&Instance>) {
        self.inv
            .instances
            .iter()
            .filter(|i| i.pool.is_some())
            .partition(|i| i.pool.as_deref() == Some(pool))
    }
}

#[async_trait]
impl LoadBalancer for HaproxyLb {
    fn kind(&self) -> &'static str {
        "haproxy"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let what = match op {
            LbOp::Deregister => "drain".to_string(),
            LbOp::WaitDrained { .. } => "wait until 0 sessions, then maint".to_string(),
            LbOp::Register => "ready".to_string(),
            LbOp::WaitInService { .. } => "wait until UP".to_string(),
            LbOp::SetWeight(w) => format!("weight {w}"),
        };
        format!("haproxy {}: {what}", self.label(inst))
    }

    /// `drain`: no new sessions; open ones finish; health checks go on.
    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Drain))
            .await
    }

    /// Polls `scur` and `qcur` down to 0, then sets `maint` so nothing (not
    /// even a persistent-cookie session, which `drain` still admits) arrives
    /// while the instance is being replaced.
    async fn wait_drained(&self, inst: &Instance, timeout: Duration) -> ActionResult<DrainReport> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut poll = self.poll();
        let mut at_start = None;
        loop {
            let row = self.row(inst).await?;
            let open = row.sessions + row.queue;
            if at_start.is_none() {
                at_start = Some(open);
                if takes_new_traffic(&row.status) {
                    return Err(ActionError::new(
                        ErrorKind::Lb,
                        format!(
                            "HAProxy server {}/{} is still in rotation (status {}): deregister(inst) first, or the drain would wait on live traffic",
                            row.backend, row.server, row.status
                        ),
                    )
                    .host(&inst.name));
                }
            }
            if open == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ActionError::new(
                    ErrorKind::DrainTimeout,
                    format!(
                        "{} session(s) still open and {} queued on HAProxy server {}/{} after {}; it is left in {} (no new traffic). Raise lb.drain_timeout, or look for long-lived connections (websockets, streaming, slow clients)",
                        row.sessions,
                        row.queue,
                        row.backend,
                        row.server,
                        format_duration(timeout),
                        row.status
                    ),
                )
                .host(&inst.name)
                .detail("sessions", row.sessions)
                .detail("queue", row.queue));
            }
            tokio::time::sleep(poll.next().min(deadline - now)).await;
        }
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Maint))
            .await?;
        Ok(DrainReport {
            waited: started.elapsed(),
            connections_at_start: at_start,
            configured_delay: None,
        })
    }

    /// `ready`: back into load balancing. From `maint` HAProxy counts the
    /// server UP at once with one check of slack (`UP 1/2`);
    /// `wait_in_service` waits for that check.
    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        let was = self.row(inst).await?;
        self.set_server(inst, |b, s| set_state_cmd(b, s, AdminState::Ready))
            .await?;
        if Status::of(&was.status) == Status::Maint {
            self.from_maint.lock().unwrap().insert(inst.name.clone());
        }
        Ok(())
    }

    /// Waits for a plain `UP` (full health: a check passed since `ready`, or
    /// the server has no checks). Fails as soon as a check run during the
    /// wait marks it `DOWN`, with HAProxy's own words for why.
    async fn wait_in_service(&self, inst: &Instance, timeout: Duration) -> ActionResult<Duration> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut poll = self.poll();
        // A DOWN is news only when a check ran after `ready`: leaving maint
        // resets the server to UP, so from there any DOWN is; otherwise (e.g.
        // `ready` from a drain that checks marked DOWN during the restart) the
        // DOWN may be stale until the status or the check result moves.
        let mut checked_since = self.from_maint.lock().unwrap().remove(&inst.name);
        let mut first_check = None;
        // While a check runs, `show stat` shows it half-done (`* L7STS`, code
        // 0, no text): verdicts come from the last finished one.
        let mut finished: Option<ServerStat> = None;
        loop {
            let row = self.row(inst).await?;
            let status = Status::of(&row.status);
            if status != Status::Down {
                checked_since = true;
            }
            if !row.check_running() {
                let check = row.check_text();
                if first_check.as_ref().is_some_and(|c| *c != check) {
                    checked_since = true;
                }
                first_check.get_or_insert(check);
                finished = Some(row.clone());
            }
            let verdict = finished.as_ref().unwrap_or(&row);
            match status {
                Status::Up => return Ok(started.elapsed()),
                Status::Maint | Status::Drain => {
                    return Err(ActionError::new(
                        ErrorKind::Lb,
                        format!(
                            "HAProxy server {}/{} is not in rotation (status {}): register(inst) first",
                            row.backend, row.server, row.status
                        ),
                    )
                    .host(&inst.name));
                }
                Status::Down if !row.check_running() && row.check_failed() && checked_since => {
                    return Err(self.marked_down(inst, &row, None));
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                if status == Status::Down && verdict.check_failed() {
                    return Err(self.marked_down(inst, verdict, Some(timeout)));
                }
                return Err(ActionError::new(
                    ErrorKind::Timeout,
                    format!(
                        "HAProxy server {}/{} did not come UP within {} (status {}, last check: {})",
                        row.backend,
                        row.server,
                        format_duration(timeout),
                        row.status,
                        verdict.check_text()
                    ),
                )
                .host(&inst.name));
            }
            tokio::time::sleep(poll.next().min(deadline - now)).await;
        }
    }

    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        self.set_server(inst, |b, s| set_weight_cmd(b, s, &weight.to_string()))
            .await
    }

    fn supports_weights(&self) -> bool {
        true
    }

    /// `weight 100%`: HAProxy's relative weight, of the one in haproxy.cfg.
    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        self.set_server(inst, |b, s| set_weight_cmd(b, s, "100%"))
            .await
    }

    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        let rows = self
            .servers(self.backend_of(inst))
            .await
            .map_err(|e| e.host(&inst.name))?;
        Ok(match self.find(inst, &rows).await {
            Some(row) => member_state(&row.status),
            None => MemberState::Unknown,
        })
    }

    /// One `show stat` per backend involved (one, unless pools have their own).
    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        let mut by_backend: BTreeMap<&str, Vec<ServerStat>> = BTreeMap::new();
        let mut count = 0;
        for inst in fleet {
            let backend = self.backend_of(inst);
            if !by_backend.contains_key(backend) {
                by_backend.insert(backend, self.servers(backend).await?);
            }
            let rows = &by_backend[backend];
            if let Some(row) = self.find(inst, rows).await {
                if member_state(&row.status) == MemberState::InService {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Keys: `sessions` (scur), `queue` (qcur), `requests` (stot), `http_2xx`,
    /// `http_4xx`, `http_5xx`, `response_ms` (rtime, average of the last
    /// 1024), `weight`, `connect_errors` (econ), `response_errors` (eresp).
    async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        let row = self.row(inst).await?;
        Ok([
            ("sessions", row.sessions),
            ("queue", row.queue),
            ("requests", row.total),
            ("http_2xx", row.http_2xx),
            ("http_4xx", row.http_4xx),
            ("http_5xx", row.http_5xx),
            ("response_ms", row.response_ms),
            ("weight", row.weight),
            ("connect_errors", row.connect_errors),
            ("response_errors", row.response_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as f64))
        .collect())
    }

    /// One socket write: the target pool's servers `ready` first (so there is
    /// no instant with nobody serving), then every other pool's `drain`. The
    /// old pool keeps running and health-checked, for an instant switch back.
    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        let (target, others) = self.pool_members(pool);
        if target.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("no instance has pool = {pool:?}"),
            ));
        }
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
        // Draining the serving pool for a pool HAProxy already knows is dead
        // would take the site down; servers in maint have no known health yet.
        let incoming: Vec<&ServerStat> = resolve
            .iter()
            .filter(|(_, up)| *up)
            .map(|(r, _)| r)
            .collect();
        if incoming.iter().all(|r| {
            Status::of(&r.status) == Status::Down || Status::of(&r.status) == Status::Rising
        }) {
            let why: Vec<String> = incoming
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
            return Err(ActionError::new(
                ErrorKind::HealthFailed,
                format!(
                    "refusing to switch to pool {pool}: HAProxy's health checks report none of its servers up: {}; nothing was changed",
                    why.join(", ")
                ),
            ));
        }
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

    fn describe_switch(&self, pool: &str) -> String {
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

// ---- commands: plain data, built from checked names --------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }
}

/// A name that must not reach the runtime API; becomes `invalid_argument`.
#[derive(Debug)]
struct BadName(String);

impl From<BadName> for ActionError {
    fn from(e: BadName) -> Self {
        ActionError::new(ErrorKind::InvalidArgument, e.0)
    }
}

/// The runtime API splits a line on `;` and words on spaces: a name reaching
/// it must be one of HAProxy's own identifier characters and nothing else.
fn checked<'a>(what: &str, name: &'a str) -> Result<&'a str, BadName> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(name)
    } else {
        Err(BadName(format!(
            "refusing to send HAProxy {what} name {name:?}: use letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

fn set_state_cmd(backend: &str, server: &str, state: AdminState) -> Result<String, BadName> {
    Ok(format!(
        "set server {}/{} state {}",
        checked("backend", backend)?,
        checked("server", server)?,
        state.as_str()
    ))
}

/// `weight`: 0-256, or a percentage of the configured weight ("100%").
fn set_weight_cmd(backend: &str, server: &str, weight: &str) -> Result<String, BadName> {
    Ok(format!(
        "set server {}/{} weight {weight}",
        checked("backend", backend)?,
        checked("server", server)?
    ))
}

/// `4 -1`: servers only, all of them.
fn show_stat_cmd(backend: &str) -> Result<String, BadName> {
    Ok(format!("show stat {} 4 -1", checked("backend", backend)?))
}

/// What the operator can do about a refusal HAProxy explains only tersely.
fn hint_for(reply: &str, backend: &str, server: &str) -> String {
    if reply.starts_with("No such backend") || reply.starts_with("No such proxy") {
        format!(
            " — haproxy.cfg has no backend {backend}: check lb.backend (and lb.pools.*.backend)"
        )
    } else if reply.starts_with("Permission denied") {
        " — the socket must be declared with admin level: `stats socket … level admin`".into()
    } else if reply == NO_SUCH_SERVER {
        format!(" — backend {backend} has no server {server}")
    } else {
        String::new()
    }
}

// ---- the socket ---------------------------------------------------------------

/// Where the runtime API listens: a unix socket path or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// `host:port` when it ends in a port number and is not a path; the
    /// `unix@` and `ipv4@`/`ipv6@` prefixes of haproxy.cfg are accepted too.
    fn parse(text: &str) -> Self {
        if let Some(path) = text.strip_prefix("unix@") {
            return Self::Unix(PathBuf::from(path));
        }
        for prefix in ["ipv4@", "ipv6@", "tcp@"] {
            if let Some(addr) = text.strip_prefix(prefix) {
                return Self::Tcp(addr.to_string());
            }
        }
        let tcp = !text.contains('/')
            && text
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if tcp {
            Self::Tcp(text.to_string())
        } else {
            Self::Unix(PathBuf::from(text))
        }
    }
}

/// One command per connection: HAProxy's CLI answers and closes.
struct RuntimeApi {
    endpoint: Endpoint,
    /// As written in the inventory, for messages.
    text: String,
}

impl fmt::Display for RuntimeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl RuntimeApi {
    fn new(socket: &str) -> Self {
        Self {
            endpoint: Endpoint::parse(socket),
            text: socket.to_string(),
        }
    }

    /// Sends one line (commands may be `;`-separated) and returns the reply,
    /// trimmed: empty means every command succeeded.
    async fn send(&self, line: &str) -> ActionResult<String> {
        debug_assert!(!line.contains('\n'), "one line per connection");
        let exchange = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.cannot_connect(&e))?;
                    self.exchange(s, line).await
                }
                Endpoint::Tcp(addr) => {
                    let s = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(|e| self.cannot_connect(&e))?;
                    self.exchange(s, line).await
                }
            }
        };
        match tokio::time::timeout(API_TIMEOUT, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "HAProxy runtime API at {self} did not answer within {}",
                    format_duration(API_TIMEOUT)
                ),
            )
            .command(line)),
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        line: &str,
    ) -> ActionResult<String> {
        let io = |e: std::io::Error| {
            ActionError::new(
                ErrorKind::Lb,
                format!("HAProxy runtime API at {self}: {}", io_text(&e)),
            )
            .command(line)
        };
        s.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.map_err(io)?;
        Ok(String::from_utf8_lossy(&reply).trim().to_string())
    }

    fn cannot_connect(&self, e: &std::io::Error) -> ActionError {
        let declare = match &self.endpoint {
            Endpoint::Unix(p) => format!("stats socket {} level admin", p.display()),
            Endpoint::Tcp(a) => format!("stats socket ipv4@{a} level admin"),
        };
        let also = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " — rollscript's user needs read and write access to the socket (its `mode`/`user`/`group` in haproxy.cfg)"
                .to_string()
        } else {
            format!(" — is HAProxy running, with `{declare}` in its global section?")
        };
        ActionError::new(
            ErrorKind::Lb,
            format!(
                "cannot connect to HAProxy runtime API at {self}: {}{also}",
                io_text(e)
            ),
        )
        .detail("socket", &self.text)
    }
}

/// An io error without Rust's "(os error 2)" suffix.
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
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

// ---- polling ------------------------------------------------------------------

/// Poll delays: fixed when `lb.poll_interval` is set; else fast at first (a
/// local drain often ends within a few hundred ms), backing off to 1 s so a
/// long wait does not hammer the LB.
pub(crate) struct Backoff {
    next: Duration,
    fixed: bool,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const LONGEST: Duration = Duration::from_secs(1);

    pub(crate) fn new(fixed: Option<Duration>) -> Self {
        match fixed {
            Some(d) => Self {
                next: d.max(Duration::from_millis(1)),
                fixed: true,
            },
            None => Self {
                next: Self::FIRST,
                fixed: false,
            },
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        if !self.fixed {
            self.next = (self.next * 3 / 2).min(Self::LONGEST);
        }
        d
    }
}

// ---- `show stat` ----------------------------------------------------------------

/// One server's row of `show stat`, the fields rollscript reads.
#[derive(Debug, Clone, Default, PartialEq)]
struct ServerStat {
    backend: String,
    server: String,
    /// `UP`, `UP 1/2`, `DOWN`, `DOWN 1/2`, `DRAIN`, `MAINT`, `NOLB`, `no check`, …
    status: String,
    /// `127.0.0.1:4001`
    addr: String,
    sessions: u64,
    queue: u64,
    total: u64,
    weight: u64,
    http_2xx: u64,
    http_4xx: u64,
    http_5xx: u64,
    response_ms: u64,
    connect_errors: u64,
    response_errors: u64,
    /// `L7OK`, `L4CON`, `L7STS`; `* ` in front while a check runs.
    check_status: String,
    check_code: String,
    /// `Layer4 connection problem`
    check_desc: String,
    /// `Connection refused`, or what the check got back.
    last_chk: String,
}

impl ServerStat {
    /// A check is under way: its fields show the half-done attempt.
    fn check_running(&self) -> bool {
        self.check_status.starts_with("* ")
    }

    fn check_failed(&self) -> bool {
        let s = self.check_status.trim_start_matches("* ");
        !(s.is_empty() || s.starts_with("INI") || s == "UNK" || s.contains("OK"))
    }

    /// `Layer4 connection problem (L4CON: Connection refused)`.
    fn check_text(&self) -> String {
        let status = self.check_status.trim_start_matches("* ");
        if status.is_empty() {
            return "no check has run".into();
        }
        let mut detail = status.to_string();
        if !self.check_code.is_empty() {
            detail.push_str(&format!(" {}", self.check_code));
        }
        if !self.last_chk.is_empty() {
            detail.push_str(&format!(": {}", self.last_chk));
        }
        if self.check_desc.is_empty() {
            detail
        } else {
            format!("{} ({detail})", self.check_desc)
        }
    }
}

/// Server rows of `show stat` CSV; `Err(reply)` when the reply is not CSV
/// (HAProxy's refusal, e.g. `No such proxy.`).
fn parse_show_stat(text: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .ok_or_else(|| text.trim().to_string())?;
    let names = split_csv(header);
    let col = |name: &str| names.iter().position(|n| n == name);
    let (pxname, svname, kind) = match (col("pxname"), col("svname"), col("type")) {
        (Some(p), Some(s), Some(t)) => (p, s, t),
        _ => return Err(format!("unexpected `show stat` header: {header}")),
    };
    let idx: HashMap<&str, usize> = [
        "status",
        "addr",
        "scur",
        "qcur",
        "stot",
        "weight",
        "hrsp_2xx",
        "hrsp_4xx",
        "hrsp_5xx",
        "rtime",
        "econ",
        "eresp",
        "check_status",
        "check_code",
        "check_desc",
        "last_chk",
    ]
    .into_iter()
    .filter_map(|n| col(n).map(|i| (n, i)))
    .collect();
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f = split_csv(line);
        let get = |name: &str| -> String {
            idx.get(name)
                .and_then(|&i| f.get(i))
                .cloned()
                .unwrap_or_default()
        };
        let num = |name: &str| get(name).parse::<u64>().unwrap_or(0);
        // type 2 = server (0 frontend, 1 backend, 3 listener).
        if f.get(kind).map(String::as_str) != Some("2") {
            continue;
        }
        rows.push(ServerStat {
            backend: f.get(pxname).cloned().unwrap_or_default(),
            server: f.get(svname).cloned().unwrap_or_default(),
            status: get("status"),
            addr: get("addr"),
            sessions: num("scur"),
            queue: num("qcur"),
            total: num("stot"),
            weight: num("weight"),
            http_2xx: num("hrsp_2xx"),
            http_4xx: num("hrsp_4xx"),
            http_5xx: num("hrsp_5xx"),
            response_ms: num("rtime"),
            connect_errors: num("econ"),
            response_errors: num("eresp"),
            check_status: get("check_status"),
            check_code: get("check_code"),
            check_desc: get("check_desc"),
            last_chk: get("last_chk"),
        });
    }
    Ok(rows)
}

/// HAProxy quotes a CSV field (`"…"`, `""` for a quote) when it holds a comma.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// The status words of `show stat`, reduced to what rollscript acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// `UP`, `no check`: full health.
    Up,
    /// `UP 1/2`: up, but one failed check from DOWN (also right after `ready`).
    Falling,
    /// `DOWN 1/2`: checks passing, not yet `rise` of them.
    Rising,
    Down,
    Drain,
    Maint,
    Other,
}

impl Status {
    fn of(s: &str) -> Self {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            ["UP"] | ["no", "check"] | ["UP", "(agent)"] => Self::Up,
            ["UP", n] if n.contains('/') => Self::Falling,
            ["DOWN", n] if n.contains('/') => Self::Rising,
            ["DOWN", ..] => Self::Down,
            ["DRAIN", ..] | ["NOLB", ..] => Self::Drain,
            ["MAINT", ..] => Self::Maint,
            _ => Self::Other,
        }
    }
}

/// `UP`-ish and `no check` servers get new sessions; DRAIN/NOLB/MAINT/DOWN do not.
fn takes_new_traffic(status: &str) -> bool {
    matches!(Status::of(status), Status::Up | Status::Falling)
}

fn member_state(status: &str) -> MemberState {
    match Status::of(status) {
        Status::Up | Status::Falling => MemberState::InService,
        Status::Rising => MemberState::Starting,
        Status::Down => MemberState::Unhealthy,
        Status::Drain => MemberState::Draining,
        Status::Maint => MemberState::OutOfService,
        Status::Other => MemberState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo
be1,web-1,0,0,2,3,,17,0,0,,0,,1,0,0,0,UP,7,1,0,1,1,1,1,,1,3,1,,0,,2,0,,0,L7OK,200,2,0,15,0,1,1,0,,,,0,0,0,,,,,-1,,,0,0,12,0,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:18081,,http,
be1,web-2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,1,1,,1,3,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,\"Connection refused, twice\",,0,0,0,0,,,,Layer4 connection problem,,2,2,0,,,,127.0.0.1:18082,,http,
be1,BACKEND,0,0,2,3,,17,0,0,,0,,1,0,0,0,UP,8,1,0,1,1,1,1,,1,3,0,,0,,1,0,,0,,,,0,15,0,1,1,0,,,,0,0,0,,,,,-1,,,0,0,12,0,,,,,,,,,,,,,,http,roundrobin
";

    #[test]
    fn show_stat_rows_are_servers_with_their_numbers() {
        let rows = parse_show_stat(STAT).unwrap();
        assert_eq!(rows.len(), 2, "the BACKEND row is not a server");
        let web1 = &rows[0];
        assert_eq!(
            (
                web1.backend.as_str(),
                web1.server.as_str(),
                web1.status.as_str()
            ),
            ("be1", "web-1", "UP")
        );
        assert_eq!(web1.addr, "127.0.0.1:18081");
        assert_eq!((web1.sessions, web1.total, web1.weight), (2, 17, 7));
        assert_eq!((web1.http_2xx, web1.http_4xx, web1.http_5xx), (15, 1, 1));
        assert_eq!((web1.response_ms, web1.connect_errors), (12, 1));
        assert!(!web1.check_failed());
        let web2 = &rows[1];
        assert!(web2.check_failed());
        assert_eq!(
            web2.check_text(),
            "Layer4 connection problem (L4CON: Connection refused, twice)"
        );
    }

    #[test]
    fn a_refusal_is_not_csv() {
        assert_eq!(
            parse_show_stat("No such proxy.\n\n"),
            Err("No such proxy.".into())
        );
    }

    #[test]
    fn statuses_map_to_member_states() {
        for (status, state) in [
            ("UP", MemberState::InService),
            ("UP 1/2", MemberState::InService),
            ("no check", MemberState::InService),
            ("DOWN 1/2", MemberState::Starting),
            ("DOWN", MemberState::Unhealthy),
            ("DRAIN", MemberState::Draining),
            ("NOLB", MemberState::Draining),
            ("MAINT", MemberState::OutOfService),
            ("MAINT (via be/x)", MemberState::OutOfService),
        ] {
            assert_eq!(member_state(status), state, "{status}");
        }
        assert!(takes_new_traffic("UP 1/2"));
        assert!(!takes_new_traffic("DRAIN"));
    }

    #[test]
    fn commands_refuse_names_that_would_smuggle_a_second_command() {
        assert_eq!(
            set_state_cmd("credit_radar", "web-1", AdminState::Drain).unwrap(),
            "set server credit_radar/web-1 state drain"
        );
        assert_eq!(
            set_weight_cmd("be", "web-1", "10").unwrap(),
            "set server be/web-1 weight 10"
        );
        for bad in [
            "web-1; shutdown sessions server be/web-2",
            "a b",
            "x\nshow info",
            "",
        ] {
            let e = ActionError::from(set_state_cmd("be", bad, AdminState::Ready).unwrap_err());
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn socket_endpoints() {
        assert_eq!(
            Endpoint::parse("/run/haproxy/admin.sock"),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("admin.sock"),
            Endpoint::Unix("admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:9999"),
            Endpoint::Tcp("127.0.0.1:9999".into())
        );
        assert_eq!(
            Endpoint::parse("ipv4@10.0.0.1:9999"),
            Endpoint::Tcp("10.0.0.1:9999".into())
        );
        assert_eq!(Endpoint::parse("unix@/a:1"), Endpoint::Unix("/a:1".into()));
    }

    #[test]
    fn backoff_starts_fast_and_caps_at_a_second() {
        let mut b = Backoff::new(None);
        let delays: Vec<Duration> = (0..20).map(|_| b.next()).collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(1));
        let mut fixed = Backoff::new(Some(Duration::from_millis(200)));
        assert_eq!(
            (fixed.next(), fixed.next()),
            (Duration::from_millis(200), Duration::from_millis(200))
        );
    }
}

#[cfg(test)]
mod stat_properties {
    use super::parse_show_stat;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The `show stat` parser meets whatever a socket returns (truncated
        /// output, an error text, garbage) with an error, never a panic.
        #[test]
        fn arbitrary_replies_never_panic(text in "\\PC{0,600}") {
            let _ = parse_show_stat(&text);
        }

        /// Real-looking CSV with random fields and truncation never panics either.
        #[test]
        fn truncated_csv_never_panics(cut in 0usize..400, scur in 0u32..1000) {
            let full = format!(
                "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
                 be,web-1,0,0,{scur},5,,100,0,0,,0,,0,0,0,0,UP,1\n"
            );
            let cut = cut.min(full.len());
            let _ = parse_show_stat(&full[..cut]);
        }
    }
}
