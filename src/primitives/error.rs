//! The one error type every primitive returns. Scripts see it as a map
//! (`e.kind`, `e.host`, `e.message`, …) so they can branch on `kind`.

use std::fmt;

/// Stable, documented error kinds. Scripts compare against these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A remote or local command exited non-zero.
    CommandFailed,
    /// A command, wait or request ran past its limit.
    Timeout,
    ConnectionRefused,
    ConnectTimeout,
    AuthFailed,
    HostKeyUnknown,
    HostKeyChanged,
    SshMissing,
    /// The host name does not resolve.
    Dns,
    /// Any other failure to reach the host.
    Unreachable,
    HealthFailed,
    /// The load balancer refused or failed a request.
    Lb,
    /// Draining did not finish within `drain_timeout`.
    DrainTimeout,
    /// The capacity guard refused to take an instance out.
    Capacity,
    /// A gate (canary metrics, Prometheus) saw numbers past its threshold.
    GateFailed,
    /// Ctrl-C, SIGTERM, or the operator said no.
    Cancelled,
    /// `rollscript abort` (from any machine): the run stops like a failed gate.
    Aborted,
    /// The script passed a bad argument (unknown instance, bad duration, …).
    InvalidArgument,
    /// Another run holds a lock this step needs (the migration lock).
    Locked,
    /// Raised with `throw` or `fail` by a script or the stdlib.
    Script,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CommandFailed => "command_failed",
            Self::Timeout => "timeout",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::AuthFailed => "auth_failed",
            Self::HostKeyUnknown => "host_key_unknown",
            Self::HostKeyChanged => "host_key_changed",
            Self::SshMissing => "ssh_missing",
            Self::Dns => "dns",
            Self::Unreachable => "unreachable",
            Self::HealthFailed => "health_failed",
            Self::Lb => "lb_error",
            Self::DrainTimeout => "drain_timeout",
            Self::Capacity => "capacity",
            Self::GateFailed => "gate_failed",
            Self::Cancelled => "cancelled",
            Self::Aborted => "aborted",
            Self::InvalidArgument => "invalid_argument",
            Self::Locked => "locked",
            Self::Script => "script",
        }
    }

    /// The remote command never started: ssh could not connect or log in.
    /// An instance is not "touched" by a command that failed this way.
    pub fn command_never_started(self) -> bool {
        matches!(
            self,
            Self::ConnectionRefused
                | Self::ConnectTimeout
                | Self::AuthFailed
                | Self::HostKeyUnknown
                | Self::HostKeyChanged
                | Self::SshMissing
                | Self::Dns
        )
    }

    pub const ALL: [ErrorKind; 20] = [
        Self::CommandFailed,
        Self::Timeout,
        Self::ConnectionRefused,
        Self::ConnectTimeout,
        Self::AuthFailed,
        Self::HostKeyUnknown,
        Self::HostKeyChanged,
        Self::SshMissing,
        Self::Dns,
        Self::Unreachable,
        Self::HealthFailed,
        Self::Lb,
        Self::DrainTimeout,
        Self::Capacity,
        Self::GateFailed,
        Self::Cancelled,
        Self::Aborted,
        Self::InvalidArgument,
        Self::Locked,
        Self::Script,
    ];
}

/// What went wrong, where, and enough output to act on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionError {
    pub kind: ErrorKind,
    pub message: String,
    /// Instance name (or LB / URL) the failure is about.
    pub host: Option<String>,
    pub command: Option<String>,
    pub status: Option<i32>,
    /// Last lines of stderr (at most 20).
    pub stderr: Vec<String>,
    /// Free-form numbers a script may want (gate readings, attempts).
    pub details: Vec<(String, String)>,
    /// A load-balancer change whose result is unknown: the request may have
    /// taken effect (a timeout or I/O error after it was sent). Compensation
    /// and `recover` read the LB's real state before deciding.
    pub unknown_outcome: bool,
}

impl ActionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            host: None,
            command: None,
            status: None,
            stderr: Vec::new(),
            details: Vec::new(),
            unknown_outcome: false,
        }
    }

    /// Marks the request as possibly applied (sent, answer unknown).
    pub fn outcome_unknown(mut self) -> Self {
        self.unknown_outcome = true;
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.command = Some(command.into());
        self
    }

    pub fn status(mut self, status: i32) -> Self {
        self.status = Some(status);
        self
    }

    pub fn detail(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.details.push((key.into(), value.to_string()));
        self
    }

    /// Keeps the last 20 lines of `stderr`: enough to diagnose, bounded in size.
    pub fn stderr_tail(mut self, stderr: &str) -> Self {
        self.stderr = tail_lines(stderr, 20);
        self
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "interrupted")
    }
}

pub fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(status) = self.status {
            write!(f, " (exit status {status})")?;
        }
        if let Some(cmd) = &self.command {
            write!(f, "\n  command: {cmd}")?;
        }
        if !self.stderr.is_empty() {
            write!(f, "\n  stderr (last {} lines):", self.stderr.len())?;
            for l in &self.stderr {
                write!(f, "\n    {l}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ActionError {}

pub type ActionResult<T> = Result<T, ActionError>;
