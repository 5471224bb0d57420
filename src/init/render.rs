//! The inventory `init` writes: commented like `examples/`, the LB's own
//! facts as read, everything else the seed's defaults or the flags given,
//! and each value rollscript could not read marked `# guess:` so the
//! operator knows which lines to check.

use std::fmt::Write;
use std::path::Path;

use super::{Given, Member, Source};
use crate::config::valid_name;

/// The seed app's port (examples/*.toml), when nothing says otherwise.
pub(super) const DEFAULT_PORT: u16 = 4000;

/// Comments start in this column when the line leaves room.
const COMMENT_COLUMN: usize = 40;

pub(super) struct Input<'a> {
    pub path: &'a Path,
    pub source: &'a Source,
    pub given: &'a Given,
    pub members: &'a [Member],
    /// `HAProxy backend web at /run/haproxy/admin.sock`.
    pub from: String,
}

/// A TOML string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `key = value`, with `# comment` in the comment column.
fn line(out: &mut String, key: &str, value: &str, comment: &str) {
    let kv = format!("{key} = {value}");
    if comment.is_empty() {
        writeln!(out, "{kv}").unwrap();
    } else {
        let pad = COMMENT_COLUMN.saturating_sub(kv.len()).max(1);
        writeln!(out, "{kv}{:pad$}# {comment}", "").unwrap();
    }
}

/// A value given by a flag, else a guess (marked).
fn given_or(out: &mut String, key: &str, given: Option<String>, guess: String, why: &str) {
    match given {
        Some(v) => line(out, key, &q(&v), ""),
        None => line(out, key, &q(&guess), &format!("guess: {why}")),
    }
}

/// What the app is called, from the LB's own name for it.
fn app_name(input: &Input) -> (String, bool) {
    if let Some(n) = &input.given.name {
        return (n.clone(), false);
    }
    let from_lb = match input.source {
        Source::Haproxy { backend, .. } => backend.clone(),
        Source::Nginx { upstream, .. } => upstream.clone(),
        // arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID
        Source::Aws {
            target_group_arn, ..
        } => target_group_arn
            .split('/')
            .nth(1)
            .unwrap_or("app")
            .to_string(),
        Source::None { .. } => "app".to_string(),
    };
    let clean: String = from_lb
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                true => c,
                false => '_',
            },
        )
        .collect();
    (
        match valid_name(&clean) {
            true => clean,
            false => "app".to_string(),
        },
        true,
    )
}

