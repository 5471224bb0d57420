//! `lb.kind = "nginx"`: membership and weights by rewriting the include file
//! that holds one `upstream NAME { … }` block, then `test_command` and
//! `reload_command`; drains by waiting for nginx's old worker processes.
//!
//! Owns that file. The membership state lives in it (`down`, `weight=`), and
//! every change reads it back first, so separate runs agree; it is written
//! atomically (temp file + rename) and restored when nginx rejects it. Other
//! directives in the block and other server parameters are kept.
//!
//! Why waiting for workers is the drain: on reload the master starts new
//! workers with the new upstream, then (≈100 ms later) tells the old ones to
//! stop accepting and exit once their in-flight requests are done. So
//! `deregister` returns when every old worker has stopped accepting (no new
//! request can reach the `down` server), and `wait_drained` when they are
//! gone (every request that could still reach it has finished).
//!
//! Files and commands go to this machine, or over ssh to the instance named
//! by `lb.run_on` (as small shell scripts that print nothing while waiting).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::warn;

use super::haproxy::Backoff;
use crate::config::{format_duration, host_for_url, Instance, Inventory, LbBackend};
use crate::primitives::{
    sh_quote, ActionError, ActionResult, Cmd, DrainReport, ErrorKind, ExecOutput, LbOp,
    LoadBalancer, MemberState, Transport,
};

/// How long a reload may take to reach the workers. The master sleeps
/// 100 ms between starting new workers and stopping old ones; a big config
/// (many certificates) takes seconds to load. Past this the master has most
/// likely refused the new config (a failed bind shows only in its error log).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NginxLb {
    inv: Arc<Inventory>,
    host: NginxHost,
    file: PathBuf,
    upstream: String,
    test_command: String,
    reload_command: String,
    /// One read-modify-write-reload at a time within a run (parallel batches).
    edit: tokio::sync::Mutex<()>,
    /// Instance name → workers that were serving before the reload that took
    /// it out; any of them may still be proxying to it. std Mutex: nothing is
    /// awaited while it is held.
    pending: Mutex<HashMap<String, BTreeSet<u32>>>,
}

impl NginxLb {
    /// Touches nothing: the first call does.
    ///
    /// # Panics
    /// When the inventory's `lb.kind` is not `nginx` (`providers::build` only
    /// calls this for nginx inventories).
    pub fn new(inv: Arc<Inventory>, ssh: Arc<dyn Transport>, local: Arc<dyn Transport>) -> Self {
        let LbBackend::Nginx {
            upstream_file,
            upstream,
            test_command,
            reload_command,
            run_on,
        } = &inv.lb.backend
        else {
            panic!("NginxLb needs lb.kind = \"nginx\"");
        };
        let host = match run_on.as_deref().and_then(|n| inv.instance(n)) {
            Some(lb_host) => NginxHost::Remote {
                ssh,
                on: lb_host.clone(),
            },
            None => NginxHost::Local {
                local,
                on: Instance::local(),
            },
        };
        Self {
            host,
            file: upstream_file.clone(),
            upstream: upstream.clone(),
            test_command: test_command.clone(),
            reload_command: reload_command.clone(),
            edit: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            inv,
        }
    }

    /// The `server` address of `inst`: `host:port`, port = its traffic port.
    fn addr(&self, inst: &Instance) -> String {
        format!(
            "{}:{}",
            host_for_url(&inst.host),
            self.inv.traffic_port(inst)
        )
    }

    fn who(&self) -> String {
        match &self.host {
            NginxHost::Local { .. } => "nginx".into(),
            NginxHost::Remote { on, .. } => format!("nginx on {}", on.name),
        }
    }

