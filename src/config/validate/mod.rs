//! Raw TOML → typed [`Inventory`], with every error located by key and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::locate::{dotted, line_at, line_of, Seg};
use super::raw::{IntOrString, RawInventory};
use super::*;

mod instances;
mod lb;

use instances::{distinct_addresses, instances, valid_user};
use lb::lbs;
/// Collects the context every error needs: file, text, and the key being checked.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn err(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: line_of(self.text, path),
            key: Some(dotted(path)).filter(|k| !k.is_empty()),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        path: &[Seg],
        v: Option<&String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(path, m)),
        }
    }

    fn port(&self, path: &[Seg], v: Option<i64>) -> Result<Option<u16>, ConfigError> {
        match v {
            None => Ok(None),
            Some(p) if (1..=65535).contains(&p) => Ok(Some(p as u16)),
            Some(p) => Err(self.err(path, format!("invalid port {p}: must be 1-65535"))),
        }
    }

    fn positive(&self, path: &[Seg], v: Option<i64>, default: u32) -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if n >= 1 && n <= u32::MAX as i64 => Ok(n as u32),
            Some(n) => Err(self.err(path, format!("must be at least 1, got {n}"))),
        }
    }

    /// Relative paths are relative to the inventory file; `~/` is the home directory.
    fn path(&self, v: &str) -> PathBuf {
        expand_path(v, self.file.parent().unwrap_or(Path::new(".")))
    }
}

fn k(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key(p.to_string())).collect()
}

pub fn expand_path(v: &str, base: &Path) -> PathBuf {
    if let Some(rest) = v.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = PathBuf::from(v);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// Instance and server names reach the HAProxy runtime API (where `;`
/// separates commands), nginx config and shell commands: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Host names and IPv4/IPv6 literals only: nothing a shell or config file
/// could interpret.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
}

