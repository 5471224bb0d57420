//! HTTP health checks against a real server on loopback that starts slowly,
//! flaps, fails with 500s, hangs or closes unanswered: the check passes only
//! after `healthy_threshold` successes in a row, and a failure says what
//! every attempt saw.

use std::net::TcpListener;
use std::time::Duration;

use rollscript::primitives::{ActionError, ErrorKind, HealthCheck, HealthProbe, HealthReport};
use rollscript::providers::http::HttpHealth;

use crate::harness::http::{HttpServer, Reply};
use crate::harness::sshd::next_ip;

fn probe(url: String) -> HealthProbe {
    HealthProbe {
        ready_after: None,
        url,
        expect_status: 200,
        expect_body: None,
        timeout: Duration::from_secs(2),
        interval: Duration::from_millis(20),
        retries: 10,
        healthy_threshold: 2,
        on_host: None,
    }
}

fn outcomes(r: &HealthReport) -> Vec<String> {
    r.attempts.iter().map(|a| a.outcome.clone()).collect()
}

async fn healthy(p: &HealthProbe) -> HealthReport {
    HttpHealth::new()
        .check(p)
        .await
        .unwrap_or_else(|e| panic!("expected healthy: {e}"))
}

async fn unhealthy(p: &HealthProbe) -> ActionError {
    match HttpHealth::new().check(p).await {
        Ok(r) => panic!("expected a failure, got {:?}", outcomes(&r)),
        Err(e) => e,
    }
}

/// The failure message without its elapsed time, which varies run to run:
/// `URL not healthy after N attempts over <time>: <rest>` → (`URL … over`, `rest`).
fn split_message(e: &ActionError) -> (String, String) {
    let (head, rest) = e.message.split_once(" over ").expect("an elapsed time");
    let (_, rest) = rest.split_once(": ").expect("a summary");
    (format!("{head} over"), rest.to_string())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test]