    /// The upstream as it is now: the file's state for known servers, the
    /// inventory's defaults for new ones. None when the file does not exist.
    async fn current(&self) -> ActionResult<(Option<String>, Upstream)> {
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
    async fn read_state(&self) -> ActionResult<Option<Upstream>> {
        match self.current().await? {
            (None, _) => Ok(None),
            (Some(_), up) => Ok(Some(up)),
        }
    }

    /// Applies `change` to the upstream, writes it, tests, reloads, and waits
    /// until no old worker accepts connections any more. Returns the workers
    /// that were serving before (they may still be finishing requests).
    /// Whatever fails, the file is put back as it was.
    async fn apply(
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

    fn timeout(&self) -> Duration {
        self.inv.ssh.command_timeout
    }

    /// nginx's refusal, as the operator needs it: its `[emerg]` line first.
    fn rejected(&self, what: &str, command: &str, out: &ExecOutput) -> ActionError {
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
    async fn restore(&self, before: Option<&str>, mut e: ActionError, reload: bool) -> ActionError {
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

    fn take_pending(&self, inst: &Instance) -> Option<BTreeSet<u32>> {
        self.pending.lock().unwrap().remove(&inst.name)
    }

    fn add_pending(&self, name: &str, workers: &BTreeSet<u32>) {
        self.pending
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .extend(workers);
    }

    fn pool_addrs(&self, pool: &str) -> (Vec<String>, Vec<String>) {
        let (target, others): (Vec<&Instance>, Vec<&Instance>) = self
            .inv
            .instances
            .iter()
            .filter(|i| i.pool.is_some())
            .partition(|i| i.pool.as_deref() == Some(pool));
        (
            target.iter().map(|i| self.addr(i)).collect(),
            others.iter().map(|i| self.addr(i)).collect(),
        )
    }

    fn server_missing(&self, inst: &Instance) -> ActionError {
        ActionError::new(
            ErrorKind::Lb,
            format!(
                "{} has no server {} in upstream {}",
                self.file.display(),
                self.addr(inst),
                self.upstream
            ),
        )
        .host(&inst.name)
    }
}

#[async_trait]
impl LoadBalancer for NginxLb {
    fn kind(&self) -> &'static str {
        "nginx"
    }

    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        let addr = self.addr(inst);
        let what = match op {
            LbOp::Deregister => format!("mark {addr} down, test, reload"),
            LbOp::WaitDrained { timeout } => format!(
                "wait for old workers to finish (≤ {})",
                format_duration(timeout)
            ),
            LbOp::Register => format!("mark {addr} up, test, reload"),
            LbOp::WaitInService { .. } => {
                format!("check {addr} is up in upstream {}", self.upstream)
            }
            LbOp::SetWeight(w) => format!("set {addr} weight={w}, test, reload"),
        };
        format!("{}: {what}", self.who())
    }

    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        let addr = self.addr(inst);
        let old = self
            .apply(|up| up.server(&addr).map(|s| s.down = true))
            .await
            .map_err(|e| e.host(&inst.name))?;
        self.add_pending(&inst.name, &old);
        Ok(())
    }

    /// Waits for the workers that served before the `down` reload to exit.
    /// In a run that did not deregister `inst` itself (e.g. after a crash),
    /// waits for every worker nginx is shutting down now.
    async fn wait_drained(&self, inst: &Instance, timeout: Duration) -> ActionResult<DrainReport> {
        let started = Instant::now();
        let old = match self.take_pending(inst) {
            Some(old) => old,
            None => {
                let procs = self
                    .host
                    .processes()
                    .await
                    .map_err(|e| e.host(&inst.name))?;
                let master = find_master(&procs, &self.reload_command, &self.test_command)
                    .map_err(|m| ActionError::new(ErrorKind::Lb, m).host(&inst.name))?;
                workers_of(&procs, master)
                    .filter(|p| p.shutting_down())
                    .map(|p| p.pid)
                    .collect()
            }
        };
        let outcome = self
            .host
            .wait_for(&old, Until::Gone, timeout, self.inv.lb.poll_interval)
            .await
            .map_err(|e| e.host(&inst.name))?;
        match outcome {
            Ok(()) => Ok(DrainReport {
                waited: started.elapsed(),
                connections_at_start: None,
                configured_delay: None,
            }),
            Err(still) => {
                // Kept, so a retry waits for the same workers.
                self.add_pending(&inst.name, &still.iter().copied().collect());
                let message = format!(
                    "{} old nginx worker(s) (pids {}) still finishing requests after {}; {} is marked down, so they get no new ones. Raise lb.drain_timeout, or set nginx's worker_shutdown_timeout for long-lived connections (websockets, streaming)",
                    still.len(),
                    join(&still),
                    format_duration(timeout),
                    self.addr(inst)
                );
                Err(ActionError::new(ErrorKind::DrainTimeout, message)
                    .host(&inst.name)
                    .detail("workers", still.len()))
            }
        }
    }

    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        let addr = self.addr(inst);
        self.apply(|up| up.server(&addr).map(|s| s.down = false))
            .await
            .map_err(|e| e.host(&inst.name))?;
        self.take_pending(inst);
        Ok(())
    }

