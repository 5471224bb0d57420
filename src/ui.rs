//! Terminal output: the log subscriber (text or JSON on stderr), live
//! progress bars when stderr is a terminal, and prompts that pause them.
//!
//! Log lines go through [`LineWriter`], which prints each line with the bars
//! suspended, so lines appear above the bars and never tear them. Without a
//! terminal there are no bars and no control codes: plain timestamped lines.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::format_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The bars' owner, when stderr is a terminal and the format is text.
static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// The log format chosen at start: text lines or JSON objects.
static FORMAT: OnceLock<Format> = OnceLock::new();

fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Text)
}

fn multi() -> Option<&'static MultiProgress> {
    MULTI.get()
}

/// Installs the global subscriber. `verbosity`: -1 quiet, 0 normal, 1+ verbose.
pub fn init_logging(format: Format, verbosity: i8) {
    let _ = FORMAT.set(format);
    let level = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("ROLLSCRIPT_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},aws=warn,aws_smithy_runtime=warn,aws_config=warn,hyper=warn,reqwest=warn,rustls=warn,h2=warn"
        ))
    });
    let timer = fmt::time::UtcTime::new(time::macros::format_description!(
        "[hour]:[minute]:[second].[subsecond digits:3]"
    ));
    let tty = std::io::stderr().is_terminal();
    let color = tty && std::env::var_os("NO_COLOR").is_none();
    if tty && format == Format::Text && verbosity >= 0 {
        let _ = MULTI.set(MultiProgress::with_draw_target(
            ProgressDrawTarget::stderr_with_hz(10),
        ));
    }
    let builder = fmt().with_env_filter(filter).with_writer(LineWriter);
    let _ = match format {
        // Machines get the full date, as every record of docs/logs.md has.
        Format::Json => builder
            .with_timer(fmt::time::UtcTime::rfc_3339())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        Format::Text => builder
            .with_timer(timer)
            .with_target(false)
            .with_ansi(color)
            .try_init(),
    };
}

/// A writer that hands each complete line to stderr with the bars
/// suspended, secrets masked ([`crate::redact`]).
#[derive(Clone, Copy)]
pub struct LineWriter;

pub struct LineBuffer {
    bytes: Vec<u8>,
    /// A script's log line while script logs are muted.
    discard: bool,
}

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.discard {
            return;
        }
        let bytes = std::mem::take(&mut self.bytes);
        let text = crate::redact::redact(&String::from_utf8_lossy(&bytes));
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
        };
        match multi() {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer {
            bytes: Vec::with_capacity(256),
            discard: false,
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineBuffer {
            bytes: Vec::with_capacity(256),
            discard: meta.target() == "script" && MUTE_SCRIPT.load(Ordering::SeqCst),
        }
    }
}

static MUTE_SCRIPT: AtomicBool = AtomicBool::new(false);

/// Silences a script's own log lines (`info`, `warn`, `print`) while on:
/// `recover` runs the dead run's script as a dry run only to find its
/// `on_compensate` step, and its messages would read as if it deployed.
pub fn mute_script_logs(on: bool) {
    MUTE_SCRIPT.store(on, Ordering::SeqCst);
}

/// Whether live progress bars are drawn (stderr is a terminal, text logs).
pub fn has_progress() -> bool {
    multi().is_some()
}

/// Runs `f` (a prompt) with the bars hidden, so the question is not
/// overwritten by a redraw.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match multi() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// Prints a failure once: as a terminal shows it, or with JSON logs as one
/// `{"level":"ERROR","type":"error",…}` object, so every line of stderr
/// stays JSON.
pub fn report_failure(f: &crate::outcome::Failure) {
    match format() {
        Format::Text => eprint_above(&crate::redact::redact(&f.to_string())),
        Format::Json => json_line(serde_json::json!({
            "level": "ERROR",
            "type": "error",
            "message": f.problems.join("; "),
            "problems": f.problems,
            "hint": f.hint,
            "exit_code": f.outcome.exit_code(),
        })),
    }
}

/// Asks a yes/no question on the terminal (stderr), reading one line of
/// stdin: `y`, `yes` or `Y` is yes, anything else no.
pub fn ask(question: &str) -> bool {
    suspend(|| {
        eprint!("{question}");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        matches!(line.trim(), "y" | "yes" | "Y")
    })
}

