//! The connection to PostgreSQL and the runtime it lives on; the schema.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::format_duration;

/// First key of the advisory locks ("roll"); the second is per fingerprint.
pub(super) const ADVISORY_CLASS: i32 = 0x726f_6c6c;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollscript_lock (
    identity  text PRIMARY KEY,
    holder    text NOT NULL,
    token     text NOT NULL,
    acquired  timestamptz NOT NULL,
    heartbeat timestamptz NOT NULL,
    expires   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rollscript_lock_queue (
    ticket    bigserial PRIMARY KEY,
    identity  text NOT NULL,
    holder    text NOT NULL,
    expires   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS rollscript_journal (
    identity  text NOT NULL,
    run       text NOT NULL,
    line      bigint NOT NULL,
    record    text NOT NULL,
    written   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (identity, run, line)
);
";

/// How long one statement may take before the database counts as lost.
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection and the runtime it lives on.
pub(super) struct Db {
    pub runtime: Mutex<Option<tokio::runtime::Runtime>>,
    pub handle: tokio::runtime::Handle,
    pub client: Arc<tokio::sync::Mutex<Client>>,
    /// The URL, password masked.
    pub shown: String,
}

impl Db {
    /// Runs `fut` on the state runtime and waits for it, from any thread.
    pub fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {}", format_duration(timeout))),
            };
            let _ = tx.send(r);
        });
        rx.recv()
            .unwrap_or_else(|_| Err("the state connection's thread stopped".into()))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, and may run inside another runtime.
        if let Some(rt) = self.runtime.lock().unwrap().take() {
            rt.shutdown_background();
        }
    }
}

pub(super) fn pg_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let t = inner.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        source = inner.source();
    }
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