    /// nginx (open source) has no active health checks: in service means up
    /// in the upstream nginx now runs (`register` waited for the reload).
    async fn wait_in_service(&self, inst: &Instance, _timeout: Duration) -> ActionResult<Duration> {
        let started = Instant::now();
        let up = self.read_state().await.map_err(|e| e.host(&inst.name))?;
        match up.as_ref().and_then(|u| u.find(&self.addr(inst))) {
            Some(s) if !s.down => Ok(started.elapsed()),
            Some(_) => Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "{} is marked down in {}: register(inst) first",
                    self.addr(inst),
                    self.file.display()
                ),
            )
            .host(&inst.name)),
            None => Err(self.server_missing(inst)),
        }
    }

    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        self.set_weights(&[(inst, Some(weight))])
            .await
            .map_err(|e| e.host(&inst.name))
    }

    fn supports_weights(&self) -> bool {
        true
    }

    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        self.set_weights(&[(inst, None)]).await
    }

    /// One rewrite and one reload for all of `changes`; `None` is the
    /// inventory's weight (or none, nginx's default of 1).
    async fn set_weights(&self, changes: &[(&Instance, Option<u32>)]) -> ActionResult<()> {
        if let Some((inst, _)) = changes.iter().find(|(_, w)| *w == Some(0)) {
            const NO_ZERO: &str = "nginx has no weight 0 (`weight=` must be 1 or more): use deregister(inst) to take it out of rotation";
            return Err(ActionError::new(ErrorKind::InvalidArgument, NO_ZERO).host(&inst.name));
        }
        let targets: Vec<(String, Option<u32>)> = changes
            .iter()
            .map(|(inst, w)| (self.addr(inst), w.or(inst.weight)))
            .collect();
        self.apply(|up| {
            for (addr, w) in &targets {
                up.server(addr)?.weight = *w;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        let up = self.read_state().await.map_err(|e| e.host(&inst.name))?;
        Ok(match up.as_ref().and_then(|u| u.find(&self.addr(inst))) {
            Some(s) if s.down => MemberState::OutOfService,
            Some(_) => MemberState::InService,
            None => MemberState::Unknown,
        })
    }

    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        let Some(up) = self.read_state().await? else {
            return Ok(0);
        };
        Ok(fleet
            .iter()
            .filter(|i| up.find(&self.addr(i)).is_some_and(|s| !s.down))
            .count())
    }

    /// Rewrites the upstream so only `pool`'s servers are up, in one reload.
    /// The other pools keep running (marked down) for an instant switch back.
    async fn switch_pool(&self, pool: &str) -> ActionResult<()> {
        let (target, others) = self.pool_addrs(pool);
        if target.is_empty() {
            return Err(ActionError::new(
                ErrorKind::InvalidArgument,
                format!("no instance has pool = {pool:?}"),
            ));
        }
        let old = self
            .apply(|up| {
                for (addrs, down) in [(&target, false), (&others, true)] {
                    for a in addrs {
                        up.server(a)?.down = down;
                    }
                }
                Ok(())
            })
            .await?;
        for inst in &self.inv.instances {
            match inst.pool.as_deref() {
                Some(p) if p == pool => {
                    self.take_pending(inst);
                }
                Some(_) => self.add_pending(&inst.name, &old),
                None => {}
            }
        }
        Ok(())
    }

    fn describe_switch(&self, pool: &str) -> String {
        let (target, others) = self.pool_addrs(pool);
        format!(
            "{}: upstream {}: up {} (pool {pool}), down {}, test, reload",
            self.who(),
            self.upstream,
            target.join(", "),
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            }
        )
    }
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- the upstream file ------------------------------------------------------------

/// The `upstream NAME { … }` block rollscript owns.
#[derive(Debug, Clone, PartialEq)]
struct Upstream {
    name: String,
    /// Directives other than `server` (`least_conn`, `keepalive 16`), kept.
    directives: Vec<String>,
    servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq)]
