//! Each doctor check, read-only, built on what a run itself calls: the
//! LB's `states` and `verify`, the ssh transport, one health probe, the
//! capacity guard's `decide`, the state backend's lock record.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::Check;
use crate::config::{Instance, Inventory, LbBackend, StateStore};
use crate::effects::decide;
use crate::primitives::{sh_quote, ActionResult, Cmd, HealthProbe, MemberState, Providers};

/// Every check: the fleet's first (LB rights, state), then each instance's
/// in inventory order (lb_member, ssh, deploy, health, capacity).
pub(super) async fn all(inv: &Arc<Inventory>, p: &Providers, relaxed: bool) -> Vec<Check> {
    let fleet = &inv.instances;
    let has_lb = !matches!(inv.lb.backend, LbBackend::None);
    let lb_reads = async {
        if !has_lb {
            return (Ok(Vec::new()), Ok(Vec::new()));
        }
        futures::join!(p.lb.states(fleet), p.lb.verify(fleet))
    };
    let hosts = futures::stream::iter(fleet.iter().map(|i| host(inv, p, i, relaxed)))
        .buffered(inv.ssh.max_parallel.max(1))
        .collect::<Vec<_>>();
    let (rights, state, (states, verified), hosts) =
        futures::join!(lb_rights(inv, p), state(inv), lb_reads, hosts);

    let mut out = vec![rights.clone()];
    if let Err(e) = &states {
        out.push(Check::fail(
            None,
            "lb_read",
            format!(
                "cannot read the load balancer's state: {}",
                first_line(&e.message)
            ),
            "",
        ));
    }
    let mut problems = match verified {
        Ok(p) => p,
        Err(e) => {
            out.push(Check::fail(
                None,
                "lb_read",
                format!(
                    "cannot check the inventory against the load balancer: {}",
                    first_line(&e.message)
                ),
                "",
            ));
            Vec::new()
        }
    };
    let states = states.ok();
    // A socket below level admin hides server addresses: every member
    // check would fail for the one reason lb_rights already names.
    let below_admin = rights.check == "lb_rights"
        && rights.status == super::Status::Fail
        && rights.detail.contains("answers at level");
    for (k, (inst, host_checks)) in fleet.iter().zip(hosts).enumerate() {
        let state = states.as_ref().and_then(|s| s.get(k).copied());
        let mut m = member(inv, p, inst, state, &mut problems, has_lb);
        if below_admin && m.status == super::Status::Fail {
            m = Check::skipped(
                Some(&inst.name),
                "lb_member",
                "not checked: below level admin HAProxy shows no server addresses (see lb_rights)",
            );
        }
        out.push(m);
        out.extend(host_checks);
        out.push(capacity(inv, inst, states.as_deref(), has_lb));
    }
    // What the LB routes to that no instance is (nginx: a server of the
    // upstream the inventory lacks).
    for left in problems {
        out.push(Check::fail(None, "lb_member", left, ""));
    }
    out.push(state);
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The LB answers with the rights a deploy needs.
async fn lb_rights(inv: &Inventory, p: &Providers) -> Check {
    const C: &str = "lb_rights";
    match &inv.lb.backend {
        LbBackend::None => Check::skipped(None, C, "lb.kind = \"none\": no load balancer"),
        LbBackend::Haproxy { socket, .. } => {
            match crate::providers::haproxy::cli_level(socket).await {
                Ok(Some(level)) if level == "admin" => Check::ok(
                    None,
                    C,
                    format!("HAProxy runtime API at {socket} answers at level admin"),
                ),
                Ok(Some(level)) => Check::fail(
                    None,
                    C,
                    format!(
                        "HAProxy runtime API at {socket} answers at level {level}: it would refuse `set server … state drain` (Permission denied)"
                    ),
                    format!(
                        "declare it `stats socket {} level admin` in haproxy.cfg's global section and reload HAProxy",
                        socket.strip_prefix("unix@").unwrap_or(socket)
                    ),
                ),
                // HAProxy before 2.0 does not know `show cli level`.
                Ok(None) => Check::ok(
                    None,
                    C,
                    format!("HAProxy runtime API at {socket} answers (its level cannot be asked before HAProxy 2.0)"),
                ),
                Err(e) => Check::fail(None, C, e.message, ""),
            }
        }
        LbBackend::Nginx {
            test_command,
            run_on,
            ..
        } => {
            let cmd = Cmd::Shell(test_command.clone());
            let (transport, on) = match run_on.as_deref().and_then(|n| inv.instance(n)) {
                Some(host) => (&p.ssh, host.clone()),
                None => (&p.local, Instance::local()),
            };
            match transport.exec(&on, &cmd, Duration::from_secs(30)).await {
                Ok(o) if o.status == 0 => Check::ok(
                    None,
                    C,
                    format!("lb.test_command `{test_command}` passes on {}", on.name),
                ),
                Ok(o) => Check::fail(
                    None,
                    C,
                    format!(
                        "lb.test_command `{test_command}` exits {} on {}: {}",
                        o.status,
                        on.name,
                        o.stderr.trim().lines().last().unwrap_or_default()
                    ),
                    "a deploy reloads nginx only after this passes: fix nginx's configuration or lb.test_command",
                ),
                Err(e) => Check::fail(None, C, e.to_string(), ""),
            }
        }
        LbBackend::Aws {
            target_group_arn, ..
        } => match p.lb.states(&inv.instances).await {
            Ok(_) => Check::ok(
                None,
                C,
                format!("DescribeTargetHealth of {target_group_arn} answers"),
            ),
            Err(e) => Check::fail(
                None,
                C,
                first_line(&e.message).to_string(),
                "the credentials need elasticloadbalancing:Describe*, RegisterTargets, DeregisterTargets and ec2:DescribeInstances",
            ),
        },
    }
}

/// The instance is the LB's member at the inventory's address.
fn member(
    inv: &Inventory,
    p: &Providers,
    inst: &Instance,
    state: Option<MemberState>,
    problems: &mut Vec<String>,
    has_lb: bool,
) -> Check {
    const C: &str = "lb_member";
    let me = Some(inst.name.as_str());
    if !has_lb {
        return Check::skipped(me, C, "no load balancer");
    }
    let prefix = format!("{}: ", inst.name);
    if let Some(k) = problems.iter().position(|p| p.starts_with(&prefix)) {
        let p = problems.remove(k);
        return Check::fail(me, C, p[prefix.len()..].to_string(), "");
    }
    match state {
        None => Check::skipped(me, C, "the load balancer could not be read"),
        Some(MemberState::Unknown) => Check::fail(
            me,
            C,
            format!(
                "the load balancer does not know {} at {}:{}",
                inst.name,
                inst.host,
                inv.traffic_port(inst)
            ),
            "fix its host/port in the inventory, or add it to the load balancer",
        ),
        Some(s) if s.out_of_rotation() => Check::ok(
            me,
            C,
            format!(
                "{}: parked, a run leaves it as found (--include-parked deploys it)",
                p.lb.state_word(&s)
            ),
        ),
        Some(s) => Check::ok(me, C, p.lb.state_word(&s)),
    }
}

/// ssh, then app.deploy's program over it; the health check beside them.
async fn host(inv: &Inventory, p: &Providers, inst: &Instance, relaxed: bool) -> Vec<Check> {
    let me = Some(inst.name.as_str());
    let remote = async {
        let timeout = inv.ssh.connect_timeout + Duration::from_secs(10);
        let ssh = match p.ssh.exec(inst, &Cmd::Shell("true".into()), timeout).await {
            Ok(o) if o.status == 0 => Check::ok(me, "ssh", "connects, runs `true`"),
            Ok(o) => Check::fail(
                me,
                "ssh",
                format!("connects, but `true` exits {}", o.status),
                "check the login shell and its start-up files on the host",
            ),
            Err(e) => Check::fail(
                me,
                "ssh",
                e.message,
                match relaxed {
                    true => "doctor checks host keys strictly: with ssh.host_key_checking = \"accept-new\" a run would trust a new key on first contact",
                    false => "",
                },
            ),
        };
        let deploy = match (&ssh.status, inv.app.deploy.as_deref()) {
            (_, None) => Check::skipped(me, "deploy", "no app.deploy"),
            (super::Status::Ok, Some(d)) => deploy(p, inst, d).await,
            _ => Check::skipped(me, "deploy", "ssh failed"),
        };
        vec![ssh, deploy]
    };
    let (mut checks, health) = futures::join!(remote, health(inv, p, inst));
    checks.push(health);
    checks
}

/// What app.deploy starts: its directory (a leading `cd DIR &&`) and its
/// program (the first word after environment assignments and `sudo`/`exec`/`env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeployProbe {
    pub dir: Option<String>,
    pub program: String,
}