pub fn parse(file: &Path, text: &str) -> Result<Inventory, ConfigError> {
    let c = Checker { file, text };
    let raw = deserialize(&c)?;

    let app_raw = raw.app.unwrap_or_default();
    let app = App {
        name: match app_raw.name {
            Some(n) if valid_name(&n) => n,
            Some(n) => {
                return Err(c.err(
                    &k(&["app", "name"]),
                    format!("invalid name {n:?}: use letters, digits, '-', '_' or '.'"),
                ))
            }
            None => {
                return Err(c.err(
                    &k(&["app"]),
                    "missing key `name` (e.g. name = \"credit_radar\")",
                ))
            }
        },
        deploy: app_raw.deploy,
        rollback: app_raw.rollback,
        migrate: app_raw.migrate,
        migrate_timeout: c.duration(
            &k(&["app", "migrate_timeout"]),
            app_raw.migrate_timeout.as_ref(),
            Duration::from_secs(600),
        )?,
        on_rollback_failure: match app_raw.on_rollback_failure.as_deref() {
            None | Some("put_back") => RollbackFailure::PutBack,
            Some("leave_out") => RollbackFailure::LeaveOut,
            Some(other) => {
                return Err(c.err(
                    &k(&["app", "on_rollback_failure"]),
                    format!("invalid value {other:?}: expected \"put_back\" (a healthy instance goes back on an unknown release) or \"leave_out\""),
                ))
            }
        },
    };

    let s = raw.ssh.unwrap_or_default();
    if let Some(user) = &s.user {
        if !valid_user(user) {
            return Err(c.err(
                &k(&["ssh", "user"]),
                format!("invalid user {user:?}: use a plain user name (letters, digits, '.', '_', '-'); ssh options belong in ssh.config"),
            ));
        }
    }
    let ssh = SshSettings {
        user: s.user,
        port: c.port(&k(&["ssh", "port"]), s.port)?,
        identity: s.identity.as_deref().map(|p| c.path(p)),
        known_hosts: s.known_hosts.as_deref().map(|p| c.path(p)),
        host_key_checking: match s.host_key_checking.as_deref() {
            None | Some("strict") | Some("yes") => HostKeyPolicy::Strict,
            Some("accept-new") => HostKeyPolicy::AcceptNew,
            Some(other) => {
                return Err(c.err(
                    &k(&["ssh", "host_key_checking"]),
                    format!("invalid value {other:?}: expected \"strict\" or \"accept-new\""),
                ))
            }
        },
        config: s.config.as_deref().map(|p| c.path(p)),
        connect_timeout: c.duration(
            &k(&["ssh", "connect_timeout"]),
            s.connect_timeout.as_ref(),
            Duration::from_secs(10),
        )?,
        command_timeout: c.duration(
            &k(&["ssh", "command_timeout"]),
            s.command_timeout.as_ref(),
            Duration::from_secs(600),
        )?,
        max_parallel: c.positive(&k(&["ssh", "max_parallel"]), s.max_parallel, 10)? as usize,
    };

    let h = raw.health.unwrap_or_default();
    let on_host = match (h.via.as_deref(), h.command.as_deref()) {
        (_, Some(cmd)) if cmd.trim().is_empty() => {
            return Err(c.err(&k(&["health", "command"]), "empty command"))
        }
        (Some("http"), Some(_)) => {
            return Err(c.err(
                &k(&["health", "via"]),
                "health.command runs on the instance: set via = \"ssh\" or leave via out",
            ))
        }
        (None | Some("ssh"), Some(cmd)) => Some(OnHost::Command(cmd.to_string())),
        (None | Some("http"), None) => None,
        (Some("ssh"), None) => Some(OnHost::Curl),
        (Some(other), _) => {
            return Err(c.err(
                &k(&["health", "via"]),
                format!("expected \"http\" or \"ssh\", got {other:?}"),
            ))
        }
    };
    let health = HealthSettings {
        on_host,
        scheme: match h.scheme.as_deref() {
            None | Some("http") => "http".into(),
            Some("https") => "https".into(),
            Some(other) => {
                return Err(c.err(
                    &k(&["health", "scheme"]),
                    format!("invalid scheme {other:?}: expected \"http\" or \"https\""),
                ))
            }
        },
        port: c.port(&k(&["health", "port"]), h.port)?.unwrap_or(80),
        path: match h.path {
            None => "/health".into(),
            Some(p) if p.starts_with('/') && !p.chars().any(char::is_whitespace) => p,
            Some(p) => {
                return Err(c.err(
                    &k(&["health", "path"]),
                    format!("invalid path {p:?}: must start with '/' and contain no spaces"),
                ))
            }
        },
        expect_status: match h.expect_status {
            None => 200,
            Some(s) if (100..=599).contains(&s) => s as u16,
            Some(s) => {
                return Err(c.err(
                    &k(&["health", "expect_status"]),
                    format!("invalid HTTP status {s}: must be 100-599"),
                ))
            }
        },
        expect_body: h.expect_body,
        timeout: c.duration(
            &k(&["health", "timeout"]),
            h.timeout.as_ref(),
            Duration::from_secs(2),
        )?,
        interval: c.duration(
            &k(&["health", "interval"]),
            h.interval.as_ref(),
            Duration::from_secs(1),
        )?,
        retries: c.positive(&k(&["health", "retries"]), h.retries, 30)?,
        healthy_threshold: c.positive(
            &k(&["health", "healthy_threshold"]),
            h.healthy_threshold,
            2,
        )?,
    };

    let instances = instances(&c, raw.instances)?;
    let lbs = lbs(&c, raw.lb, &instances)?;
    let lb = super::lbs::merged(&lbs);
    distinct_addresses(&c, &instances, health.port)?;

    let database = match raw.database {
        None => None,
        Some(d) => Some(Database {
            url: d.url.ok_or_else(|| {
                c.err(
                    &k(&["database"]),
                    "missing key `url` (e.g. url = \"postgres://deploy@db/app\")",
                )
            })?,
            lock_id: d.lock_id.unwrap_or(0x726f6c6c),
        }),
    };

    let mut needed_files = Vec::new();
    if let Some(path) = &ssh.identity {
        needed_files.push(NeededFile {
            key: "ssh.identity",
            line: line_of(text, &k(&["ssh", "identity"])),
            path: path.clone(),
        });
    }
    // With accept-new, ssh writes known_hosts itself on first contact.
    if let (Some(path), HostKeyPolicy::Strict) = (&ssh.known_hosts, ssh.host_key_checking) {
        needed_files.push(NeededFile {
            key: "ssh.known_hosts",
            line: line_of(text, &k(&["ssh", "known_hosts"])),
            path: path.clone(),
        });
    }
    let state = state(&c, raw.state)?;

    Ok(Inventory {
        path: file.to_path_buf(),
        needed_files,
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        app,
        ssh,
        health,
        lb,
        lbs,
        database,
        state,
        instances,
        index: Default::default(),
    })
}