struct Server {
    addr: String,
    weight: Option<u32>,
    down: bool,
    /// Other parameters (`max_fails=3`, `backup`), kept as written.
    other: Vec<String>,
}

impl Upstream {
    /// The block named `name` in `text`; None when `text` holds no
    /// directives at all (a new, empty file).
    fn parse(text: &str, name: &str) -> Result<Option<Upstream>, String> {
        let tokens = tokenize(text);
        if tokens.is_empty() {
            return Ok(None);
        }
        let head = ["upstream", name, "{"];
        if tokens.len() < 4 || tokens[..3] != head {
            return Err(format!(
                "expected the file to hold only `upstream {name} {{ … }}`, found `{}`",
                tokens[..tokens.len().min(3)].join(" ")
            ));
        }
        let mut up = Upstream {
            name: name.to_string(),
            directives: Vec::new(),
            servers: Vec::new(),
        };
        let mut stmt: Vec<&str> = Vec::new();
        let mut rest = tokens[3..].iter();
        loop {
            match rest.next().map(String::as_str) {
                None => return Err(format!("`upstream {name} {{` is never closed")),
                Some("}") if stmt.is_empty() => break,
                Some(";") => {
                    up.statement(&stmt)?;
                    stmt.clear();
                }
                Some(t @ ("{" | "}")) => {
                    return Err(format!("unexpected `{t}` in upstream {name}"))
                }
                Some(t) => stmt.push(t),
            }
        }
        if let Some(extra) = rest.next() {
            return Err(format!("found `{extra}` after the upstream {name} block"));
        }
        Ok(Some(up))
    }

    fn statement(&mut self, words: &[&str]) -> Result<(), String> {
        match words {
            [] => Ok(()),
            ["server", addr, params @ ..] => {
                let mut s = Server {
                    addr: addr.to_string(),
                    weight: None,
                    down: false,
                    other: Vec::new(),
                };
                for p in params {
                    if *p == "down" {
                        s.down = true;
                    } else if let Some(w) = p.strip_prefix("weight=") {
                        s.weight = Some(
                            w.parse()
                                .map_err(|_| format!("bad weight in `server {addr} {p}`"))?,
                        );
                    } else {
                        s.other.push(p.to_string());
                    }
                }
                self.servers.push(s);
                Ok(())
            }
            ["server"] => Err("`server` without an address".into()),
            _ => {
                self.directives.push(words.join(" "));
                Ok(())
            }
        }
    }

    /// One server per inventory instance, in inventory order: state from the
    /// file when it lists the address, else up with the inventory's weight.
    /// Servers no longer in the inventory are dropped (rollscript owns the
    /// file, and sending traffic to a host removed from the fleet is worse).
    fn reconcile(
        file: Option<Upstream>,
        name: &str,
        inv: &Inventory,
        addr_of: impl Fn(&Instance) -> String,
    ) -> Upstream {
        let (directives, mut known) = match file {
            Some(f) => (
                f.directives,
                f.servers
                    .into_iter()
                    .map(|s| (s.addr.clone(), s))
                    .collect::<HashMap<_, _>>(),
            ),
            None => (Vec::new(), HashMap::new()),
        };
        let servers = inv
            .instances
            .iter()
            .map(|i| {
                let addr = addr_of(i);
                known.remove(&addr).unwrap_or(Server {
                    addr,
                    weight: i.weight,
                    down: false,
                    other: Vec::new(),
                })
            })
            .collect();
        for gone in known.keys() {
            warn!("nginx upstream {name}: dropping server {gone}, which is not in the inventory");
        }
        Upstream {
            name: name.to_string(),
            directives,
            servers,
        }
    }