pub(super) fn deploy_probe(deploy: &str) -> Option<DeployProbe> {
    let mut dir = None;
    for segment in deploy.split("&&").flat_map(|s| s.split(';')) {
        let words: Vec<String> = segment
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '\'' || c == '"').to_string())
            .collect();
        let mut words = words.iter().skip_while(|w| {
            w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) || matches!(w.as_str(), "sudo" | "exec" | "env" | "nohup")
        });
        match words.next().map(String::as_str) {
            None => continue,
            Some("cd") => dir = words.next().cloned(),
            Some(program) => {
                return Some(DeployProbe {
                    dir,
                    program: program.to_string(),
                })
            }
        }
    }
    None
}

/// A shell line: exit 3 without the directory, 4 without the program.
pub(super) fn probe_script(p: &DeployProbe) -> String {
    let quote_path = |s: &str| match s.strip_prefix("~/") {
        Some(rest) => format!("\"$HOME\"/{}", sh_quote(rest)),
        None if s == "~" => "\"$HOME\"".to_string(),
        None => sh_quote(s),
    };
    let mut line = String::new();
    if let Some(d) = &p.dir {
        line.push_str(&format!("cd {} 2>/dev/null || exit 3; ", quote_path(d)));
    }
    let prog = quote_path(&p.program);
    match p.program.contains('/') {
        true => line.push_str(&format!("test -f {prog} && test -x {prog} || exit 4")),
        false => line.push_str(&format!("command -v {prog} >/dev/null 2>&1 || exit 4")),
    }
    line
}

