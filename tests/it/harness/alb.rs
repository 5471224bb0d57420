//! An Application Load Balancer's data plane in front of a fleet, for the
//! ELBv2 tests: moto keeps the target group's state but routes nothing, so
//! this proxy on 127.0.0.1 forwards each request to a target moto reports
//! `healthy`, as an ALB node does.
//!
//! - It reads DescribeTargetHealth every [`REFRESH`] and routes to the
//!   `healthy` targets only, round robin: a `draining` target gets no new
//!   request, while the requests it already has run to their end.
//! - One request per connection on both sides, no keep-alive and no retry:
//!   a request sent to an instance that is not serving fails, and the load
//!   generator counts it (TESTING.md: an LB that retries hides a careless
//!   rollout). A target that refuses the connection is a 502, no healthy
//!   target a 503.
//! - A request whose query has `alb_target=ID` goes to target ID while it is
//!   healthy (what ALB stickiness does for a client), so a test can hold a
//!   request open on one chosen instance.
//!
//! Every thread it starts ends when it is dropped (the listener is woken by
//! a connection to itself).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2 as elb;

/// How often the proxy re-reads the target group's state. Real ALB nodes
/// take longer to stop routing to a deregistered target; rollscript's
/// `lb.drain_settle` is what covers that lag.
pub const REFRESH: Duration = Duration::from_millis(25);

/// What the proxy routes to and has routed.
#[derive(Default)]
struct Table {
    /// Healthy targets: (id, address), in target-group order.
    healthy: Vec<(String, SocketAddr)>,
    /// Requests forwarded per target id.
    forwarded: BTreeMap<String, usize>,
    /// Requests forwarded per target id that are still open.
    open: BTreeMap<String, usize>,
}

pub struct Alb {
    pub addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// DescribeTargetHealth calls that failed (moto down): shown by tests.
    pub refresh_errors: Arc<AtomicUsize>,
}

impl Alb {
    /// Starts routing to target group `tg`'s healthy targets; `ips` maps an
    /// EC2 instance id to its private address (the port is the target's).
    pub fn start(elb: elb::Client, tg: &str, ips: BTreeMap<String, String>) -> Alb {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Arc::new(Mutex::new(Table::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let refresh_errors = Arc::new(AtomicUsize::new(0));
        let refresher = {
            let (table, stop, errors, tg) = (
                table.clone(),
                stop.clone(),
                refresh_errors.clone(),
                tg.to_string(),
            );
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match rt.block_on(healthy_targets(&elb, &tg, &ips)) {
                        Ok(healthy) => table.lock().unwrap().healthy = healthy,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(REFRESH);
                }
            })
        };
        let acceptor = {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::spawn(move || {
                let next = AtomicUsize::new(0);
                let mut conns = Vec::new();
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let table = table.clone();
                    let turn = next.fetch_add(1, Ordering::SeqCst);
                    conns.push(std::thread::spawn(move || serve(client, &table, turn)));
                    conns.retain(|c| !c.is_finished());
                }
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        Alb {
            addr,
            table,
            stop,
            threads: vec![refresher, acceptor],
            refresh_errors,
        }
    }

    /// Waits until the proxy routes to exactly `n` healthy targets.
    pub fn wait_routing_to(&self, n: usize) {
        super::wait_until(
            &format!("the ALB to route to {n} healthy targets"),
            Duration::from_secs(15),
            || self.table.lock().unwrap().healthy.len() == n,
        );
    }

    /// Requests forwarded to target `id` so far.
    pub fn forwarded(&self, id: &str) -> usize {
        self.table
            .lock()
            .unwrap()
            .forwarded
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Requests forwarded to target `id` that are still open.
    pub fn open(&self, id: &str) -> usize {
        self.table
            .lock()
            .unwrap()
            .open
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Alb {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor so it sees the stop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn healthy_targets(
    elb: &elb::Client,
    tg: &str,
    ips: &BTreeMap<String, String>,
) -> Result<Vec<(String, SocketAddr)>, String> {
    let out = elb
        .describe_target_health()
        .target_group_arn(tg)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(out
        .target_health_descriptions()
        .iter()
        .filter(|d| {
            d.target_health()
                .and_then(|h| h.state())
                .is_some_and(|s| s.as_str() == "healthy")
        })
        .filter_map(|d| {
            let t = d.target()?;
            let id = t.id()?.to_string();
            let ip = ips.get(&id)?;
            let addr: SocketAddr = format!("{ip}:{}", t.port()?).parse().ok()?;
            Some((id, addr))
        })
        .collect())
}

/// One client connection: read the request head, pick a target, forward,
/// copy the answer back, close both.
fn serve(mut client: TcpStream, table: &Mutex<Table>, turn: usize) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = client.set_nodelay(true);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let pinned = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|path| path.split_once('?'))
        .and_then(|(_, q)| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("alb_target="))
                .map(str::to_string)
        });
    let target = {
        let mut t = table.lock().unwrap();
        let chosen = match &pinned {
            Some(id) => t.healthy.iter().find(|(i, _)| i == id).cloned(),
            None if t.healthy.is_empty() => None,
            None => Some(t.healthy[turn % t.healthy.len()].clone()),
        };
        if let Some((id, _)) = &chosen {
            *t.forwarded.entry(id.clone()).or_default() += 1;
            *t.open.entry(id.clone()).or_default() += 1;
        }
        chosen
    };
    let Some((id, addr)) = target else {
        let _ = client.write_all(
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 20\r\n\r\nno healthy target\r\n\r\n",
        );
        return;
    };
    forward(&mut client, &head, addr);
    let mut t = table.lock().unwrap();
    if let Some(n) = t.open.get_mut(&id) {
        *n -= 1;
    }
}

fn forward(client: &mut TcpStream, head: &[u8], addr: SocketAddr) {
    let bad_gateway = |client: &mut TcpStream, why: &str| {
        let body = format!("bad gateway: {why}\n");
        let _ = client.write_all(
            format!(
                "HTTP/1.0 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    };
    let mut upstream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return bad_gateway(client, &format!("connect {addr}: {e}")),
    };
    let _ = upstream.set_nodelay(true);
    let _ = upstream.set_read_timeout(Some(Duration::from_secs(90)));
    if let Err(e) = upstream.write_all(head) {
        return bad_gateway(client, &format!("write {addr}: {e}"));
    }
    let mut answer = Vec::new();
    if let Err(e) = upstream.read_to_end(&mut answer) {
        return bad_gateway(client, &format!("read {addr}: {e}"));
    }
    if answer.is_empty() {
        return bad_gateway(client, &format!("{addr} closed without an answer"));
    }
    let _ = client.write_all(&answer);
    let _ = client.shutdown(Shutdown::Write);
}
