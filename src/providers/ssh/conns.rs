//! Established TCP connections to one port of an instance, counted on the
//! instance itself (`ss`) over its ssh master: what a load balancer that
//! keeps a target `draining` for a fixed delay cannot tell, whether anything
//! is still connected.
//!
//! The count is every connection in state ESTABLISHED whose local port is the
//! traffic port (`ss -Htn state established '( sport = :PORT )'`), on any
//! address when the app listens on a wildcard address, else on the
//! instance's own address (`host`): another listener on the same port
//! number at another address is not the app's. When nothing listens on the
//! port at a wildcard or the instance's address, there is no count. Nothing is excluded by address, because the rule that
//! keeps the deploy machine out of the count is that rollscript holds no
//! connection to the port during a drain: its health probes open a fresh
//! connection each and keep none idle (`providers::http`), and a drain runs
//! no probe. Excluding by address would also hide real clients that share
//! it (on loopback every client is 127.0.0.1; behind NAT, many are one), and
//! a count too low ends a drain under a live request, while a count too high
//! only falls back to the LB's own timer.
//!
//! A count is only trusted where something listens on the port in the
//! namespace `ss` sees: an app in a container whose port is published by
//! NAT keeps its connections out of the host's view, and a count of 0 there
//! would end a drain under live requests. (A userland proxy such as
//! `docker-proxy` listens on the host while NATed connections bypass it:
//! set `lb.drain_detect = "lb"` for such apps.)
//!
//! The count travels as the command's exit status, so that polling it
//! several times a second prints (and logs) nothing.

use std::time::Duration;

use crate::config::Instance;
use crate::primitives::{sh_quote, ActionError, ActionResult, Cmd, ErrorKind, Transport};

/// Counts at or above this are reported as this (the exit status is a byte).
pub const COUNT_CAP: u32 = 99;
/// Exit status: `ss` is not installed on the host (iproute2 missing).
const NO_SS: i32 = 120;
/// Exit status: `ss` ran and failed (its stderr says why).
const SS_FAILED: i32 = 121;
/// Exit status: nothing listens on the port in the host's network namespace.
const NO_LISTENER: i32 = 122;

/// How long one count may take: a loaded host still answers in well under
/// a second; a count that takes longer is treated as a failed count.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one count found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostConns {
    /// Established connections to the port (capped at [`COUNT_CAP`]).
    Established(u32),
    /// The host has no `ss`: its connections cannot be counted.
    NoSs,
    /// Nothing listens on the port where `ss` looks (the app runs in a
    /// container behind NAT, or the LB's port is not the app's): a count of
    /// 0 there would prove nothing.
    NoListener,
}

/// awk over the listeners, a `--` line, then the established connections,
/// with `me` the instance's `address:port`: counts the connections to the
/// app's listener — every one on the port when it listens on a wildcard
/// address, else those to `me` — and prints `none` when no listener is the
/// app's (on `me` or a wildcard).
const SAME_LISTENER: &str = "m == 0 && $0 == \"--\" { m = 1; next } \
    m == 0 && NF >= 4 { if ($4 ~ /^(0\\.0\\.0\\.0|\\*|\\[::\\]):/) any = 1; else if ($4 == me) mine = 1; next } \
    m == 1 && NF >= 3 && (any || $3 == me) { c++ } \
    END { if (!any && !mine) print \"none\"; else print c + 0 }";

/// The shell line that counts established connections to `port` of the
/// instance at `host` and exits with the count (see the module doc for the
/// statuses).
pub fn count_command(host: &str, port: u16) -> Cmd {
    // How ss shows a local address: `10.0.1.10:4000`, `[fd00::1]:4000`.
    let me = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Cmd::Shell(format!(
        "command -v ss >/dev/null 2>&1 || exit {NO_SS}; \
         l=$(ss -Htln '( sport = :{port} )') || exit {SS_FAILED}; [ -n \"$l\" ] || exit {NO_LISTENER}; \
         out=$(ss -Htn state established '( sport = :{port} )') || exit {SS_FAILED}; \
         n=$({{ printf '%s\\n' \"$l\"; echo --; printf '%s\\n' \"$out\"; }} | awk -v me={} '{SAME_LISTENER}') || exit {SS_FAILED}; \
         [ \"$n\" != none ] || exit {NO_LISTENER}; \
         [ \"$n\" -lt {COUNT_CAP} ] || n={COUNT_CAP}; exit \"$n\"",
        sh_quote(&me)
    ))
}

/// The count from the command's exit status and stderr.
pub fn read_count(
    inst: &Instance,
    port: u16,
    status: i32,
    stderr: &str,
) -> ActionResult<HostConns> {
    match status {
        0..=99 => Ok(HostConns::Established(status as u32)),
        NO_SS => Ok(HostConns::NoSs),
        NO_LISTENER => Ok(HostConns::NoListener),
        other => Err(ActionError::new(
            ErrorKind::CommandFailed,
            format!(
                "cannot count the connections to port {port} on {} ({})",
                inst.name,
                match other {
                    SS_FAILED => "`ss` failed".to_string(),
                    s => format!("exit status {s}"),
                }
            ),
        )
        .host(&inst.name)
        .command(count_command(&inst.host, port).to_shell())
        .status(other)
        .stderr_tail(stderr)),
    }
}