async fn deploy(p: &Providers, inst: &Instance, deploy: &str) -> Check {
    const C: &str = "deploy";
    let me = Some(inst.name.as_str());
    let Some(probe) = deploy_probe(deploy) else {
        return Check::skipped(me, C, "app.deploy names no program");
    };
    let cmd = Cmd::Shell(probe_script(&probe));
    let out: ActionResult<_> = p.ssh.exec(inst, &cmd, Duration::from_secs(20)).await;
    let in_dir = probe
        .dir
        .as_ref()
        .map(|d| format!(" in {d}"))
        .unwrap_or_default();
    match out {
        Ok(o) if o.status == 0 => Check::ok(me, C, format!("{}{in_dir} found", probe.program)),
        Ok(o) if o.status == 3 => Check::fail(
            me,
            C,
            format!(
                "app.deploy starts with `cd {}`, and that directory does not exist on the host",
                probe.dir.unwrap_or_default()
            ),
            "install the app there, or fix app.deploy",
        ),
        Ok(o) if o.status == 4 => Check::fail(
            me,
            C,
            format!(
                "app.deploy's program {}{in_dir} is not on the host (or not executable){}",
                probe.program,
                match probe.program.contains('/') {
                    true => "",
                    false => ", in the PATH of a non-interactive ssh shell",
                }
            ),
            "install it (chmod +x a script), or fix app.deploy",
        ),
        Ok(o) => Check::fail(
            me,
            C,
            format!("checking app.deploy's program exited {}", o.status),
            "",
        ),
        Err(e) => Check::fail(me, C, e.message, ""),
    }
}

