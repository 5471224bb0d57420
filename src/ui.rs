//! Terminal output: the log subscriber (text or JSON on stderr) and prompts.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Installs the global subscriber. `verbosity`: -1 quiet, 0 normal, 1+ verbose.
pub fn init_logging(format: Format, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("ROLLSCRIPT_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},aws=warn,hyper=warn,reqwest=warn,rustls=warn,h2=warn"
        ))
    });
    let timer = fmt::time::UtcTime::new(time::macros::format_description!(
        "[hour]:[minute]:[second].[subsecond digits:3]"
    ));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_timer(timer);
    let _ = match format {
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        Format::Text => builder.with_target(false).with_ansi(color).try_init(),
    };
}

/// Runs `f` (a prompt) with live output paused, so the question is not
/// overwritten by progress lines.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    f()
}