    fn find(&self, addr: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// Every inventory instance has a server after `reconcile`; only an
    /// instance from elsewhere has none.
    fn server(&mut self, addr: &str) -> Result<&mut Server, String> {
        let name = &self.name;
        self.servers
            .iter_mut()
            .find(|s| s.addr == addr)
            .ok_or_else(|| format!("upstream {name} has no server {addr}"))
    }

    fn render(&self, inventory: &Path) -> String {
        let mut out = format!(
            "# Managed by rollscript (lb.upstream_file of {}).\n\
             # Rewritten on deregister, register, set_weight and switch_pool: the\n\
             # `down` and `weight=` flags below are the live membership. Other\n\
             # directives and server parameters are kept.\n\
             upstream {} {{\n",
            inventory.display(),
            self.name
        );
        for d in &self.directives {
            out.push_str(&format!("    {d};\n"));
        }
        for s in &self.servers {
            out.push_str("    server ");
            out.push_str(&s.addr);
            if let Some(w) = s.weight {
                out.push_str(&format!(" weight={w}"));
            }
            for p in &s.other {
                out.push(' ');
                out.push_str(p);
            }
            if s.down {
                out.push_str(" down");
            }
            out.push_str(";\n");
        }
        out.push_str("}\n");
        out
    }
}

/// nginx's config words, with `{`, `}` and `;` as words of their own and
/// `#` comments dropped.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut word = String::new();
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '{' | '}' | ';') {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                if !c.is_whitespace() {
                    tokens.push(c.to_string());
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
    }
    tokens
}

// ---- nginx's processes ------------------------------------------------------------

/// An nginx process: `nginx: master process …`, `nginx: worker process`, …
#[derive(Debug, Clone, PartialEq)]
struct NginxProc {
    pid: u32,
    ppid: u32,
    title: String,
}

impl NginxProc {
    /// A worker, or a child just forked that still carries its master's
    /// title (it becomes a worker). Cache manager and loader serve nobody.
    fn serves(&self) -> bool {
        !self.title.starts_with("nginx: cache")
    }

    fn shutting_down(&self) -> bool {
        self.title.contains("shutting down")
    }
}

/// The processes of `master` that accept or serve connections.
fn workers_of(procs: &[NginxProc], master: u32) -> impl Iterator<Item = &NginxProc> {
    procs.iter().filter(move |p| p.ppid == master && p.serves())
}

/// The value of `-c`/`-p` in an nginx command line (`-c FILE` or `-cFILE`).
fn flag<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if *w == name {
            return it.next().map(|v| v.trim_matches(['\'', '"']));
        }
        if let Some(v) = w.strip_prefix(name) {
            if !v.is_empty() && !name.is_empty() {
                return Some(v.trim_matches(['\'', '"']));
            }
        }
    }
    None
}

/// The master `reload_command` signals: the one started with the same `-c`
/// and `-p` as the command, or the only one there is.
fn find_master(procs: &[NginxProc], reload: &str, test: &str) -> Result<u32, String> {
    let titled: Vec<&NginxProc> = procs
        .iter()
        .filter(|p| p.title.starts_with("nginx: master process"))
        .collect();
    // A worker the master has just forked still carries its title for a
    // moment: a "master" whose parent is a master is not one.
    let masters: Vec<&NginxProc> = titled
        .iter()
        .copied()
        .filter(|p| !titled.iter().any(|m| m.pid == p.ppid))
        .collect();
    let r: Vec<&str> = reload.split_whitespace().collect();
    let t: Vec<&str> = test.split_whitespace().collect();
    let want = |f: &str| flag(&r, f).or_else(|| flag(&t, f));
    let (want_c, want_p) = (want("-c"), want("-p"));
    let matching: Vec<&&NginxProc> = masters
        .iter()
        .filter(|m| {
            let w: Vec<&str> = m.title.split_whitespace().collect();
            flag(&w, "-c") == want_c && flag(&w, "-p") == want_p
        })
        .collect();
    match (matching.as_slice(), masters.as_slice()) {
        ([m], _) => Ok(m.pid),
        ([], [m]) => Ok(m.pid),
        ([], []) => Err("no nginx master process is running: start nginx before deploying".into()),
        (_, all) => Err(format!(
            "cannot tell which nginx master `{reload}` reloads among {}: put the same `-c FILE` (and `-p DIR`) nginx was started with in lb.reload_command",
            all.iter()
                .map(|m| format!("pid {} ({})", m.pid, m.title))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn parse_procs(text: &str) -> Vec<NginxProc> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.trim().splitn(3, ' ');
            let pid = it.next()?.parse().ok()?;
            let ppid = it.next()?.parse().ok()?;
            let title = it.next()?.trim().to_string();
            Some(NginxProc { pid, ppid, title })
        })
        .collect()
}

// ---- where nginx runs -------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The process has exited.
    Gone,
    /// The process has exited or is shutting down (no longer accepting).
    NotAccepting,
}

