//! A TCP proxy in front of HAProxy's runtime API (`stats socket
//! ipv4@127.0.0.1:PORT level admin`) that makes one command's outcome
//! unknown to its client: the command is forwarded and executed, HAProxy's
//! reply is read, and then the client's connection is reset (SO_LINGER 0,
//! close → RST) instead of relaying it. The client sees an I/O error after
//! its command was written; HAProxy has done what it asked.
//!
//! Every other command is relayed both ways unchanged. One command per
//! connection, as HAProxy's CLI does in non-interactive mode. Plain std
//! threads; dropping the proxy stops it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct State {
    upstream: SocketAddr,
    /// The command line (without its newline) whose reply is never relayed.
    reset_on: String,
    resets: AtomicUsize,
    /// Every command line seen, in order.
    seen: Mutex<Vec<String>>,
    stop: AtomicBool,
}

pub struct ResettingApiProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl ResettingApiProxy {
    /// Listens on 127.0.0.1 (any free port) in front of `upstream`.
    pub fn start(upstream: SocketAddr, reset_on: &str) -> ResettingApiProxy {
        assert!(upstream.ip().is_loopback(), "loopback only: {upstream}");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            reset_on: reset_on.to_string(),
            resets: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
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
                std::thread::spawn(move || relay(conn, &st));
            }
        });
        ResettingApiProxy {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// How many times the client's connection was reset after the command.
    pub fn resets(&self) -> usize {
        self.state.resets.load(Ordering::SeqCst)
    }

    /// Every command line the proxy forwarded.
    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for ResettingApiProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn relay(mut client: TcpStream, st: &State) {
    let limit = Some(Duration::from_secs(10));
    let _ = client.set_read_timeout(limit);
    // The command: up to the first newline.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match client.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
        if line.len() > 64 * 1024 {
            return;
        }
    }
    if line.is_empty() || st.stop.load(Ordering::SeqCst) {
        return;
    }
    let text = String::from_utf8_lossy(&line).trim().to_string();
    st.seen.lock().unwrap().push(text.clone());
    let Ok(mut up) = TcpStream::connect_timeout(&st.upstream, Duration::from_secs(2)) else {
        return;
    };
    let _ = up.set_read_timeout(limit);
    line.push(b'\n');
    if up.write_all(&line).is_err() {
        return;
    }
    let mut reply = Vec::new();
    let _ = up.read_to_end(&mut reply);
    if text == st.reset_on {
        // HAProxy has executed it (its reply is in): now the client loses
        // the answer. SO_LINGER with a zero timeout makes close send RST.
        reset(&client);
        st.resets.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let _ = client.write_all(&reply);
    let _ = client.shutdown(Shutdown::Write);
}

/// Closes `conn` with a TCP reset.
fn reset(conn: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a properly sized value.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // The caller drops `conn` right after: close(2) sends the RST.
}
