//! A test HTTP app instance on 127.0.0.1 (a thread of the test, no process):
//! `/` answers `<version>`, `/health` 200 (503 after `set_healthy(false)`),
//! `/status?code=N` answers N, `/slow?ms=N` holds the request N ms or until
//! `release_slow()` — for drain tests that must not depend on timing. It
//! counts what it served, so tests assert where traffic went.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    version: Mutex<String>,
    unhealthy: AtomicBool,
    stop: AtomicBool,
    /// Requests other than `/health` (load balancers' checks are not traffic).
    hits: AtomicU64,
    health_hits: AtomicU64,
    slow_in_flight: AtomicU64,
    /// Counted *before* the response is written: a load balancer cannot see
    /// the session end before this moves.
    slow_done: AtomicU64,
    released: Mutex<bool>,
    release: Condvar,
}

pub struct Backend {
    pub name: String,
    pub port: u16,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    /// Listens on an ephemeral port of 127.0.0.1; `/` answers `name`.
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a backend port");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        *state.version.lock().unwrap() = name.to_string();
        let s = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Backend {
            name: name.to_string(),
            port,
            state,
            accept: Some(accept),
        }
    }

    pub fn set_version(&self, v: &str) {
        *self.state.version.lock().unwrap() = v.to_string();
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// Requests served, `/health` excluded.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> u64 {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    pub fn slow_in_flight(&self) -> u64 {
        self.state.slow_in_flight.load(Ordering::SeqCst)
    }

    pub fn slow_done(&self) -> u64 {
        self.state.slow_done.load(Ordering::SeqCst)
    }

    /// Ends every `/slow` wait now, and makes later ones answer at once.
    pub fn release_slow(&self) {
        *self.state.released.lock().unwrap() = true;
        self.state.release.notify_all();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.release_slow();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, s: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (status, body) = match path {
        "/health" => {
            s.health_hits.fetch_add(1, Ordering::SeqCst);
            if s.unhealthy.load(Ordering::SeqCst) {
                (503, "unhealthy\n".to_string())
            } else {
                (200, "ok\n".to_string())
            }
        }
        "/slow" => {
            s.hits.fetch_add(1, Ordering::SeqCst);
            s.slow_in_flight.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_millis(param("ms").unwrap_or(1000));
            let mut released = s.released.lock().unwrap();
            while !*released && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                released = s.release.wait_timeout(released, left).unwrap().0;
            }
            drop(released);
            s.slow_done.fetch_add(1, Ordering::SeqCst);
            s.slow_in_flight.fetch_sub(1, Ordering::SeqCst);
            (200, format!("{} slow\n", s.version.lock().unwrap()))
        }
        "/status" => {
            s.hits.fetch_add(1, Ordering::SeqCst);
            let code = param("code").unwrap_or(200) as u16;
            (code, format!("{} {code}\n", s.version.lock().unwrap()))
        }
        _ => {
            s.hits.fetch_add(1, Ordering::SeqCst);
            (200, format!("{}\n", s.version.lock().unwrap()))
        }
    };
    let reason = match status {
        200 => "OK",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Other",
    };
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes());
    let _ = conn.shutdown(Shutdown::Write);
    // Drain the rest so the close is clean (no RST on unread input).
    let _ = conn.read(&mut chunk);
}
