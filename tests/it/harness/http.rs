//! A small HTTP/1.1 server for health-check tests, answering from a script
//! of replies: slow starts (503 until ready), flapping, 500s, connections
//! that hang or close unanswered, and a body read from a file a deploy writes.
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
