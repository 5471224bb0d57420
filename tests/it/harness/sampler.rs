//! An LB sampler: a thread that reads the real load balancer every 10 ms
//! for as long as a test runs, so "never fewer than N in service" is checked
//! at every instant of a run, not only at its end.
//!
//! HAProxy: `show stat BACKEND 4 -1` over the admin socket; a server counts
//! as in service when its status is `UP` or `UP n/m` (in rotation, a check
//! or two from going down) — not DRAIN, MAINT, DOWN or `DOWN n/m`. nginx: the
//! upstream include rollscript rewrites (atomically, so never half-read); a
//! server counts when it is not marked `down`.
//!
//! The report keeps every change of state with its time, for assertion
//! messages that show *when* capacity dropped.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the LB is read (the brief for these tests: at most 20 ms).
pub const PERIOD: Duration = Duration::from_millis(10);
/// The sampler stops on its own after this, if nobody stops it.
const MAX_RUN: Duration = Duration::from_secs(300);

/// What to read.
#[derive(Debug, Clone)]
pub enum LbSource {
    /// HAProxy's admin socket (a unix path) and the backend.
    Haproxy { socket: PathBuf, backend: String },
    /// nginx's upstream include file.
    Nginx { upstream_file: PathBuf },
    /// Several LBs read one after the other: a server (by name) is in
    /// service only when it is in service on every one; its state reads
    /// `UP|DRAIN`, one word per LB.
    All(Vec<LbSource>),
}

impl LbSource {
    /// Every server the LB holds: (name, raw state, in service). One read.
    pub fn read(&self) -> Result<Vec<ServerState>, String> {
        match self {
            Self::Haproxy { socket, backend } => {
                let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .map_err(|e| e.to_string())?;
                s.write_all(format!("show stat {backend} 4 -1\n").as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                let mut csv = String::new();
                s.read_to_string(&mut csv)
                    .map_err(|e| format!("read: {e}"))?;
                parse_show_stat(&csv)
            }
            Self::Nginx { upstream_file } => {
                let text = std::fs::read_to_string(upstream_file)
                    .map_err(|e| format!("{}: {e}", upstream_file.display()))?;
                Ok(parse_upstream(&text))
            }
            Self::All(sources) => {
                let mut out: Vec<ServerState> = Vec::new();
                for (i, source) in sources.iter().enumerate() {
                    for s in source.read()? {
                        match out.iter_mut().find(|o| o.name == s.name) {
                            Some(o) => {
                                o.state = format!("{}|{}", o.state, s.state);
                                o.in_service &= s.in_service;
                            }
                            // Missing from an earlier LB: not in service there.
                            None => out.push(ServerState {
                                in_service: s.in_service && i == 0,
                                ..s
                            }),
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// One server at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// HAProxy's server name, or the nginx server's address.
    pub name: String,
    /// `UP`, `UP 1/2`, `DRAIN`, `MAINT`, `DOWN`; nginx: `up` or `down`.
    pub state: String,
    pub in_service: bool,
}

/// HAProxy counts a server in service while it takes new sessions.
pub fn haproxy_in_service(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    match words.as_slice() {
        ["UP"] => true,
        ["UP", n] => n.contains('/'),
        _ => false,
    }
}

fn parse_show_stat(csv: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("`show stat` is not CSV: {csv:?}"))?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no {name} column in `show stat`"))
    };
    let (sv, st) = (col("svname")?, col("status")?);
    Ok(lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| {
            f.get(sv)
                .is_some_and(|n| *n != "BACKEND" && *n != "FRONTEND")
        })
        .map(|f| {
            let state = f.get(st).unwrap_or(&"").to_string();
            ServerState {
                name: f[sv].to_string(),
                in_service: haproxy_in_service(&state),
                state,
            }
        })
        .collect())
}

/// The `server` lines of an nginx upstream file.
pub fn parse_upstream(text: &str) -> Vec<ServerState> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter_map(|l| l.strip_prefix("server "))
        .map(|rest| {
            let words: Vec<&str> = rest.trim_end_matches(';').split_whitespace().collect();
            let down = words.contains(&"down");
            ServerState {
                name: words.first().unwrap_or(&"").to_string(),
                state: if down { "down" } else { "up" }.to_string(),
                in_service: !down,
            }
        })
        .collect()
}

/// One read of the LB.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the sampler started.
    pub at: Duration,
    /// The servers, or why the read failed.
    pub servers: Result<Vec<ServerState>, String>,
}

impl Sample {
    pub fn in_service(&self) -> Option<usize> {
        self.servers
            .as_ref()
            .ok()
            .map(|s| s.iter().filter(|x| x.in_service).count())
    }

    fn line(&self) -> String {
        match &self.servers {
            Ok(servers) => {
                let states: Vec<String> = servers
                    .iter()
                    .map(|s| format!("{}={}", s.name, s.state))
                    .collect();
                format!(
                    "{} in service: {}",
                    self.in_service().unwrap_or(0),
                    states.join(" ")
                )
            }
            Err(e) => format!("read failed: {e}"),
        }
    }
}

/// Reads `source` every [`PERIOD`] until stopped (or dropped).
pub struct LbSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl LbSampler {
    /// Starts sampling; the first read happens before this returns.
    pub fn start(source: LbSource) -> LbSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut n: u32 = 0;
            while !s.load(Ordering::SeqCst) && started.elapsed() < MAX_RUN {
                samples.push(Sample {
                    at: started.elapsed(),
                    servers: source.read(),
                });
                if n == 0 {
                    let _ = first_tx.send(());
                }
                n += 1;
                // On a fixed grid, so a slow read does not stretch the period.
                let next = started + PERIOD * n;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            samples
        });
        let _ = first_rx.recv_timeout(Duration::from_secs(10));
        LbSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns what it saw.
    pub fn stop(mut self) -> LbTimeline {
        self.finish()
    }

    fn finish(&mut self) -> LbTimeline {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        LbTimeline { samples }
    }
}

impl Drop for LbSampler {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish();
        }
    }
}

