//! Established TCP connections from one host to one `host:port`, counted
//! with iproute2's `ss` on that host (locally or over ssh): how a drain
//! knows a server is done when the LB does not report it per server (nginx
//! open source; ELBv2 targets seen from the instance).

use std::time::Duration;

use crate::config::Instance;
use crate::primitives::{ActionError, Cmd, ErrorKind, Transport};

/// `ss -Htn state established '( dport = :PORT )' dst HOST`: one line per
/// connection, no header. Built as argv, so the host arrives as data.
pub fn count_cmd(host: &str, port: u16) -> Cmd {
    let dst = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Cmd::Argv(vec![
        "ss".into(),
        "-Htn".into(),
        "state".into(),
        "established".into(),
        format!("( dport = :{port} )"),
        "dst".into(),
        dst,
    ])
}

/// The connections in `ss -H` output.
pub fn parse_count(stdout: &str) -> u64 {
    stdout.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// Why counting failed; `Missing` lets a caller fall back to another way.
#[derive(Debug)]
pub enum CountError {
    /// No `ss` on that host (iproute2 not installed).
    Missing(ActionError),
    Other(ActionError),
}

impl From<CountError> for ActionError {
    fn from(e: CountError) -> Self {
        match e {
            CountError::Missing(e) | CountError::Other(e) => e,
        }
    }
}

/// The connections `on` (through `transport`) has open to `host:port`.
pub async fn established(
    transport: &dyn Transport,
    on: &Instance,
    host: &str,
    port: u16,
) -> Result<u64, CountError> {
    let cmd = count_cmd(host, port);
    let out = transport
        .exec(on, &cmd, Duration::from_secs(30))
        .await
        .map_err(CountError::Other)?;
    match out.status {
        0 => Ok(parse_count(&out.stdout)),
        127 => Err(CountError::Missing(
            ActionError::new(
                ErrorKind::Lb,
                format!(
                    "`ss` is not installed on {} (iproute2): cannot count connections to {host}:{port}",
                    on.name
                ),
            )
            .command(cmd.to_shell())
            .status(127),
        )),
        n => Err(CountError::Other(
            ActionError::new(
                ErrorKind::Lb,
                format!("cannot count connections to {host}:{port} on {}", on.name),
            )
            .command(cmd.to_shell())
            .status(n)
            .stderr_tail(&out.stderr),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_command_names_one_server_and_quotes_the_filter() {
        assert_eq!(
            count_cmd("127.0.1.3", 4000).to_shell(),
            "ss -Htn state established '( dport = :4000 )' dst 127.0.1.3"
        );
        assert_eq!(
            count_cmd("::1", 80).to_shell(),
            "ss -Htn state established '( dport = :80 )' dst '[::1]'"
        );
    }

    #[test]
    fn each_line_of_ss_is_one_connection() {
        let out = "0      0      127.0.0.1:51234   127.0.1.3:4000\n0      0      127.0.0.1:51240   127.0.1.3:4000\n";
        assert_eq!(parse_count(out), 2);
        assert_eq!(parse_count(""), 0);
    }
}
