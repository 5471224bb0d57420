//! The runtime-API command lines rollscript sends, built as plain data by
//! side-effect-free functions from checked names, so what is sent is exactly
//! what the plan and the tests see; and hints for HAProxy's terse refusals.

use crate::primitives::{ActionError, ErrorKind};

/// HAProxy's reply when a backend has no server of the given name.
pub(super) const NO_SUCH_SERVER: &str = "No such server.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AdminState {
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
pub(super) struct BadName(String);

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

pub(super) fn set_state_cmd(
    backend: &str,
    server: &str,
    state: AdminState,
) -> Result<String, BadName> {
    Ok(format!(
        "set server {}/{} state {}",
        checked("backend", backend)?,
        checked("server", server)?,
        state.as_str()
    ))
}

/// `weight`: 0-256, or a percentage of the configured weight ("100%").
pub(super) fn set_weight_cmd(backend: &str, server: &str, weight: &str) -> Result<String, BadName> {
    Ok(format!(
        "set server {}/{} weight {weight}",
        checked("backend", backend)?,
        checked("server", server)?
    ))
}

/// `4 -1`: servers only, all of them.
pub(super) fn show_stat_cmd(backend: &str) -> Result<String, BadName> {
    Ok(format!("show stat {} 4 -1", checked("backend", backend)?))
}

/// `show servers state BACKEND`: names, addresses and ports, one line each.
pub(super) fn show_servers_state_cmd(backend: &str) -> Result<String, BadName> {
    Ok(format!(
        "show servers state {}",
        checked("backend", backend)?
    ))
}

/// What the operator can do about a refusal HAProxy explains only tersely.
pub(super) fn hint_for(reply: &str, backend: &str, server: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
