//! Opening a host's master: the `ssh -M -f -N` arguments (only what
//! rollscript must decide; the rest comes from the ssh config), launching it
//! under a bound, and turning ssh's log of a failed connect into an error
//! kind and a message that says what to do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use openssh::Session;
use tracing::{debug, info};

use super::pool::{make_control_dir, Master};
use super::SshTransport;
use crate::config::{format_duration, HostKeyPolicy, Instance, SshSettings};
use crate::primitives::{ActionError, ActionResult, ErrorKind};

/// How long a master with no open session stays up (`ControlPersist`). A
/// later command reconnects transparently; the bound keeps a master orphaned
/// by a `kill -9` of rollscript from holding a connection for good.
const MASTER_IDLE: Duration = Duration::from_secs(600);

/// Keepalives on the master, so a host that vanishes mid-command is noticed
/// within about a minute rather than at `command_timeout`.
const SERVER_ALIVE_INTERVAL: u64 = 15;
const SERVER_ALIVE_COUNT_MAX: u64 = 4;

impl SshTransport {
    /// Starts `ssh -M -f -N` for `inst`; it forks into the background once
    /// authenticated, and its log tells why when it could not.
    pub(super) async fn connect(&self, inst: &Instance) -> ActionResult<Master> {
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
    fn known_hosts_names_use_brackets_off_port_22() {
        assert_eq!(target("port = 22").known_hosts_name(), "10.0.1.10");
        assert_eq!(target("port = 2200").known_hosts_name(), "[10.0.1.10]:2200");
    }
}
