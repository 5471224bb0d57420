//! The shared state backend on PostgreSQL (`[state] backend = "postgres"`):
//! one deploy lock and one run history for every machine with the same
//! inventory (the same fingerprint, see [`super::Identity`]) and URL.
//!
//! # The lock is a lease
//!
//! A row of `rollscript_lock` per fingerprint: the holder (user, host, pid,
//! boot id, run id, command), a token of its own, when it was acquired, its
//! last heartbeat, and its expiry — `state.lease` after the last heartbeat.
//! The holder renews it every `lease / 3` (at most every 5 s); a holder
//! that stops renewing (killed, machine gone, network cut) is stale on every
//! machine once its lease expires. Times are the database's `now()`, so the
//! machines' clocks do not matter.
//!
//! Taking the lock is one transaction, serialised per fingerprint by a
//! transaction-level advisory lock: read the row, judge it (live, expired,
//! or its holder provably gone on this host), write ours. Runs waiting with
//! `--lock-wait` take a ticket in `rollscript_lock_queue` (kept alive like a
//! lease) and get the lock in ticket order: a run without a ticket, or with
//! a later one, does not jump the queue.
//!
//! A heartbeat that finds the row gone or another token in it (the lock was
//! forced away), or cannot reach the database, reports the lock lost: the
//! run stops at the next safe point and compensates from its local journal.
//!
//! # The journal
//!
//! `rollscript_journal` holds every record line of every run, keyed by
//! fingerprint, run and line number, written (and acknowledged) before the
//! effect it announces. `rollscript_control` holds the requests of
//! `pause`, `resume`, `abort` and `promote` (see [`super::control`]).
//!
//! # Connection
//!
//! One connection, opened at start: unreachable is an error (exit 2) that
//! names the URL with its password masked. It runs on a runtime of its own
//! (one thread), so the blocking calls of the lock and the journal work from
//! any thread, inside or outside the run's runtime. TLS is not supported:
//! reach the database over a private network or a tunnel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tracing::warn;

use super::{HeldLock, Identity, JournalMirror, LockStatus, StateBackend, StateError, StoredRun};
use crate::config::format_duration;
use crate::lock::{HeldBy, Holder, Liveness, LockError};
use crate::redact::redact;

mod db;
mod lease;
mod mirror;

use db::{pg_text, Db, ADVISORY_CLASS, SCHEMA, STATEMENT_TIMEOUT};
use lease::Lease;
use mirror::Mirror;

pub struct PgState {
    db: Arc<Db>,
    identity: Identity,
    lease: Duration,
}

impl PgState {
    /// Connects and creates the tables if needed.
    pub fn connect(url: &str, identity: Identity, lease: Duration) -> Result<Self, StateError> {
        let shown = redact(url);
        let unreachable = |why: String| StateError::Unreachable {
            url: shown.clone(),
            why,
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| unreachable(pg_text(&e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rollscript-state")
            .enable_all()
            .build()
            .map_err(|e| unreachable(e.to_string()))?;
        let handle = runtime.handle().clone();
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let r = async {
                let (mut client, conn) = config.connect(NoTls).await.map_err(|e| pg_text(&e))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                // Two first runs at once must not both create the tables.
                let tx = client.transaction().await.map_err(|e| pg_text(&e))?;
                tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&ADVISORY_CLASS])
                    .await
                    .map_err(|e| pg_text(&e))?;
                tx.batch_execute(SCHEMA).await.map_err(|e| pg_text(&e))?;
                tx.batch_execute(super::control::PG_SCHEMA)
                    .await
                    .map_err(|e| pg_text(&e))?;
                tx.commit().await.map_err(|e| pg_text(&e))?;
                Ok(client)
            };
            let r = match tokio::time::timeout(Duration::from_secs(30), r).await {
                Ok(r) => r,
                Err(_) => Err("no answer within 30s".to_string()),
            };
            let _ = tx.send(r);
        });
        let client = match rx
            .recv()
            .unwrap_or_else(|_| Err("the connection thread stopped".into()))
        {
            Ok(c) => c,
            Err(why) => {
                // Dropping a runtime blocks, which a caller's runtime forbids.
                runtime.shutdown_background();
                return Err(unreachable(why));
            }
        };
        Ok(Self {
            db: Arc::new(Db {
                runtime: Mutex::new(Some(runtime)),
                handle,
                client: Arc::new(tokio::sync::Mutex::new(client)),
                shown,
            }),
            identity,
            lease,
        })
    }

    fn key(&self) -> String {
        self.identity.fingerprint.clone()
    }

    /// The second key of this fingerprint's advisory lock.
    fn advisory_key(&self) -> i32 {
        u32::from_str_radix(&self.identity.fingerprint[..8], 16).unwrap_or(0) as i32
    }

    fn io(&self, e: String) -> LockError {
        LockError::Io(self.db.shown.clone(), e)
    }

    fn state_err(&self, e: String) -> StateError {
        StateError::Io(format!("state database {}: {e}", self.db.shown))
    }
}