/// One probe, now: no retries, one success is enough.
async fn health(inv: &Inventory, p: &Providers, inst: &Instance) -> Check {
    const C: &str = "health";
    let me = Some(inst.name.as_str());
    let h = &inv.health;
    if let Some(how) = &h.on_host {
        return health_on_host(inv, p, inst, how).await;
    }
    let probe = HealthProbe {
        ready_after: None,
        on_host: None,
        url: inv.health_url(inst),
        expect_status: h.expect_status,
        expect_body: h.expect_body.clone(),
        timeout: h.timeout,
        interval: h.interval,
        retries: 1,
        healthy_threshold: 1,
    };
    match p.health.check(&probe).await {
        Ok(r) => Check::ok(
            me,
            C,
            format!(
                "GET {} answers {}",
                r.url,
                r.attempts
                    .last()
                    .map(|a| a.outcome.as_str())
                    .unwrap_or("ok")
            ),
        ),
        Err(e) => Check::fail(
            me,
            C,
            format!("GET {}: {}", probe.url, seen(&e)),
            format!(
                "expected {}: check health.path, health.port (or the instance's port) and that the app is up",
                h.expect_status
            ),
        ),
    }
}

/// `health.via = "ssh"` or `health.command`: one attempt on the instance,
/// over ssh, as a run would make it.
async fn health_on_host(
    inv: &Inventory,
    p: &Providers,
    inst: &Instance,
    how: &crate::config::OnHost,
) -> Check {
    use crate::config::OnHost;
    const C: &str = "health";
    let me = Some(inst.name.as_str());
    let h = &inv.health;
    let port = inst.health_port.or(inst.port).unwrap_or(h.port);
    let probe = HealthProbe {
        ready_after: None,
        on_host: Some(how.clone()),
        url: format!("{}://localhost:{port}{}", h.scheme, h.path),
        expect_status: h.expect_status,
        expect_body: h.expect_body.clone(),
        timeout: h.timeout,
        interval: h.interval,
        retries: 1,
        healthy_threshold: 1,
    };
    let (cmd, what) = match how {
        OnHost::Curl => (
            crate::effects::on_host::curl_cmd(&probe),
            format!("curl {} on {}", probe.url, inst.name),
        ),
        OnHost::Command(c) => (Cmd::Shell(c.clone()), format!("{c} on {}", inst.name)),
    };
    let limit = inv.ssh.command_timeout.min(Duration::from_secs(30));
    match p.ssh.exec(inst, &cmd, limit).await {
        Err(e) => Check::fail(
            me,
            C,
            format!("{what}: ssh: {}", first_line(&e.message)),
            "",
        ),
        Ok(o) => {
            let code = o.stdout.trim_end().rsplit('\n').next().unwrap_or("").trim();
            let ok = match how {
                OnHost::Curl => o.status == 0 && code == h.expect_status.to_string(),
                OnHost::Command(_) => o.status == 0,
            };
            let seen = match how {
                OnHost::Curl if o.status == 0 => code.to_string(),
                _ => format!("exit {}", o.status),
            };
            if ok {
                Check::ok(me, C, format!("{what} answers {seen}"))
            } else {
                Check::fail(
                    me,
                    C,
                    format!("{what}: {seen}"),
                    "check health.command / health.path and that the app is up on the host",
                )
            }
        }
    }
}

/// What the probe saw, from the health error (`404`, `connection refused`).
fn seen(e: &crate::primitives::ActionError) -> String {
    e.details
        .iter()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.trim_matches('"').to_string())
        .unwrap_or_else(|| first_line(&e.message).to_string())
}

/// The capacity guard, from the LB's state now: could `inst` be taken out?
fn capacity(
    inv: &Inventory,
    inst: &Instance,
    states: Option<&[MemberState]>,
    has_lb: bool,
) -> Check {
    const C: &str = "capacity";
    let me = Some(inst.name.as_str());
    if !has_lb {
        return Check::skipped(me, C, "no load balancer");
    }
    let Some(states) = states else {
        return Check::skipped(me, C, "the load balancer could not be read");
    };
    // Its pool, as the guard counts it (blue/green), else the inventory.
    let (fleet, fleet_states): (Vec<Instance>, Vec<MemberState>) = inv
        .instances
        .iter()
        .zip(states)
        .filter(|(i, _)| inst.pool.is_none() || i.pool == inst.pool)
        .map(|(i, s)| (i.clone(), *s))
        .unzip();
    let floor = inv.lb.min_in_service.of_ceil(fleet.len());
    let d = decide(&fleet, &fleet_states, |_| false, &inst.name, floor);
    let min = &inv.lb.min_in_service;
    match d.allowed() {
        true => Check::ok(
            me,
            C,
            format!(
                "{} of {} in service; {} with it out (lb.min_in_service = {min})",
                d.serving, d.fleet, d.after
            ),
        ),
        false => Check::fail(
            me,
            C,
            format!(
                "taking it out now would leave {} of {} in service, below lb.min_in_service = {min} ({floor}): a run would wait, then stop",
                d.after, d.fleet
            ),
            "bring the instances that are down back in service, or lower lb.min_in_service",
        ),
    }
}

