//! `rollscript init`: a starter `rollscript.toml` written from the live load
//! balancer, so the inventory starts out agreeing with what the LB routes to
//! instead of being typed in by hand.
//!
//! - `read.rs`: the fleet as the LB holds it — HAProxy's `show servers
//!   state`, the nginx upstream block, the target group's members (with EC2
//!   for their private IPs), or `--hosts`;
//! - `render.rs`: the commented TOML, every value rollscript could not read
//!   from the LB marked `# guess:`.
//!
//! It only reads from the load balancer, and refuses to replace an existing
//! file without `--force`. The file it writes is checked by parsing it back
//! before it is written.

mod read;
mod render;

use std::path::{Path, PathBuf};

use crate::config::Inventory;
use crate::outcome::{Failure, Outcome};

/// Where the fleet is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Haproxy {
        socket: String,
        backend: String,
    },
    Nginx {
        upstream_file: PathBuf,
        upstream: String,
        test_command: Option<String>,
        reload_command: Option<String>,
    },
    Aws {
        target_group_arn: String,
        region: Option<String>,
        endpoint: Option<String>,
    },
    None {
        hosts: Vec<String>,
    },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Haproxy { .. } => "haproxy",
            Self::Nginx { .. } => "nginx",
            Self::Aws { .. } => "aws",
            Self::None { .. } => "none",
        }
    }
}

/// What `init` was told beyond the LB: each one given replaces a guess.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub name: Option<String>,
    pub deploy: Option<String>,
    pub rollback: Option<String>,
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub ssh_config: Option<PathBuf>,
    pub health_path: Option<String>,
    pub health_port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The file to write (`-i`, default `rollscript.toml`).
    pub path: PathBuf,
    pub force: bool,
    pub source: Source,
    pub given: Given,
}

/// One instance as the LB knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub host: String,
    pub port: Option<u16>,
    pub id: Option<String>,
    /// Where the name came from, when the LB had none fit for an inventory
    /// (`guess: …`), or what the LB calls it (`HAProxy server web/web-1`).
    pub note: String,
    pub name_guessed: bool,
    /// Out of rotation on the LB now (`MAINT`, `down`): runs leave it so.
    pub parked: Option<String>,
}

/// Reads the fleet, writes the inventory; prints what it wrote and what to
/// run next.
pub async fn init(opts: InitOptions) -> Result<Outcome, Failure> {
    if opts.path.exists() && !opts.force {
        return Err(Failure::invalid(format!(
            "{} already exists: rollscript init does not overwrite it without --force",
            opts.path.display()
        ))
        .with_hint("nothing was written: pass --force to replace it, or -i OTHER.toml to write another file"));
    }
    let given = absolute_paths(&opts.given);
    let source = match opts.source {
        Source::Nginx {
            upstream_file,
            upstream,
            test_command,
            reload_command,
        } => Source::Nginx {
            upstream_file: absolute(&upstream_file),
            upstream,
            test_command,
            reload_command,
        },
        Source::Haproxy { socket, backend } => Source::Haproxy {
            // A relative socket path is the operator's current folder, not
            // the inventory's.
            socket: match Path::new(&socket).exists() && Path::new(&socket).is_relative() {
                true => absolute(Path::new(&socket)).display().to_string(),
                false => socket,
            },
            backend,
        },
        other => other,
    };
    let members = read::members(&source, &given)
        .await
        .map_err(|e| Failure::failed(format!("reading the fleet from {}: {e}", source.kind())))?;
    if members.is_empty() {
        return Err(Failure::failed(format!(
            "{} lists no instance: nothing to write",
            describe_source(&source)
        )));
    }
    let text = render::render(&render::Input {
        path: &opts.path,
        source: &source,
        given: &given,
        members: &members,
        from: describe_source(&source),
    });
    // What is written must be an inventory rollscript accepts as is.
    if let Err(e) = Inventory::parse(&opts.path, &text) {
        return Err(Failure::failed(format!(
            "rollscript init wrote an inventory it does not accept itself ({e}); nothing was written"
        )));
    }
    if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::invalid(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&opts.path, &text)
        .map_err(|e| Failure::invalid(format!("cannot write {}: {e}", opts.path.display())))?;
    let guesses = text.matches("# guess:").count();
    let inv = opts.path.display();
    let i_flag = if opts.path == Path::new("rollscript.toml") {
        String::new()
    } else {
        format!(" -i {inv}")
    };
    println!(
        "wrote {inv}: {} instance{} from {}; {guesses} line{} marked `# guess:` to check",
        members.len(),
        if members.len() == 1 { "" } else { "s" },
        describe_source(&source),
        if guesses == 1 { "" } else { "s" },
    );
    println!("next: rollscript doctor{i_flag}                      proves a deploy can work, touching nothing");
    println!("      rollscript plan scripts/rolling.rhai{i_flag}   every step of a rolling deploy, touching nothing");
    Ok(Outcome::Success)
}

/// `HAProxy backend web at /run/haproxy/admin.sock`, for the header and messages.
fn describe_source(source: &Source) -> String {
    match source {
        Source::Haproxy { socket, backend } => format!("HAProxy backend {backend} at {socket}"),
        Source::Nginx {
            upstream_file,
            upstream,
            ..
        } => format!("nginx upstream {upstream} in {}", upstream_file.display()),
        Source::Aws {
            target_group_arn, ..
        } => format!("target group {target_group_arn}"),
        Source::None { .. } => "--hosts".to_string(),
    }
}

/// Paths in an inventory are resolved against its folder: write them
/// absolute, as the operator meant them from where they ran `init`.
fn absolute_paths(g: &Given) -> Given {
    let abs = |p: &Option<PathBuf>| p.as_deref().map(absolute);
    Given {
        identity: abs(&g.identity),
        known_hosts: abs(&g.known_hosts),
        ssh_config: abs(&g.ssh_config),
        ..g.clone()
    }
}

fn absolute(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    if s.starts_with('~') || p.is_absolute() {
        return p.to_path_buf();
    }
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

#[cfg(test)]
mod tests;
