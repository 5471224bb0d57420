//! Steady traffic through a load balancer, and what it saw: every request
//! with when it was sent, how long it took and which version answered (or
//! why it failed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::get_within;

/// A request of the load gives up after this (then it counts as failed).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub took: Duration,
    pub path: String,
    /// The version that answered, or why the request failed
    /// (`http 503: booting`, `read: Connection reset by peer`, …).
    pub outcome: Result<String, String>,
}

/// Steady traffic through the LB: `rate` requests a second, one request per
/// connection (TESTING.md: a reused connection an nginx reload closes would
/// be a failure that says nothing about the deploy), one in four a
/// `GET /slow?ms=200` so every drain has open sessions to wait for. A
/// request succeeds on 200 with a `version=` body. Bounded: stops after
/// `max` even if nobody calls [`Load::stop`], and on drop.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    dispatcher: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, rate: u32, max: Duration) -> Load {
        assert!(
            addr.ip().is_loopback(),
            "load goes to loopback only: {addr}"
        );
        assert!((1..=500).contains(&rate), "rate {rate} out of bounds");
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, st) = (stop.clone(), samples.clone());
        let dispatcher = std::thread::spawn(move || {
            let interval = Duration::from_secs(1) / rate;
            let mut workers = Vec::new();
            let mut sent: u32 = 0;
            while !s.load(Ordering::SeqCst) && started.elapsed() < max {
                let due = started + interval * sent;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(50)));
                    continue;
                }
                let path = if sent % 4 == 3 { "/slow?ms=200" } else { "/" };
                let st = st.clone();
                let at = started.elapsed();
                workers.push(std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let outcome = match get_within(addr, path, ANSWER_WITHIN) {
                        Ok((200, body)) => match body.trim().strip_prefix("version=") {
                            Some(v) => Ok(v.to_string()),
                            None => Err(format!("unexpected body {:?}", body.trim())),
                        },
                        Ok((status, body)) => Err(format!("http {status}: {}", one_line(&body))),
                        Err(e) => Err(e),
                    };
                    st.lock().unwrap().push(Sample {
                        at,
                        took: t0.elapsed(),
                        path: path.to_string(),
                        outcome,
                    });
                }));
                workers.retain(|w| !w.is_finished());
                sent += 1;
            }
            workers
        });
        Load {
            started,
            stop,
            samples,
            dispatcher: Some(dispatcher),
        }
    }

    /// Time since the load started (to mark when a run began and ended).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// What it has seen so far (requests still in flight not included).
    pub fn so_far(&self) -> LoadReport {
        let mut samples = self.samples.lock().unwrap().clone();
        samples.sort_by_key(|s| s.at);
        LoadReport { samples }
    }

    /// Stops sending, waits for the requests in flight, returns every sample.
    pub fn stop(mut self) -> LoadReport {
        self.finish()
    }

    fn finish(&mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.dispatcher.take() {
            for w in d.join().unwrap_or_default() {
                let _ = w.join();
            }
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        samples.sort_by_key(|s| s.at);
        LoadReport { samples }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A body on one line, at most 160 characters (HAProxy's and nginx's error
/// pages are several lines of HTML).
fn one_line(body: &str) -> String {
    let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(160).collect()
}

/// What the load saw.
pub struct LoadReport {
    pub samples: Vec<Sample>,
}

impl LoadReport {
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    pub fn ok(&self) -> usize {
        self.samples.iter().filter(|s| s.outcome.is_ok()).count()
    }

    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// Successful answers per version.
    pub fn versions(&self) -> BTreeMap<String, usize> {
        self.versions_between(Duration::ZERO, Duration::MAX)
    }

    /// Successful answers per version among requests sent in `[from, to)`.
    pub fn versions_between(&self, from: Duration, to: Duration) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.at >= from && s.at < to) {
            if let Ok(v) = &s.outcome {
                *m.entry(v.clone()).or_default() += 1;
            }
        }
        m
    }

    /// Requests sent in `[from, to)`.
    pub fn sent_between(&self, from: Duration, to: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .count()
    }

    /// Failures by reason (the reason's first words, before any body).
    pub fn reasons(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.failures() {
            let r = s.outcome.as_ref().unwrap_err();
            let key = r.split(':').next().unwrap_or(r).to_string();
            *m.entry(key).or_default() += 1;
        }
        m
    }

    /// One line for assertion messages, with the first failures and when
    /// they were sent (to line up with rollscript's and the LB's logs).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} sent, {} ok, {} failed; versions {:?}; failures {:?}",
            self.sent(),
            self.ok(),
            self.failures().len(),
            self.versions(),
            self.reasons()
        );
        for f in self.failures().iter().take(10) {
            s.push_str(&format!(
                "\n  at {:.3}s {} (took {:.3}s): {}",
                f.at.as_secs_f64(),
                f.path,
                f.took.as_secs_f64(),
                f.outcome.as_ref().unwrap_err()
            ));
        }
        s
    }
}