/// The state backend answers and the deploy lock is free.
async fn state(inv: &Inventory) -> Check {
    const C: &str = "state";
    let inv = inv.clone();
    // PostgreSQL's client blocks; the local backend reads files.
    let found = tokio::task::spawn_blocking(move || {
        let backend = match crate::state::open(&inv) {
            Ok(b) => b,
            Err(e) => {
                return Check::fail(
                    None,
                    C,
                    e.to_string(),
                    "start the database or fix [state] url",
                )
            }
        };
        let writable = match &inv.state.store {
            StateStore::Local => writable(&crate::journal::state_dir(&inv.path)),
            StateStore::Postgres { .. } => Ok(()),
        };
        if let Err(why) = writable {
            return Check::fail(
                None,
                C,
                why,
                "a run writes its journal and lock there: fix the folder's owner or mode",
            );
        }
        match backend.lock_status() {
            Err(e) => Check::fail(None, C, e.to_string(), ""),
            Ok(Some(crate::state::LockStatus::Live(h))) => Check::fail(
                None,
                C,
                format!("the deploy lock is {} ({})", h.holder.describe(), h.note),
                "wait for that run (run --lock-wait 10m), or `rollscript unlock` once it is gone",
            ),
            Ok(Some(crate::state::LockStatus::Stale(h, why))) => Check::ok(
                None,
                C,
                format!(
                    "{} writable; a stale lock ({}: {why}) will be taken over",
                    backend.describe(),
                    h.describe()
                ),
            ),
            Ok(None) => Check::ok(
                None,
                C,
                format!("{} writable, deploy lock free", backend.describe()),
            ),
        }
    })
    .await;
    found.unwrap_or_else(|e| Check::fail(None, C, format!("state check panicked: {e}"), ""))
}

/// The folder, or the nearest one above it a run would create it in, is
/// writable (access(2): nothing is created).
fn writable(dir: &std::path::Path) -> Result<(), String> {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = std::path::Path::new(".");
                break;
            }
        }
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} is no usable path", at.display()))?;
    // SAFETY: access(2) on a NUL-terminated path we own.
    match unsafe { libc::access(c.as_ptr(), libc::W_OK) } {
        0 => Ok(()),
        _ => Err(format!(
            "{} is not writable: {}",
            at.display(),
            std::io::Error::last_os_error()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_program_is_found_after_cd_and_assignments() {
        assert_eq!(
            deploy_probe("cd /home/ubuntu/credit_radar && ./deploy.sh"),
            Some(DeployProbe {
                dir: Some("/home/ubuntu/credit_radar".into()),
                program: "./deploy.sh".into()
            })
        );
        assert_eq!(
            deploy_probe("RELEASE=2 sudo /srv/app/bin/deploy --fast"),
            Some(DeployProbe {
                dir: None,
                program: "/srv/app/bin/deploy".into()
            })
        );
        assert_eq!(deploy_probe("  "), None);
    }

    #[test]
    fn the_probe_quotes_what_it_checks_and_keeps_home_relative_paths() {
        let p = DeployProbe {
            dir: Some("~/my app".into()),
            program: "./deploy.sh".into(),
        };
        assert_eq!(
            probe_script(&p),
            "cd \"$HOME\"/'my app' 2>/dev/null || exit 3; test -f ./deploy.sh && test -x ./deploy.sh || exit 4"
        );
        let p = DeployProbe {
            dir: None,
            program: "make".into(),
        };
        assert_eq!(
            probe_script(&p),
            "command -v make >/dev/null 2>&1 || exit 4"
        );
    }
}
