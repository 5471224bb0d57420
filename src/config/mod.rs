//! `rollscript.toml` → a validated [`Inventory`].
//!
//! Parsing happens once, here. Below this module every value is typed
//! (`Duration`, [`CountOrPercent`], checked names and hosts), and every error
//! names the file, the line and the key: `rollscript.toml:14: lb.drain_timeout: …`.

mod drain;
mod lbs;
mod locate;
mod raw;
pub(crate) mod validate;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use drain::{DrainDetect, DEFAULT_DRAIN_SETTLE};
pub use validate::{valid_host, valid_name};
pub use value::{format_duration, parse_duration, CountOrPercent};

/// The deployment target, as the operator described it.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    /// sha256 of the file's bytes, recorded in the journal.
    pub hash: String,
    pub app: App,
    pub ssh: SshSettings,
    pub health: HealthSettings,
    /// The load balancer, or with several `[[lb]]` the first one with the
    /// largest `drain_timeout` and `register_timeout` of all (what the
    /// effects layer bounds a step by); `lbs` holds every entry as written.
    pub lb: LbSettings,
    /// Every load balancer, in file order (one for a single `[lb]`).
    pub lbs: Vec<LbSettings>,
    pub database: Option<Database>,
    /// Where the deploy lock and the run journals live (`[state]`).
    pub state: StateSettings,
    pub instances: Vec<Instance>,
    /// Files a run needs (`ssh.identity`, `ssh.known_hosts`), with where they
    /// are named, checked by [`Inventory::missing_files`] before a run.
    pub(crate) needed_files: Vec<NeededFile>,
    /// Name → position in `instances`, built on first lookup.
    index: std::sync::OnceLock<std::collections::HashMap<String, usize>>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub deploy: Option<String>,
    pub rollback: Option<String>,
    pub migrate: Option<String>,
    pub migrate_timeout: Duration,
    /// What compensation does with a healthy instance whose rollback failed.
    pub on_rollback_failure: RollbackFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackFailure {
    /// Health-check it anyway; healthy and confirmed by the LB: put it back
    /// (on an unknown release, said loudly). Capacity first.
    PutBack,
    /// Leave it out of service for a human (the stricter choice).
    LeaveOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Refuse any host whose key is not already in known_hosts.
    Strict,
    /// Trust a host seen for the first time, refuse a changed key.
    AcceptNew,
}

#[derive(Debug, Clone)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_checking: HostKeyPolicy,
    pub config: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Hosts reached at once by `parallel` and the strategies.
    pub max_parallel: usize,
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub scheme: String,
    pub port: u16,
    pub path: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub retries: u32,
    pub healthy_threshold: u32,
    /// `None`: GET the URL from this machine. Else checked on the instance,
    /// over its ssh connection (`health.via = "ssh"`, `health.command`).
    pub on_host: Option<OnHost>,
}

/// A health check run on the instance itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnHost {
    /// `health.via = "ssh"`: `curl` against `localhost` there, like the seed.
    Curl,
    /// `health.command`: its exit status is the verdict.
    Command(String),
}

#[derive(Debug, Clone)]
pub struct LbSettings {
    /// Names the LB in plan steps, journal records and errors: `name`, else
    /// its kind (`haproxy`), numbered when several share it (`haproxy-2`).
    pub name: String,
    pub drain_timeout: Duration,
    /// What a drain does when `drain_timeout` is reached.
    pub on_drain_timeout: DrainPolicy,
    pub register_timeout: Duration,
    /// `None` = the backend's own default (sub-second for HAProxy and nginx, 5 s for ELBv2).
    pub poll_interval: Option<Duration>,
    pub min_in_service: CountOrPercent,
    /// `lb.drain_detect`: what ends a drain (see [`DrainDetect`]).
    pub drain_detect: DrainDetect,
    /// `lb.drain_settle`: how long the host must show no connection before
    /// an on-host drain ends (default 1 s).
    pub drain_settle: Duration,
    pub backend: LbBackend,
    /// Blue/green pools: pool name → the backend, upstream or target group serving it.
    pub pools: BTreeMap<String, PoolTarget>,
}

/// `lb.on_drain_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainPolicy {
    /// Close what is left where the LB can, warn with the count, go on (as
    /// ALB, HAProxy and kamal-proxy do).
    Proceed,
    /// Stop the run with a `drain_timeout` error.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTarget {
    pub backend: Option<String>,
    pub upstream: Option<String>,
    pub target_group_arn: Option<String>,
}

#[derive(Debug, Clone)]
pub enum LbBackend {
    None,
    Haproxy {
        /// A unix socket path or `host:port`.
        socket: String,
        backend: String,
    },
    Nginx {
        upstream_file: PathBuf,
        upstream: String,
        test_command: String,
        reload_command: String,
        /// Instance name of the LB host, when nginx is not on this machine.
        run_on: Option<String>,
    },
    Aws {
        target_group_arn: String,
        region: Option<String>,
        endpoint: Option<String>,
        listener_arn: Option<String>,
        port: Option<u16>,
        discover: bool,
    },
}