/// This machine (files and /proc read directly, commands through the local
/// transport) or the `run_on` host (everything as shell over ssh).
enum NginxHost {
    Local {
        local: Arc<dyn Transport>,
        on: Instance,
    },
    Remote {
        ssh: Arc<dyn Transport>,
        on: Instance,
    },
}

/// Lists nginx processes as `pid ppid title` from /proc, reading only the
/// few processes whose title starts with `nginx: `.
const LIST_NGINX: &str = r#"cd /proc && for f in $(grep -las '^nginx: ' [0-9]*/cmdline); do p=${f%/cmdline}; pp=; while read -r k v _; do if [ "$k" = PPid: ]; then pp=$v; break; fi; done 2>/dev/null < "$p/status"; t=$(tr '\0' ' ' < "$f" 2>/dev/null); [ -n "$pp" ] && printf '%s %s %s\n' "$p" "$pp" "$t"; done; true"#;

impl NginxHost {
    async fn exec(&self, cmd: &Cmd, timeout: Duration) -> ActionResult<ExecOutput> {
        match self {
            Self::Local { local, on } => local.exec(on, cmd, timeout).await,
            Self::Remote { ssh, on } => ssh.exec(on, cmd, timeout).await,
        }
    }

    /// Runs a helper script; non-zero exit is an error naming it.
    async fn script(&self, line: String, what: &str) -> ActionResult<String> {
        let cmd = Cmd::Shell(line);
        let out = self.exec(&cmd, Duration::from_secs(60)).await?;
        if out.status != 0 {
            return Err(ActionError::new(ErrorKind::Lb, format!("cannot {what}"))
                .command(cmd.to_shell())
                .status(out.status)
                .stderr_tail(&out.stderr));
        }
        Ok(out.stdout)
    }