/// Everything a sampler saw.
pub struct LbTimeline {
    pub samples: Vec<Sample>,
}

impl LbTimeline {
    pub fn count(&self) -> usize {
        self.samples.len()
    }

    /// The fewest servers in service at any sample (reads that failed are
    /// not counted; [`Self::failed_reads`] says how many there were).
    pub fn min_in_service(&self) -> usize {
        self.samples
            .iter()
            .filter_map(Sample::in_service)
            .min()
            .unwrap_or(0)
    }

    pub fn failed_reads(&self) -> usize {
        self.samples.iter().filter(|s| s.servers.is_err()).count()
    }

    /// The longest time between two reads (shown in messages: a sampler
    /// starved of CPU sees less than it should).
    pub fn max_gap(&self) -> Duration {
        self.samples
            .windows(2)
            .map(|w| w[1].at.saturating_sub(w[0].at))
            .max()
            .unwrap_or_default()
    }

    /// The distinct states seen, in order (one entry: nothing ever changed).
    pub fn states(&self) -> Vec<Result<Vec<ServerState>, String>> {
        let mut out: Vec<Result<Vec<ServerState>, String>> = Vec::new();
        for s in &self.samples {
            if out.last() != Some(&s.servers) {
                out.push(s.servers.clone());
            }
        }
        out
    }

    /// Whether any sample saw `server` in `state` (e.g. `("web-2", "DRAIN")`).
    pub fn saw(&self, server: &str, state: &str) -> bool {
        self.samples.iter().any(|s| {
            s.servers
                .as_ref()
                .is_ok_and(|v| v.iter().any(|x| x.name == server && x.state == state))
        })
    }

    /// The first sample and every change after it, one line each, for
    /// assertion messages.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} samples, {} failed reads, longest gap {:?}, fewest in service {}\n",
            self.count(),
            self.failed_reads(),
            self.max_gap(),
            self.min_in_service()
        );
        let mut last: Option<&Result<Vec<ServerState>, String>> = None;
        for s in &self.samples {
            if last != Some(&s.servers) {
                let _ = writeln!(out, "  +{:>7.3}s  {}", s.at.as_secs_f64(), s.line());
                last = Some(&s.servers);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    // No `use super::*`: benches/ssh.rs compiles this harness too, without tests.
    #[test]
    fn up_and_falling_are_in_service_the_rest_is_not() {
        for s in ["UP", "UP 1/2"] {
            assert!(super::haproxy_in_service(s), "{s}");
        }
        for s in [
            "DRAIN",
            "MAINT",
            "DOWN",
            "DOWN 1/2",
            "NOLB",
            "MAINT (resolution)",
            "",
        ] {
            assert!(!super::haproxy_in_service(s), "{s}");
        }
    }

    #[test]
    fn an_upstream_file_gives_each_server_and_whether_it_is_down() {
        let text = "upstream backend {\n    server 127.0.1.1:4000;\n    server 127.0.1.2:4000 down;  # parked\n    server 127.0.1.3:4000 weight=3;\n}\n";
        let got: Vec<(String, bool)> = super::parse_upstream(text)
            .into_iter()
            .map(|s| (s.name, s.in_service))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.1.1:4000".to_string(), true),
                ("127.0.1.2:4000".to_string(), false),
                ("127.0.1.3:4000".to_string(), true),
            ]
        );
    }
}