/// `[state]`; `url` may come from `ROLLSCRIPT_STATE_URL` instead (so the
/// password need not be in the file).
fn state(c: &Checker, raw: Option<super::raw::RawState>) -> Result<StateSettings, ConfigError> {
    let Some(r) = raw else {
        return Ok(StateSettings::default());
    };
    let lease = c.duration(
        &k(&["state", "lease"]),
        r.lease.as_ref(),
        Duration::from_secs(30),
    )?;
    let store = match r.backend.as_deref() {
        None | Some("local") => {
            // A URL or a lease with a local backend: the operator believes the
            // state is shared, and it is not.
            for (key, set) in [("url", r.url.is_some()), ("lease", r.lease.is_some())] {
                if set {
                    return Err(c.err(
                        &k(&["state", key]),
                        "not used when backend = \"local\" (set backend = \"postgres\" to share the lock and the journal)",
                    ));
                }
            }
            StateStore::Local
        }
        Some("postgres") => {
            let url = match r.url {
                Some(u) => u,
                None => std::env::var("ROLLSCRIPT_STATE_URL")
                    .ok()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        c.err(
                            &k(&["state"]),
                            "missing key `url` (e.g. url = \"postgres://deploy@db/rollscript\"), or set ROLLSCRIPT_STATE_URL",
                        )
                    })?,
            };
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(c.err(
                    &k(&["state", "url"]),
                    format!(
                        "invalid URL {:?}: expected postgres://user@host/database",
                        crate::redact::redact(&url)
                    ),
                ));
            }
            if lease < Duration::from_secs(1) {
                return Err(c.err(
                    &k(&["state", "lease"]),
                    format!("{} is too short: at least 1s", format_duration(lease)),
                ));
            }
            StateStore::Postgres { url }
        }
        Some(other) => {
            return Err(c.err(
                &k(&["state", "backend"]),
                format!("unknown state backend {other:?}: expected \"local\" or \"postgres\""),
            ))
        }
    };
    Ok(StateSettings { store, lease })
}

fn deserialize(c: &Checker) -> Result<RawInventory, ConfigError> {
    // Without tracking the path first: a file that is right (the usual
    // case) is read once, 8 % faster; a wrong one is read again to say where.
    if let Ok(raw) = serde::Deserialize::deserialize(toml::Deserializer::new(c.text)) {
        return Ok(raw);
    }
    let de = toml::Deserializer::new(c.text);
    serde_path_to_error::deserialize::<_, RawInventory>(de).map_err(|e| {
        let mut path: Vec<Seg> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                _ => None,
            })
            .collect();
        let inner = e.into_inner();
        let mut message = inner.message().to_string();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default().to_string();
            if path.last() != Some(&Seg::Key(name.clone())) {
                path.push(Seg::Key(name.clone()));
            }
            message = format!("unknown key `{name}`{}", did_you_mean(&name, rest));
        }
        let line = inner
            .span()
            .map(|s| line_at(c.text, s.start))
            .or_else(|| line_of(c.text, &path));
        ConfigError {
            file: c.file.to_path_buf(),
            line,
            key: Some(dotted(&path)).filter(|k| !k.is_empty()),
            message,
        }
    })
}

/// serde lists the expected keys after "expected one of"; suggest the closest.
fn did_you_mean(name: &str, rest: &str) -> String {
    let expected: Vec<&str> = rest
        .split("expected ")
        .nth(1)
        .unwrap_or_default()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let best = expected
        .iter()
        .map(|e| (strsim_distance(name, e), *e))
        .min();
    match best {
        Some((d, e)) if d <= 3 => format!(" (did you mean `{e}`?)"),
        _ if !expected.is_empty() => format!(" (expected one of: {})", expected.join(", ")),
        _ => String::new(),
    }
}

/// Levenshtein distance; inventories are small, so the quadratic cost is nothing.
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