/// Counts the established connections to `port` on `inst`, over `ssh`.
pub async fn established(
    ssh: &dyn Transport,
    inst: &Instance,
    port: u16,
) -> ActionResult<HostConns> {
    let out = ssh
        .exec(inst, &count_command(&inst.host, port), COUNT_TIMEOUT)
        .await?;
    read_count(inst, port, out.status, &out.stderr)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn inst() -> Instance {
        Instance {
            name: "web-1".into(),
            host: "127.0.0.1".into(),
            port: None,
            ssh_port: None,
            health_port: None,
            id: None,
            pool: None,
            weight: None,
        }
    }

    /// Runs the count line in `sh` with `ss` replaced by a stub printing
    /// `lines` (or absent), as a host would.
    fn run_with_stub_ss(stub: Option<&str>) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        if let Some(body) = stub {
            let ss = dir.path().join("ss");
            std::fs::write(&ss, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ss, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Only the stub's folder and the basic tools: no real `ss`.
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let line = count_command("127.0.1.2", 4000).to_shell();
        let line = if stub.is_none() {
            // /usr/bin and /bin hold the real ss on this machine: hide it.
            line.replace("command -v ss", "command -v ss-not-installed")
        } else {
            line
        };
        Command::new("/bin/sh")
            .arg("-c")
            .arg(line)
            .env("PATH", path)
            .status()
            .unwrap()
            .code()
            .unwrap()
    }

    #[test]
    fn the_count_is_the_number_of_lines_ss_prints_as_the_exit_status() {
        let listening = "case \"$*\" in *-Htln*) echo 'LISTEN 0 128 *:4000 *:*'; exit 0;; esac";
        let with_listener = |rest: &str| format!("{listening}\n{rest}");
        let two =
            "printf '0 0 127.0.1.2:4000 127.0.0.1:51000\\n0 0 127.0.1.2:4000 127.0.0.1:51002\\n'";
        assert_eq!(run_with_stub_ss(Some(&with_listener(two))), 2);
        assert_eq!(run_with_stub_ss(Some(&with_listener("true"))), 0);
        assert_eq!(
            run_with_stub_ss(Some(&with_listener(
                "i=0; while [ $i -lt 150 ]; do echo \"0 0 127.0.1.2:4000 127.0.0.1:$i\"; i=$((i+1)); done"
            ))),
            99
        );
        assert_eq!(
            run_with_stub_ss(Some(&with_listener("echo 'bad filter' >&2; exit 1"))),
            121
        );
        // A listener on one address: connections to other addresses on the
        // same port (another app, another "host" of a loopback fleet) are not counted.
        let one_address = "case \"$*\" in *-Htln*) echo 'LISTEN 0 128 127.0.1.2:4000 0.0.0.0:*'; exit 0;; esac\n\
            printf '0 0 127.0.1.2:4000 127.0.0.1:51000\\n0 0 127.0.1.9:4000 127.0.0.1:51002\\n0 0 127.0.1.2:4000 127.0.0.1:51004\\n'";
        assert_eq!(run_with_stub_ss(Some(one_address)), 2);
        // Listening only at another address: not this instance's app.
        let elsewhere =
            one_address.replace("LISTEN 0 128 127.0.1.2:4000", "LISTEN 0 128 127.0.1.9:4000");
        assert_eq!(run_with_stub_ss(Some(&elsewhere)), 122);
        // Nothing listening: no count, whatever ss would say of established ones.
        let deaf = format!("case \"$*\" in *-Htln*) exit 0;; esac\n{two}");
        assert_eq!(run_with_stub_ss(Some(&deaf)), 122);
        assert_eq!(run_with_stub_ss(None), 120);
    }

    #[test]
    fn the_real_ss_counts_a_connection_to_a_listening_port() {
        if Command::new("ss").arg("-V").output().is_err() {
            return; // no iproute2 here: the stubbed test above covers the line
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let line = |p| count_command("127.0.0.1", p).to_shell();
        let count = |p| {
            Command::new("/bin/sh")
                .arg("-c")
                .arg(line(p))
                .status()
                .unwrap()
                .code()
                .unwrap()
        };
        assert_eq!(count(port), 0);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(count(closed), 122, "no listener on port {closed}");
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        // The server side (sport = port) only: the client's end has another local port.
        assert_eq!(count(port), 1);
    }

    #[test]
    fn statuses_map_to_counts_no_ss_or_an_error_naming_the_host() {
        let i = inst();
        assert_eq!(
            read_count(&i, 4000, 3, "").unwrap(),
            HostConns::Established(3)
        );
        assert_eq!(read_count(&i, 4000, 120, "").unwrap(), HostConns::NoSs);
        assert_eq!(
            read_count(&i, 4000, 122, "").unwrap(),
            HostConns::NoListener
        );
        let e = read_count(&i, 4000, 121, "ss: bad filter\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::CommandFailed);
        assert_eq!(e.host.as_deref(), Some("web-1"));
        assert_eq!(
            e.message,
            "cannot count the connections to port 4000 on web-1 (`ss` failed)"
        );
        let e = read_count(&i, 4000, 255, "").unwrap_err();
        assert!(e.message.ends_with("(exit status 255)"), "{}", e.message);
    }
}