/// One attempt at the lock.
enum Take {
    Taken(Option<(Holder, String)>),
    Held(HeldBy),
    Queued(usize),
}

fn secs(s: f64) -> String {
    format_duration(Duration::from_millis((s.max(0.0) * 1000.0) as u64))
}

fn parse_holder(text: &str) -> Holder {
    serde_json::from_str(text).unwrap_or_else(|_| Holder {
        user: "?".into(),
        host: "?".into(),
        pid: 0,
        boot_id: String::new(),
        proc_start: 0,
        started: "?".into(),
        command: "(unreadable holder record)".into(),
        run: None,
    })
}

/// Judges the lock row (`holder`, seconds its lease has left).
fn judge(holder: Holder, left: f64) -> LockStatus {
    if left <= 0.0 {
        let why = format!("its lease expired {} ago", secs(-left));
        return LockStatus::Stale(holder, why);
    }
    match holder.liveness() {
        Liveness::Gone(why) => LockStatus::Stale(holder, why),
        _ => LockStatus::Live(HeldBy {
            holder,
            note: format!("its lease expires in {} unless renewed", secs(left)),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn try_take(
    client: Arc<tokio::sync::Mutex<Client>>,
    identity: String,
    advisory: i32,
    holder: String,
    token: String,
    lease: f64,
    ticket: Option<i64>,
    force: bool,
) -> Result<Take, String> {
    let e = |e: tokio_postgres::Error| pg_text(&e);
    let mut c = client.lock().await;
    let tx = c.transaction().await.map_err(e)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&ADVISORY_CLASS, &advisory],
    )
    .await
    .map_err(e)?;
    let row = tx
        .query_opt(
            "SELECT holder, extract(epoch FROM expires - now())::float8 FROM rollscript_lock WHERE identity = $1",
            &[&identity],
        )
        .await
        .map_err(e)?;
    let mut previous = None;
    if let Some(row) = row {
        match judge(parse_holder(row.get(0)), row.get(1)) {
            LockStatus::Live(h) if !force => return Ok(Take::Held(h)),
            LockStatus::Live(h) => previous = Some((h.holder, "--force".to_string())),
            LockStatus::Stale(h, why) => previous = Some((h, why)),
        }
    }
    tx.execute(
        "DELETE FROM rollscript_lock_queue WHERE identity = $1 AND expires < now()",
        &[&identity],
    )
    .await
    .map_err(e)?;
    let ahead: i64 = tx
        .query_one(
            "SELECT count(*) FROM rollscript_lock_queue WHERE identity = $1 AND ticket < $2",
            &[&identity, &ticket.unwrap_or(i64::MAX)],
        )
        .await
        .map_err(e)?
        .get(0);
    if ahead > 0 && !force {
        return Ok(Take::Queued(ahead as usize));
    }
    tx.execute(
        "INSERT INTO rollscript_lock (identity, holder, token, acquired, heartbeat, expires) \
         VALUES ($1, $2, $3, now(), now(), now() + make_interval(secs => $4)) \
         ON CONFLICT (identity) DO UPDATE SET holder = EXCLUDED.holder, token = EXCLUDED.token, \
         acquired = EXCLUDED.acquired, heartbeat = EXCLUDED.heartbeat, expires = EXCLUDED.expires",
        &[&identity, &holder, &token, &lease],
    )
    .await
    .map_err(e)?;
    if let Some(t) = ticket {
        tx.execute("DELETE FROM rollscript_lock_queue WHERE ticket = $1", &[&t])
            .await
            .map_err(e)?;
    }
    tx.commit().await.map_err(e)?;
    Ok(Take::Taken(previous))
}

impl StateBackend for PgState {
    fn describe(&self) -> String {
        self.db.shown.clone()
    }

    fn lock(
        &self,
        me: &Holder,
        wait: Duration,
        force: bool,
    ) -> Result<Box<dyn HeldLock>, LockError> {
        let holder = serde_json::to_string(me).expect("serialises");
        let token = format!(
            "{}-{}-{}",
            me.host,
            me.pid,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let lease = self.lease.as_secs_f64();
        let deadline = std::time::Instant::now() + wait;
        let mut ticket: Option<i64> = None;
        let mut announced = false;
        let result = loop {
            let take = self
                .db
                .call(
                    STATEMENT_TIMEOUT,
                    try_take(
                        self.db.client.clone(),
                        self.key(),
                        self.advisory_key(),
                        holder.clone(),
                        token.clone(),
                        lease,
                        ticket,
                        force,
                    ),
                )
                .map_err(|e| self.io(e));
            let refused = match take {
                Err(e) => break Err(e),
                Ok(Take::Taken(previous)) => {
                    if let Some((h, why)) = previous {
                        warn!("taking over the deploy lock {} — {why}", h.describe());
                    }
                    break Ok(());
                }
                Ok(Take::Held(h)) => LockError::Held(h),
                Ok(Take::Queued(n)) => LockError::Queued(n),
            };
            if std::time::Instant::now() >= deadline {
                break Err(refused);
            }
            // A ticket keeps our place; refreshed at every look.
            let client = self.db.client.clone();
            let (id, h) = (self.key(), holder.clone());
            let refreshed = self.db.call(STATEMENT_TIMEOUT, async move {
                let c = client.lock().await;
                if let Some(t) = ticket {
                    let n = c
                        .execute(
                            "UPDATE rollscript_lock_queue SET expires = now() + make_interval(secs => $2) WHERE ticket = $1",
                            &[&t, &lease],
                        )
                        .await
                        .map_err(|e| pg_text(&e))?;
                    if n == 1 {
                        return Ok(t);
                    }
                }
                let row = c
                    .query_one(
                        "INSERT INTO rollscript_lock_queue (identity, holder, expires) \
                         VALUES ($1, $2, now() + make_interval(secs => $3)) RETURNING ticket",
                        &[&id, &h, &lease],
                    )
                    .await
                    .map_err(|e| pg_text(&e))?;
                Ok(row.get::<_, i64>(0))
            });
            match refreshed {
                Ok(t) => ticket = Some(t),
                Err(e) => break Err(self.io(e)),
            }
            // Said once our ticket is in: the queue holds our place from here.
            if !announced {
                match &refused {
                    LockError::Held(h) => warn!(
                        "waiting for the deploy lock: {} ({})",
                        h.holder.describe(),
                        h.note
                    ),
                    other => warn!("waiting for the deploy lock: {other}"),
                }
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        if let (Err(_), Some(t)) = (&result, ticket) {
            let client = self.db.client.clone();
            let _ = self.db.call(STATEMENT_TIMEOUT, async move {
                let c = client.lock().await;
                c.execute("DELETE FROM rollscript_lock_queue WHERE ticket = $1", &[&t])
                    .await
                    .map_err(|e| pg_text(&e))
            });
        }
        result?;
        Ok(Box::new(Lease::start(
            self.db.clone(),
            self.key(),
            token,
            self.lease,
        )))
    }

    fn lock_status(&self) -> Result<Option<LockStatus>, StateError> {
        let client = self.db.client.clone();
        let id = self.key();
        let row = self
            .db
            .call(STATEMENT_TIMEOUT, async move {
                let c = client.lock().await;
                c.query_opt(
                    "SELECT holder, extract(epoch FROM expires - now())::float8 FROM rollscript_lock WHERE identity = $1",
                    &[&id],
                )
                .await
                .map(|r| r.map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1))))
                .map_err(|e| pg_text(&e))
            })
            .map_err(|e| self.state_err(e))?;
        Ok(row.map(|(h, left)| judge(parse_holder(&h), left)))
    }

    fn break_lock(&self) -> Result<Option<Holder>, StateError> {
        let client = self.db.client.clone();
        let id = self.key();
        let holder = self
            .db
            .call(STATEMENT_TIMEOUT, async move {
                let c = client.lock().await;
                c.query_opt(
                    "DELETE FROM rollscript_lock WHERE identity = $1 RETURNING holder",
                    &[&id],
                )
                .await
                .map(|r| r.map(|r| r.get::<_, String>(0)))
                .map_err(|e| pg_text(&e))
            })
            .map_err(|e| self.state_err(e))?;
        Ok(holder.map(|h| parse_holder(&h)))
    }

    fn mirror(&self) -> Option<Arc<dyn JournalMirror>> {
        Some(Arc::new(Mirror {
            db: self.db.clone(),
            identity: self.key(),
        }))
    }

    fn remote_runs(&self) -> Result<Vec<StoredRun>, StateError> {
        let client = self.db.client.clone();
        let id = self.key();
        let rows = self
            .db
            .call(Duration::from_secs(60), async move {
                let c = client.lock().await;
                c.query(
                    "SELECT run, record FROM rollscript_journal WHERE identity = $1 ORDER BY run, line",
                    &[&id],
                )
                .await
                .map(|rows| {
                    rows.into_iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| pg_text(&e))
            })
            .map_err(|e| self.state_err(e))?;
        let mut runs: Vec<StoredRun> = Vec::new();
        for (run, line) in rows {
            match runs.last_mut() {
                Some(r) if r.id == run => r.lines.push(line),
                _ => runs.push(StoredRun {
                    id: run,
                    lines: vec![line],
                    local: None,
                }),
            }
        }
        Ok(runs)
    }

    fn control(&self) -> Arc<dyn super::control::ControlChannel> {
        let db = self.db.clone();
        let query: super::control::PgQuery = Arc::new(move |sql, params, timeout| {
            let client = db.client.clone();
            db.call(timeout, async move {
                let c = client.lock().await;
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                c.query(sql, &refs)
                    .await
                    .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
                    .map_err(|e| pg_text(&e))
            })
        });
        Arc::new(super::control::PgControl {
            query,
            identity: self.key(),
            shown: self.db.shown.clone(),
        })
    }
}