async fn a_healthy_app_passes_after_threshold_successes_in_a_row() {
    let app = HttpServer::always("127.0.0.1", Reply::Body(200, "ok".into()));
    let r = healthy(&probe(app.url("/health"))).await;
    assert_eq!(outcomes(&r), s(&["200", "200"]));
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn a_slow_start_is_waited_out_through_503s() {
    let app = HttpServer::start(
        "127.0.0.1",
        vec![Reply::Status(503), Reply::Status(503), Reply::Status(503)],
        Reply::Status(200),
    );
    let r = healthy(&probe(app.url("/health"))).await;
    assert_eq!(outcomes(&r), s(&["503", "503", "503", "200", "200"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_is_not_listening_yet_is_waited_for() {
    let ip = next_ip();
    let port = crate::harness::free_port(&ip);
    let mut p = probe(format!("http://{ip}:{port}/health"));
    p.interval = Duration::from_millis(100);
    p.retries = 100;
    let check = tokio::spawn(async move { HttpHealth::new().check(&p).await });
    // The app binds its port a while after the check began.
    let app = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(1));
        HttpServer::serve(
            TcpListener::bind((ip.as_str(), port)).unwrap(),
            Vec::new(),
            Reply::Status(200),
        )
    })
    .await
    .unwrap();
    let r = check.await.unwrap().unwrap();
    let seen = outcomes(&r);
    assert_eq!(seen[0], "connection refused");
    assert_eq!(seen[seen.len() - 2..], s(&["200", "200"]));
    assert!(
        seen.iter().all(|o| o == "connection refused" || o == "200"),
        "{seen:?}"
    );
    drop(app);
}

#[tokio::test]
async fn a_flapping_app_must_succeed_threshold_times_in_a_row() {
    let app = HttpServer::start(
        "127.0.0.1",
        vec![
            Reply::Status(200),
            Reply::Status(500),
            Reply::Status(200),
            Reply::Status(500),
            Reply::Status(200),
        ],
        Reply::Status(200),
    );
    let mut p = probe(app.url("/health"));
    p.healthy_threshold = 3;
    let r = healthy(&p).await;
    assert_eq!(
        outcomes(&r),
        s(&["200", "500", "200", "500", "200", "200", "200"])
    );
}

#[tokio::test]
async fn flapping_that_never_settles_fails_listing_each_attempt() {
    let app = HttpServer::start(
        "127.0.0.1",
        vec![
            Reply::Status(200),
            Reply::Status(500),
            Reply::Status(200),
            Reply::Status(500),
            Reply::Status(200),
        ],
        Reply::Status(500),
    );
    let url = app.url("/health");
    let mut p = probe(url.clone());
    p.retries = 6;
    let e = unhealthy(&p).await;
    assert_eq!(e.kind, ErrorKind::HealthFailed);
    let (head, rest) = split_message(&e);
    assert_eq!(head, format!("{url} not healthy after 6 attempts over"));
    assert_eq!(
        rest,
        "expected 200, 2 in a row; saw 200, then 500, then 200, then 500, then 200, then 500"
    );
}

#[tokio::test]
async fn persistent_500s_are_summarised() {
    let app = HttpServer::always("127.0.0.1", Reply::Status(500));
    let mut p = probe(app.url("/health"));
    p.retries = 4;
    let e = unhealthy(&p).await;
    assert_eq!(split_message(&e).1, "expected 200, 2 in a row; saw 4× 500");
    assert_eq!(
        e.details,
        vec![
            ("attempts".to_string(), "4".to_string()),
            ("last".to_string(), "500".to_string())
        ]
    );
}

#[tokio::test]
async fn a_hanging_connection_counts_as_a_timeout_per_attempt() {
    let app = HttpServer::start(
        "127.0.0.1",
        vec![Reply::Hang, Reply::Hang],
        Reply::Status(200),
    );
    let mut p = probe(app.url("/health"));
    p.timeout = Duration::from_millis(300);
    let r = healthy(&p).await;
    assert_eq!(
        outcomes(&r),
        s(&["timeout after 300ms", "timeout after 300ms", "200", "200"])
    );

    let stuck = HttpServer::always("127.0.0.1", Reply::Hang);
    let mut p = probe(stuck.url("/health"));
    p.timeout = Duration::from_millis(300);
    p.retries = 3;
    let e = unhealthy(&p).await;
    assert_eq!(
        split_message(&e).1,
        "expected 200, 2 in a row; saw 3× timeout after 300ms"
    );
}

#[tokio::test]
async fn expect_body_rejects_a_200_without_the_text() {
    let app = HttpServer::start(
        "127.0.0.1",
        vec![Reply::Body(200, "starting".into())],
        Reply::Body(200, "status: ok".into()),
    );
    let mut p = probe(app.url("/health"));
    p.expect_body = Some("ok".into());
    let r = healthy(&p).await;
    assert_eq!(outcomes(&r), s(&["200, body lacks \"ok\"", "200", "200"]));

    let wrong = HttpServer::always("127.0.0.1", Reply::Body(200, "starting".into()));
    let mut p = probe(wrong.url("/health"));
    p.expect_body = Some("ok".into());
    p.retries = 2;
    let e = unhealthy(&p).await;
    assert_eq!(
        split_message(&e).1,
        "expected 200 with a body containing \"ok\", 2 in a row; saw 2× 200, body lacks \"ok\""
    );
}

#[tokio::test]
async fn the_failure_summary_tells_refused_closed_status_and_timeout_apart() {
    let app = HttpServer::start(
        "127.0.0.1",
        vec![
            Reply::Close,
            Reply::Status(503),
            Reply::Status(503),
            Reply::Hang,
        ],
        Reply::Status(404),
    );
    let mut p = probe(app.url("/health"));
    p.timeout = Duration::from_millis(300);
    p.retries = 5;
    let e = unhealthy(&p).await;
    assert_eq!(
        split_message(&e).1,
        "expected 200, 2 in a row; saw connection closed without a response, then 2× 503, then timeout after 300ms, then 404"
    );

    let ip = next_ip();
    let port = crate::harness::free_port(&ip);
    let mut p = probe(format!("http://{ip}:{port}/health"));
    p.retries = 3;
    let e = unhealthy(&p).await;
    assert_eq!(
        split_message(&e).1,
        "expected 200, 2 in a row; saw 3× connection refused"
    );
}

#[tokio::test]
async fn an_unresolvable_host_says_so() {
    // A label over 63 bytes: glibc fails it without sending a DNS query.
    let mut p = probe(format!("http://{}.invalid:80/health", "a".repeat(64)));
    p.retries = 1;
    p.healthy_threshold = 1;
    let e = unhealthy(&p).await;
    assert_eq!(
        split_message(&e).1,
        "expected 200, 1 in a row; saw host name does not resolve"
    );
}