/// The run summary: the table with text logs, a `summary` record with JSON.
pub fn summary(table: &str, record: &serde_json::Value) {
    match format() {
        Format::Text => eprint_above(table),
        Format::Json => {
            let mut record = record.clone();
            record["level"] = "INFO".into();
            record["message"] = "run summary".into();
            json_line(record);
        }
    }
}

/// One JSON object on stderr, stamped like the log's own records.
fn json_line(mut record: serde_json::Value) {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    record["timestamp"] = now.into();
    let line = crate::redact::redact(&record.to_string());
    eprint_above(&format!("{line}\n"));
}

/// Prints `text` to stderr above the bars.
pub fn eprint_above(text: &str) {
    suspend(|| {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    });
}

/// Live progress of a run: an overall bar and one line per active instance,
/// refreshed from the ledger. A no-op without a terminal.
pub struct Progress {
    stop: Arc<Mutex<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// `estimate`: the plan's typical duration, for the ETA before (and
    /// blended with) what the run so far shows. `status`: what the operator
    /// said (`paused by ops@laptop since 15:04:05`), shown instead of the ETA.
    pub fn start(
        ledger: Arc<dyn Fn() -> crate::ledger::Snapshot + Send + Sync>,
        status: Arc<dyn Fn() -> Option<String> + Send + Sync>,
        total: usize,
        estimate: Option<Duration>,
    ) -> Self {
        let stop = Arc::new(Mutex::new(false));
        let Some(m) = multi() else {
            return Self { stop, thread: None };
        };
        let overall = m.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} instances · {elapsed_precise} elapsed · {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let stop2 = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut lines: Vec<ProgressBar> = Vec::new();
            loop {
                let snap = ledger();
                let done = snap.iter().filter(|(_, e)| e.finished()).count();
                overall.set_position(done as u64);
                let eta = eta(started.elapsed(), done, total, estimate)
                    .map(|d| format!("ETA {}", format_duration(Duration::from_secs(d.as_secs()))))
                    .unwrap_or_default();
                overall.set_message(status().unwrap_or(eta));
                let active: Vec<String> = snap
                    .iter()
                    .filter_map(|(n, e)| {
                        e.current.map(|step| {
                            let since = e.step_started.map(|t| t.elapsed()).unwrap_or_default();
                            let detail = e
                                .detail
                                .as_ref()
                                .map(|d| format!(" · {d}"))
                                .unwrap_or_default();
                            format!(
                                "{n} · {} {}{detail}",
                                step_word(step),
                                format_duration(Duration::from_secs(since.as_secs()))
                            )
                        })
                    })
                    .collect();
                while lines.len() < active.len() {
                    let pb = m.add(ProgressBar::new_spinner());
                    pb.set_style(
                        ProgressStyle::with_template("  {spinner} {msg}").expect("valid template"),
                    );
                    lines.push(pb);
                }
                while lines.len() > active.len() {
                    let pb = lines.pop().unwrap();
                    pb.finish_and_clear();
                    m.remove(&pb);
                }
                for (pb, text) in lines.iter().zip(active) {
                    pb.set_message(text);
                    pb.tick();
                }
                if *stop2.lock().unwrap() {
                    for pb in lines {
                        pb.finish_and_clear();
                        m.remove(&pb);
                    }
                    overall.finish_and_clear();
                    m.remove(&overall);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) {
        *self.stop.lock().unwrap() = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Time left: from the plan's estimate until an instance finished, then the
/// run's own pace (which already includes the real LB and app timings).
pub fn eta(
    elapsed: Duration,
    done: usize,
    total: usize,
    estimate: Option<Duration>,
) -> Option<Duration> {
    if done >= total {
        return None;
    }
    if done == 0 {
        return estimate.map(|e| e.saturating_sub(elapsed));
    }
    let per = elapsed / done as u32;
    Some(per * (total - done) as u32)
}

fn step_word(op: &str) -> &str {
    match op {
        "deregister" => "deregistering",
        "wait_drained" => "draining",
        "ssh" => "running command",
        "health" => "health check",
        "register" => "registering",
        "wait_in_service" => "waiting for LB health",
        "set_weight" => "setting weight",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::eta;
    use std::time::Duration;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn eta_uses_the_plan_until_the_run_shows_its_pace() {
        assert_eq!(eta(s(10), 0, 4, Some(s(60))), Some(s(50)));
        assert_eq!(eta(s(10), 0, 4, None), None);
        assert_eq!(eta(s(20), 2, 4, Some(s(600))), Some(s(20)));
        assert_eq!(eta(s(20), 4, 4, Some(s(60))), None);
    }
}