impl LbBackend {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Haproxy { .. } => "haproxy",
            Self::Nginx { .. } => "nginx",
            Self::Aws { .. } => "aws",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Database {
    pub url: String,
    pub lock_id: i64,
}

/// `[state]`: where the deploy lock and the journals live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub store: StateStore,
    /// How long a PostgreSQL lease outlives its last heartbeat.
    pub lease: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStore {
    /// `.rollscript/` beside the inventory (the default).
    Local,
    /// Shared by every machine with the same inventory and URL.
    Postgres { url: String },
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            store: StateStore::Local,
            lease: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub host: String,
    /// The port the load balancer sends traffic to (defaults to `health.port`).
    pub port: Option<u16>,
    pub ssh_port: Option<u16>,
    pub health_port: Option<u16>,
    /// EC2 instance id, for ELBv2 target groups.
    pub id: Option<String>,
    pub pool: Option<String>,
    pub weight: Option<u32>,
}

impl Instance {
    /// The pseudo-instance `local(cmd)` runs on.
    pub fn local() -> Self {
        Self {
            name: "local".into(),
            host: "localhost".into(),
            port: None,
            ssh_port: None,
            health_port: None,
            id: None,
            pool: None,
            weight: None,
        }
    }
}

/// A file the inventory names and a run cannot do without.
#[derive(Debug, Clone)]
pub(crate) struct NeededFile {
    pub key: &'static str,
    pub line: Option<usize>,
    pub path: PathBuf,
}

/// A problem in the inventory, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key, e.g. `lb.drain_timeout` or `instances[2].name`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Inventory {
    /// Reads and validates an inventory file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: match e.kind() {
                // A new user's first run: say how to get one.
                std::io::ErrorKind::NotFound => format!(
                    "cannot read inventory: {e}. Write one from the load balancer with                      `rollscript init --lb haproxy --socket PATH --backend NAME` (or --lb nginx|aws|none,                      see `rollscript init --help`), or name an existing one with `-i FILE` or ROLLSCRIPT_INVENTORY"
                ),
                _ => format!("cannot read inventory: {e}"),
            },
        })?;
        Self::parse(path, &text)
    }

    /// Validates inventory text; `path` is used for messages and for resolving
    /// relative paths (identity, known_hosts, upstream_file).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        validate::parse(path, text)
    }

    /// A one-instance inventory for compiling and introspecting scripts
    /// (`check`, `api`) when no real inventory is at hand.
    pub fn placeholder() -> Self {
        let text = "[app]\nname = \"check\"\ndeploy = \"true\"\n[[instances]]\nname = \"placeholder\"\nhost = \"127.0.0.1\"\n";
        Self::parse(Path::new("<placeholder>"), text).expect("placeholder inventory is valid")
    }

    /// The instance called `name`: a hash lookup, since every primitive call
    /// resolves its instance argument (six per instance in a rolling plan).
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.position(name).map(|i| &self.instances[i])
    }

    /// Where `name` is in `instances`.
    pub fn position(&self, name: &str) -> Option<usize> {
        let index = self.index.get_or_init(|| {
            self.instances
                .iter()
                .enumerate()
                .map(|(i, inst)| (inst.name.clone(), i))
                .collect()
        });
        index.get(name).copied()
    }

    /// The files a run needs that do not exist or cannot be read, as located
    /// errors (`rollscript.toml:7: ssh.identity: … does not exist`). Not part
    /// of parsing: a plan on another machine must still work.
    pub fn missing_files(&self) -> Vec<ConfigError> {
        self.needed_files
            .iter()
            .filter_map(|f| {
                let why = match std::fs::File::open(&f.path) {
                    Ok(_) => return None,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        format!("{} does not exist", f.path.display())
                    }
                    Err(e) => format!("{} cannot be read: {e}", f.path.display()),
                };
                Some(ConfigError {
                    file: self.path.clone(),
                    line: f.line,
                    key: Some(f.key.to_string()),
                    message: why,
                })
            })
            .collect()
    }

    /// Adds instances (discovery), keeping the lookup index right.
    pub fn add_instance(&mut self, inst: Instance) {
        self.instances.push(inst);
        self.index = std::sync::OnceLock::new();
    }

    /// The port the LB forwards to for this instance.
    pub fn traffic_port(&self, inst: &Instance) -> u16 {
        inst.port.unwrap_or(self.health.port)
    }

    /// The URL `health(inst)` polls.
    pub fn health_url(&self, inst: &Instance) -> String {
        let port = inst.health_port.or(inst.port).unwrap_or(self.health.port);
        format!(
            "{}://{}:{}{}",
            self.health.scheme,
            host_for_url(&inst.host),
            port,
            self.health.path
        )
    }
}

/// Brackets IPv6 literals so they can sit in a URL or `host:port`.
pub fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests;
