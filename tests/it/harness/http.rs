//! HTTP for the tests: the one client ([`get`]: one request per fresh
//! connection, as TESTING.md asks — a reused connection an nginx reload
//! closes would be a failure that says nothing about a deploy), and a small
//! HTTP/1.1 server for health-check tests, answering from a script of
//! replies: slow starts (503 until ready), flapping, 500s, connections that
//! hang or close unanswered, and a body read from a file a deploy writes.
//!
//! Plain std threads: one to accept, one per connection. Every reply closes
//! its connection (`Connection: close`), as the health checker opens a fresh
//! one per attempt. Dropping the server stops it and releases hung clients.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where a request goes: a port of 127.0.0.1, or an `ip:port`.
pub trait Target {
    fn socket_addr(&self) -> SocketAddr;
}

impl Target for u16 {
    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], *self))
    }
}

impl Target for SocketAddr {
    fn socket_addr(&self) -> SocketAddr {
        *self
    }
}

impl Target for &str {
    fn socket_addr(&self) -> SocketAddr {
        self.parse()
            .unwrap_or_else(|e| panic!("not an ip:port: {self}: {e}"))
    }
}

impl Target for String {
    fn socket_addr(&self) -> SocketAddr {
        self.as_str().socket_addr()
    }
}

/// How long [`get`] waits for an answer: the tests' slowest requests are
/// held `/slow?ms=60000` ones.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// One GET on a fresh connection: (status, body), or what went wrong as
/// text (`connect: …`, `read: Connection reset by peer`).
pub fn get(to: impl Target, path: &str) -> Result<(u16, String), String> {
    get_within(to, path, ANSWER_WITHIN)
}

/// [`get`], giving up on an answer after `limit`.
pub fn get_within(to: impl Target, path: &str, limit: Duration) -> Result<(u16, String), String> {
    let addr = to.socket_addr();
    assert!(
        addr.ip().is_loopback(),
        "tests talk to loopback only: {addr}"
    );
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let _ = conn.set_nodelay(true);
    conn.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rollscript-it\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

/// The status and body of a whole HTTP/1.x response as read from a socket.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status and an empty body.
    Status(u16),
    /// This status and body.
    Body(u16, String),
    /// Reads the request, then never answers (until the server stops).
    Hang,
    /// Closes the connection without answering.
    Close,
    /// 200 with the file's content, or 503 while the file does not exist.
    File(PathBuf),
}

struct State {
    script: Mutex<VecDeque<Reply>>,
    then: Reply,
    requests: AtomicUsize,
    stop: AtomicBool,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `ip` (any free port): replies from `script` in order, then
    /// `then` for every later request.
    pub fn start(ip: &str, script: Vec<Reply>, then: Reply) -> HttpServer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        Self::serve(listener, script, then)
    }

    /// Always answers `reply`.
    pub fn always(ip: &str, reply: Reply) -> HttpServer {
        Self::start(ip, Vec::new(), reply)
    }

    /// Serves on an already bound listener (for a server that starts late).
    pub fn serve(listener: TcpListener, script: Vec<Reply>, then: Reply) -> HttpServer {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            script: Mutex::new(script.into()),
            then,
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(conn, &st));
            }
        });
        HttpServer {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far (answered or not).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut conn: TcpStream, st: &State) {
    if st.stop.load(Ordering::SeqCst) || !read_request(&mut conn) {
        return;
    }
    st.requests.fetch_add(1, Ordering::SeqCst);
    let reply = st
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| st.then.clone());
    let (status, body) = match reply {
        Reply::Status(s) => (s, String::new()),
        Reply::Body(s, b) => (s, b),
        Reply::Close => {
            let _ = conn.shutdown(Shutdown::Both);
            return;
        }
        Reply::Hang => {
            while !st.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        Reply::File(path) => match std::fs::read_to_string(&path) {
            Ok(text) => (200, text),
            Err(_) => (503, "not deployed yet\n".into()),
        },
    };
    let _ = conn.write_all(
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            reason(status),
            body.len()
        )
        .as_bytes(),
    );
    let _ = conn.shutdown(Shutdown::Write);
}

/// Reads up to the end of the request head; false if the client went away.
fn read_request(conn: &mut TcpStream) -> bool {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
