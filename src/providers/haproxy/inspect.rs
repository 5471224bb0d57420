//! Read-only questions `rollscript init` and `rollscript doctor` ask the
//! runtime API: which servers a backend holds (name, address, port, state),
//! and at which level the socket answers.

use super::commands::{hint_for, show_servers_state_cmd};
use super::runtime_api::RuntimeApi;
use crate::primitives::{ActionError, ActionResult, ErrorKind};

/// One server of a backend, from `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendServer {
    pub name: String,
    /// The address HAProxy routes to (resolved, when haproxy.cfg names a host).
    pub addr: String,
    pub port: u16,
    /// `srv_fqdn` when haproxy.cfg names the server by host name.
    pub fqdn: Option<String>,
    /// Put out of rotation by an operator: `MAINT` or `DRAIN` (else None).
    pub parked: Option<&'static str>,
}

/// The servers of `backend`, in haproxy.cfg order.
pub async fn backend_servers(socket: &str, backend: &str) -> ActionResult<Vec<BackendServer>> {
    let api = RuntimeApi::new(socket);
    let cmd = show_servers_state_cmd(backend)?;
    let reply = api.send(&cmd).await?;
    parse_servers_state(&reply, backend).map_err(|why| {
        ActionError::new(
            ErrorKind::Lb,
            format!("HAProxy at {api}: {why}{}", hint_for(&reply, backend, "")),
        )
        .command(cmd)
    })
}

/// The socket's level (`admin`, `operator`, `user`): `show cli level`,
/// which HAProxy 2.0 and later answer at every level and which changes
/// nothing. None when HAProxy does not know the command (older versions).
pub async fn cli_level(socket: &str) -> ActionResult<Option<String>> {
    let reply = RuntimeApi::new(socket).send("show cli level").await?;
    let level = reply.trim();
    Ok(matches!(level, "admin" | "operator" | "user").then(|| level.to_string()))
}

/// `show servers state` (format 1): columns 4 srv_name, 5 srv_addr,
/// 7 srv_admin_state, 18 srv_fqdn, 19 srv_port, as HAProxy 1.8 and later print them.
fn parse_servers_state(reply: &str, backend: &str) -> Result<Vec<BackendServer>, String> {
    let mut lines = reply.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some("1") => {}
        Some(l) if l.starts_with("Can't find backend") => {
            return Err(format!("haproxy.cfg has no backend {backend}"))
        }
        Some(l) => return Err(format!("unexpected reply to `show servers state`: {l:?}")),
        None => return Err("empty reply to `show servers state`".into()),
    }
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            return Err(format!("unexpected `show servers state` line: {line:?}"));
        }
        if f[1] != backend {
            continue;
        }
        let admin: u32 = f[6].parse().unwrap_or(0);
        // srv_admin_state bits: maint forced (0x01), inherited (0x02), by
        // config `disabled` (0x04), by DNS resolution (0x20); drain forced
        // (0x08) or inherited (0x10).
        let parked = if admin & 0x27 != 0 {
            Some("MAINT")
        } else if admin & 0x18 != 0 {
            Some("DRAIN")
        } else {
            None
        };
        out.push(BackendServer {
            name: f[3].to_string(),
            addr: f[4].to_string(),
            port: f[18]
                .parse()
                .map_err(|_| format!("server {} has no port: {line:?}", f[3]))?,
            fqdn: (f[17] != "-").then(|| f[17].to_string()),
            parked,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As HAProxy 2.6 prints it: web-2 is `disabled` in haproxy.cfg.
    const REPLY: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n2 web 1 web-1 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 9991 - 0 0 - - 0\n2 web 2 web-2 127.0.0.1 0 5 1 1 0 1 0 0 8 0 0 0 - 9992 - 0 0 - - 0\n";

    #[test]
    fn servers_state_gives_names_addresses_ports_and_parked_servers() {
        let got = parse_servers_state(REPLY, "web").unwrap();
        assert_eq!(
            got,
            vec![
                BackendServer {
                    name: "web-1".into(),
                    addr: "127.0.0.1".into(),
                    port: 9991,
                    fqdn: None,
                    parked: None
                },
                BackendServer {
                    name: "web-2".into(),
                    addr: "127.0.0.1".into(),
                    port: 9992,
                    fqdn: None,
                    parked: Some("MAINT")
                },
            ]
        );
    }

    #[test]
    fn an_unknown_backend_is_named() {
        assert_eq!(
            parse_servers_state("Can't find backend.\n", "nope").unwrap_err(),
            "haproxy.cfg has no backend nope"
        );
    }
}