pub(super) fn render(input: &Input) -> String {
    let g = input.given;
    let n = input.members.len();
    let mut out = String::new();
    let kind = input.source.kind();
    writeln!(
        out,
        "# {} for {} instance{}, written by `rollscript init --lb {kind}`\n\
         # from {}.\n\
         # The load balancer's own facts (names, addresses, ports) are as it\n\
         # reported them; lines marked `# guess:` are defaults rollscript could\n\
         # not read from it: check them, then\n\
         #   rollscript doctor{i}                      proves a deploy can work, touching nothing\n\
         #   rollscript plan scripts/rolling.rhai{i}   every step of a rolling deploy, touching nothing",
        input
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rollscript.toml".into()),
        n,
        if n == 1 { "" } else { "s" },
        input.from,
        i = match input.path == Path::new("rollscript.toml") {
            true => String::new(),
            false => format!(" -i {}", input.path.display()),
        },
    )
    .unwrap();

    // [app]
    let (name, name_guessed) = app_name(input);
    out.push_str("\n[app]\n");
    match name_guessed {
        true => line(
            &mut out,
            "name",
            &q(&name),
            &format!("guess: the load balancer's name for it ({kind})"),
        ),
        false => line(&mut out, "name", &q(&name), ""),
    }
    given_or(
        &mut out,
        "deploy",
        g.deploy.clone(),
        format!("cd /home/ubuntu/{name} && ./deploy.sh"),
        "run on each instance over ssh (--deploy)",
    );
    match &g.rollback {
        Some(r) => line(&mut out, "rollback", &q(r), ""),
        None => writeln!(
            out,
            "# rollback = {}   # optional: what compensation runs on an instance whose deploy failed (--rollback)",
            q(&format!("cd /home/ubuntu/{name} && ./rollback.sh"))
        )
        .unwrap(),
    }

    // [ssh]
    out.push_str(
        "\n[ssh]                                   # OpenSSH; ~/.ssh/config is honoured\n",
    );
    given_or(
        &mut out,
        "user",
        g.user.clone(),
        "ubuntu".into(),
        "the seed's user (--user)",
    );
    let path_line =
        |out: &mut String, key: &str, p: &Option<std::path::PathBuf>, example: &str, why: &str| {
            match p {
                Some(p) => line(out, key, &q(&p.display().to_string()), ""),
                None => writeln!(out, "# {key} = {}   # {why}", q(example)).unwrap(),
            }
        };
    path_line(
        &mut out,
        "identity",
        &g.identity,
        "~/.ssh/deploy_key",
        "default: ssh's own keys and agent (--identity)",
    );
    path_line(
        &mut out,
        "known_hosts",
        &g.known_hosts,
        "~/.ssh/known_hosts",
        "host keys are checked strictly against ssh's default file (--known-hosts)",
    );
    path_line(
        &mut out,
        "config",
        &g.ssh_config,
        "~/.ssh/config",
        "an ssh config for ports, jump hosts, … (--ssh-config)",
    );
    line(&mut out, "connect_timeout", &q("10s"), "");
    line(&mut out, "command_timeout", &q("10m"), "");

    // [health]
    let ports: Vec<Option<u16>> = input.members.iter().map(|m| m.port).collect();
    let common = match ports.first() {
        Some(Some(p)) if ports.iter().all(|x| *x == Some(*p)) => Some(*p),
        _ => None,
    };
    let first = ports.iter().flatten().next().copied();
    let health_port = g.health_port.or(common).or(first).unwrap_or(DEFAULT_PORT);
    out.push_str("\n[health]                                # GET http://{host}:{port}{path} on each instance\n");
    match (g.health_port, common, first) {
        (Some(p), _, _) => line(&mut out, "port", &p.to_string(), ""),
        (None, Some(p), _) => line(
            &mut out,
            "port",
            &p.to_string(),
            "guess: the port the load balancer sends traffic to",
        ),
        (None, None, Some(p)) => line(
            &mut out,
            "port",
            &p.to_string(),
            "each instance's own port below wins (--health-port)",
        ),
        (None, None, None) => line(
            &mut out,
            "port",
            &DEFAULT_PORT.to_string(),
            "guess: the seed app's port (--health-port)",
        ),
    }
    given_or(
        &mut out,
        "path",
        g.health_path.clone(),
        "/health".into(),
        "the seed app's health URL (--health-path)",
    );
    line(&mut out, "expect_status", "200", "");
    line(&mut out, "timeout", &q("2s"), "");
    line(&mut out, "interval", &q("1s"), "");
    line(&mut out, "retries", "30", "");
    line(&mut out, "healthy_threshold", "2", "consecutive successes");

    // [lb]
    out.push_str("\n[lb]\n");
    line(&mut out, "kind", &q(kind), "");
    let (drain, register) = match input.source {
        Source::Aws { .. } => ("300s", "300s"),
        _ => ("120s", "120s"),
    };
    match input.source {
        Source::Haproxy { socket, backend } => {
            line(
                &mut out,
                "socket",
                &q(socket),
                "runtime API: needs `level admin`",
            );
            line(&mut out, "backend", &q(backend), "");
        }
        Source::Nginx {
            upstream_file,
            upstream,
            test_command,
            reload_command,
        } => {
            line(
                &mut out,
                "upstream_file",
                &q(&upstream_file.display().to_string()),
                "rollscript rewrites this file: the block below only",
            );
            line(&mut out, "upstream", &q(upstream), "");
            given_or(
                &mut out,
                "test_command",
                test_command.clone(),
                "nginx -t".into(),
                "(--test-command)",
            );
            given_or(
                &mut out,
                "reload_command",
                reload_command.clone(),
                "nginx -s reload".into(),
                "(--reload-command)",
            );
        }
        Source::Aws {
            target_group_arn,
            region,
            endpoint,
        } => {
            line(&mut out, "target_group_arn", &q(target_group_arn), "");
            match region {
                Some(r) => line(&mut out, "region", &q(r), ""),
                None => out.push_str(
                    "# region = \"eu-west-1\"                 # default: the ARN's region\n",
                ),
            }
            if let Some(e) = endpoint {
                line(&mut out, "endpoint", &q(e), "an emulator, not AWS itself");
            }
        }
        Source::None { .. } => {}
    }
    line(
        &mut out,
        "drain_timeout",
        &q(drain),
        match input.source {
            Source::Aws { .. } => "≥ the target group's deregistration_delay",
            _ => "",
        },
    );
    line(&mut out, "register_timeout", &q(register), "");
    let min = n.saturating_sub(1);
    line(
        &mut out,
        "min_in_service",
        &min.to_string(),
        &match n {
            1 => "guess: one instance: the site is down while it deploys".to_string(),
            _ => format!("guess: capacity guard, {min} of {n}: one instance out at a time"),
        },
    );

    // [[instances]]
    for m in input.members {
        out.push('\n');
        if let Some(p) = &m.parked {
            writeln!(
                out,
                "# {p} on the load balancer now: runs leave it out of rotation (--include-parked deploys it)"
            )
            .unwrap();
        }
        out.push_str("[[instances]]\n");
        line(&mut out, "name", &q(&m.name), &m.note);
        line(&mut out, "host", &q(&m.host), "");
        if let Some(p) = m.port.filter(|p| *p != health_port) {
            line(&mut out, "port", &p.to_string(), "");
            if let Some(h) = g.health_port {
                line(&mut out, "health_port", &h.to_string(), "");
            }
        }
        if let Some(id) = &m.id {
            line(&mut out, "id", &q(id), "EC2 instance id");
        }
    }
    out
}
