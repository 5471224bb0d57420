//! The HAProxy runtime API socket (unix path or `host:port`): one command
//! line per connection, as HAProxy's non-interactive CLI expects, with a
//! bound on every exchange and errors that say how to declare the socket.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::format_duration;
use crate::primitives::{ActionError, ActionResult, ErrorKind};

/// How long one runtime-API exchange may take. HAProxy answers from memory
/// in microseconds; anything near this means it is wedged or not HAProxy.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the runtime API listens: a unix socket path or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// `host:port` when it ends in a port number and is not a path; the
    /// `unix@` and `ipv4@`/`ipv6@` prefixes of haproxy.cfg are accepted too.
    fn parse(text: &str) -> Self {
        if let Some(path) = text.strip_prefix("unix@") {
            return Self::Unix(PathBuf::from(path));
        }
        for prefix in ["ipv4@", "ipv6@", "tcp@"] {
            if let Some(addr) = text.strip_prefix(prefix) {
                return Self::Tcp(addr.to_string());
            }
        }
        let tcp = !text.contains('/')
            && text
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if tcp {
            Self::Tcp(text.to_string())
        } else {
            Self::Unix(PathBuf::from(text))
        }
    }
}

/// One command per connection: HAProxy's CLI answers and closes.
pub(super) struct RuntimeApi {
    endpoint: Endpoint,
    /// As written in the inventory, for messages.
    text: String,
}

impl fmt::Display for RuntimeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl RuntimeApi {
    pub(super) fn new(socket: &str) -> Self {
        Self {
            endpoint: Endpoint::parse(socket),
            text: socket.to_string(),
        }
    }

    /// Sends one line (commands may be `;`-separated) and returns the reply,
    /// trimmed: empty means every command succeeded.
    pub(super) async fn send(&self, line: &str) -> ActionResult<String> {
        debug_assert!(!line.contains('\n'), "one line per connection");
        let exchange = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.cannot_connect(&e))?;
                    self.exchange(s, line).await
                }
                Endpoint::Tcp(addr) => {
                    let s = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(|e| self.cannot_connect(&e))?;
                    self.exchange(s, line).await
                }
            }
        };
        match tokio::time::timeout(API_TIMEOUT, exchange).await {
            Ok(reply) => reply,
            // Connected and maybe sent: whether HAProxy acted is unknown.
            Err(_) => Err(ActionError::new(
                ErrorKind::Lb,
                format!(
                    "HAProxy runtime API at {self} did not answer within {}",
                    format_duration(API_TIMEOUT)
                ),
            )
            .command(line)
            .outcome_unknown()),
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut s: S,
        line: &str,
    ) -> ActionResult<String> {
        let io = |e: std::io::Error| {
            ActionError::new(
                ErrorKind::Lb,
                format!("HAProxy runtime API at {self}: {}", io_text(&e)),
            )
            .command(line)
        };
        // A failed write may still have delivered the line; a failed read
        // certainly came after it: either way HAProxy may have acted.
        s.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| io(e).outcome_unknown())?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)
            .await
            .map_err(|e| io(e).outcome_unknown())?;
        Ok(String::from_utf8_lossy(&reply).trim().to_string())
    }

    fn cannot_connect(&self, e: &std::io::Error) -> ActionError {
        let declare = match &self.endpoint {
            Endpoint::Unix(p) => format!("stats socket {} level admin", p.display()),
            Endpoint::Tcp(a) => format!("stats socket ipv4@{a} level admin"),
        };
        let also = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " — rollscript's user needs read and write access to the socket (its `mode`/`user`/`group` in haproxy.cfg)"
                .to_string()
        } else {
            format!(" — is HAProxy running, with `{declare}` in its global section?")
        };
        ActionError::new(
            ErrorKind::Lb,
            format!(
                "cannot connect to HAProxy runtime API at {self}: {}{also}",
                io_text(e)
            ),
        )
        .detail("socket", &self.text)
    }
}

/// An io error without Rust's "(os error 2)" suffix.
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_endpoints() {
        assert_eq!(
            Endpoint::parse("/run/haproxy/admin.sock"),
            Endpoint::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("admin.sock"),
            Endpoint::Unix("admin.sock".into())
        );
        assert_eq!(
            Endpoint::parse("127.0.0.1:9999"),
            Endpoint::Tcp("127.0.0.1:9999".into())
        );
        assert_eq!(
            Endpoint::parse("ipv4@10.0.0.1:9999"),
            Endpoint::Tcp("10.0.0.1:9999".into())
        );
        assert_eq!(Endpoint::parse("unix@/a:1"), Endpoint::Unix("/a:1".into()));
    }
}