    async fn read(&self, path: &Path) -> ActionResult<Option<String>> {
        let fail = |e: String| {
            ActionError::new(
                ErrorKind::Lb,
                format!("cannot read {} (lb.upstream_file): {e}", path.display()),
            )
        };
        match self {
            Self::Local { .. } => match tokio::fs::read_to_string(path).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(fail(e.to_string())),
            },
            Self::Remote { .. } => {
                let p = sh_quote(&path.to_string_lossy());
                // The marker tells a missing file from an empty one.
                let out = self
                    .script(
                        format!("if [ -e {p} ]; then echo present && cat -- {p}; fi"),
                        &format!("read {}", path.display()),
                    )
                    .await?;
                Ok(out.strip_prefix("present\n").map(str::to_string))
            }
        }
    }

    /// Writes beside the file, then renames: nginx never reads half a file.
    async fn write(&self, path: &Path, text: &str) -> ActionResult<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".rollscript-tmp");
        let tmp = PathBuf::from(tmp);
        match self {
            Self::Local { .. } => {
                let done = async {
                    tokio::fs::write(&tmp, text).await?;
                    tokio::fs::rename(&tmp, path).await
                };
                done.await.map_err(|e| {
                    ActionError::new(
                        ErrorKind::Lb,
                        format!("cannot write {} (lb.upstream_file): {e}", path.display()),
                    )
                })
            }
            Self::Remote { .. } => {
                let (t, p) = (
                    sh_quote(&tmp.to_string_lossy()),
                    sh_quote(&path.to_string_lossy()),
                );
                self.script(
                    format!("printf '%s' {} > {t} && mv -f -- {t} {p}", sh_quote(text)),
                    &format!("write {}", path.display()),
                )
                .await
                .map(drop)
            }
        }
    }

    async fn remove(&self, path: &Path) -> ActionResult<()> {
        match self {
            Self::Local { .. } => match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ActionError::new(
                    ErrorKind::Lb,
                    format!("cannot remove {}: {e}", path.display()),
                )),
                _ => Ok(()),
            },
            Self::Remote { .. } => self
                .script(
                    format!("rm -f -- {}", sh_quote(&path.to_string_lossy())),
                    &format!("remove {}", path.display()),
                )
                .await
                .map(drop),
        }
    }

    async fn processes(&self) -> ActionResult<Vec<NginxProc>> {
        match self {
            Self::Local { .. } => tokio::task::spawn_blocking(local_nginx_procs)
                .await
                .map_err(|e| ActionError::new(ErrorKind::Lb, format!("listing processes: {e}")))?
                .map_err(|e| {
                    ActionError::new(
                        ErrorKind::Lb,
                        format!("cannot list processes in /proc: {e}"),
                    )
                }),
            Self::Remote { .. } => Ok(parse_procs(
                &self
                    .script(LIST_NGINX.to_string(), "list nginx processes")
                    .await?,
            )),
        }
    }

    /// Waits until every pid in `pids` is gone (or no longer accepting).
    /// `Ok(Err(survivors))` when `timeout` passed first.
    async fn wait_for(
        &self,
        pids: &BTreeSet<u32>,
        until: Until,
        timeout: Duration,
        poll_interval: Option<Duration>,
    ) -> ActionResult<Result<(), Vec<u32>>> {
        if pids.is_empty() {
            return Ok(Ok(()));
        }
        let survivors = |procs: &[NginxProc]| -> Vec<u32> {
            pids.iter()
                .copied()
                .filter(|pid| {
                    procs.iter().any(|p| {
                        p.pid == *pid && p.serves() && (until == Until::Gone || !p.shutting_down())
                    })
                })
                .collect()
        };
        match self {
            Self::Local { .. } => {
                let deadline = Instant::now() + timeout;
                let mut poll = Backoff::new(poll_interval);
                loop {
                    let still = survivors(&self.processes().await?);
                    if still.is_empty() {
                        return Ok(Ok(()));
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(Err(still));
                    }
                    tokio::time::sleep(poll.next().min(deadline - now)).await;
                }
            }
            Self::Remote { .. } => {
                // One quiet command for the whole wait, not one per poll.
                let nap = poll_interval
                    .unwrap_or(Duration::from_millis(100))
                    .as_secs_f64();
                let busy = match until {
                    Until::Gone => r#"grep -qas '^nginx: [mw]' "/proc/$p/cmdline""#,
                    Until::NotAccepting => {
                        r#"grep -qas '^nginx: [mw]' "/proc/$p/cmdline" && ! grep -qas 'shutting down' "/proc/$p/cmdline""#
                    }
                };
                let list = pids
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                let line =
                    format!("for p in {list}; do while {busy}; do sleep {nap:.3}; done; done");
                match self.exec(&Cmd::Shell(line), timeout).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if e.kind == ErrorKind::Timeout => {
                        let still = survivors(&self.processes().await?);
                        Ok(if still.is_empty() { Ok(()) } else { Err(still) })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// nginx processes of this machine, from /proc.
fn local_nginx_procs() -> std::io::Result<Vec<NginxProc>> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read: a vanished one is skipped.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !raw.starts_with(b"nginx: ") {
            continue;
        }
        let title = String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string();
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let Some(ppid) = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
        else {
            continue;
        };
        procs.push(NginxProc { pid, ppid, title });
    }
    Ok(procs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# a comment\nupstream backend {\n    least_conn;\n    server 10.0.1.10:4000 max_fails=3;\n    server 10.0.1.11:4000 weight=5 down; # drained\n    server 10.0.9.9:4000;\n}\n";

    fn inv() -> Inventory {
        let text = "[app]\nname = \"a\"\n[lb]\nkind = \"nginx\"\nupstream_file = \"up.conf\"\n\
            [[instances]]\nname = \"web-1\"\nhost = \"10.0.1.10\"\nport = 4000\npool = \"blue\"\n\
            [[instances]]\nname = \"web-2\"\nhost = \"10.0.1.11\"\nport = 4000\npool = \"blue\"\n\
            [[instances]]\nname = \"web-3\"\nhost = \"10.0.1.12\"\nport = 4000\nweight = 3\npool = \"green\"\n";
        Inventory::parse(Path::new("/srv/rollscript.toml"), text).unwrap()
    }

    fn addr(i: &Instance) -> String {
        format!("{}:{}", i.host, i.port.unwrap())
    }

    #[test]
    fn the_file_is_the_membership_state_and_keeps_what_it_does_not_manage() {
        let parsed = Upstream::parse(FILE, "backend").unwrap().unwrap();
        assert_eq!(parsed.directives, ["least_conn"]);
        assert_eq!(parsed.servers.len(), 3);
        assert!(parsed.servers[1].down);
        assert_eq!(parsed.servers[1].weight, Some(5));

        let up = Upstream::reconcile(Some(parsed), "backend", &inv(), addr);
        let text = up.render(Path::new("/srv/rollscript.toml"));
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "upstream backend {",
                "    least_conn;",
                "    server 10.0.1.10:4000 max_fails=3;",
                "    server 10.0.1.11:4000 weight=5 down;",
                "    server 10.0.1.12:4000 weight=3;",
                "}",
            ],
            "10.0.9.9 left the inventory; web-3 is new, with its inventory weight"
        );
        let again = Upstream::parse(&text, "backend").unwrap().unwrap();
        assert_eq!(again, up, "render and parse agree");
    }

    #[test]
    fn a_file_that_is_not_just_our_block_is_refused() {
        assert_eq!(Upstream::parse("\n# nothing yet\n", "backend"), Ok(None));
        for bad in [
            "upstream other { server a:1; }",
            "upstream backend { server a:1; } server { }",
            "upstream backend { server a:1;",
            "http { upstream backend { } }",
        ] {
            assert!(Upstream::parse(bad, "backend").is_err(), "{bad}");
        }
    }

    fn p(pid: u32, ppid: u32, title: &str) -> NginxProc {
        NginxProc {
            pid,
            ppid,
            title: title.into(),
        }
    }

    #[test]
    fn the_master_is_the_one_the_reload_command_points_at() {
        let procs = vec![
            p(
                10,
                1,
                "nginx: master process /usr/sbin/nginx -p /a/ -c /a/nginx.conf",
            ),
            p(11, 10, "nginx: worker process"),
            p(
                20,
                1,
                "nginx: master process /usr/sbin/nginx -p /b/ -c /b/nginx.conf",
            ),
            p(21, 20, "nginx: worker process is shutting down"),
            p(22, 20, "nginx: worker process"),
            p(
                23,
                20,
                "nginx: master process /usr/sbin/nginx -p /b/ -c /b/nginx.conf",
            ),
        ];
        let reload = "nginx -p /b/ -c /b/nginx.conf -s reload";
        assert_eq!(find_master(&procs, reload, "nginx -t"), Ok(20));
        let w: Vec<u32> = workers_of(&procs, 20).map(|p| p.pid).collect();
        assert_eq!(w, [21, 22, 23], "23 was just forked: a worker-to-be");
        assert!(find_master(&procs, "systemctl reload nginx", "nginx -t").is_err());
        assert_eq!(
            find_master(&procs[..2], "systemctl reload nginx", "nginx -t"),
            Ok(10),
            "the only master"
        );
        assert!(find_master(&[], "nginx -s reload", "nginx -t").is_err());
    }

    #[test]
    fn process_listing_lines_parse() {
        let procs =
            parse_procs("10 1 nginx: master process nginx -c /x\n11 10 nginx: worker process\n\n");
        assert_eq!(procs[1], p(11, 10, "nginx: worker process"));
        assert_eq!(procs[0].title, "nginx: master process nginx -c /x");
    }
}
