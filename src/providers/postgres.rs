//! The migration lock: a PostgreSQL session-level advisory lock taken with
//! `pg_try_advisory_lock`, so two runs can never migrate the same database at
//! once (even from different machines). The lock lives as long as the
//! connection; dropping it (or a crash) releases it on the server.

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use async_trait::async_trait;

use crate::journal::redact;
use crate::primitives::{ActionError, ActionResult, Database, DbLock, ErrorKind};

/// The live [`Database`]: a connection per lock, to the URL given.
pub struct PgDatabase;

#[async_trait]
impl Database for PgDatabase {
    async fn try_lock(&self, url: &str, key: i64) -> ActionResult<Option<Box<dyn DbLock>>> {
        Ok(try_lock(url, key)
            .await?
            .map(|l| Box::new(l) as Box<dyn DbLock>))
    }
}

#[async_trait]
impl DbLock for AdvisoryLock {
    async fn unlock(self: Box<Self>) {
        AdvisoryLock::unlock(*self).await
    }
}

pub struct AdvisoryLock {
    client: Client,
    connection: JoinHandle<()>,
    key: i64,
}

/// Tries to take advisory lock `key` on the database at `url`: `Ok(None)` if
/// another session holds it.
pub async fn try_lock(url: &str, key: i64) -> ActionResult<Option<AdvisoryLock>> {
    let shown = redact(url);
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|e| {
        ActionError::new(
            ErrorKind::Unreachable,
            format!("cannot connect to the database {shown}: {e}"),
        )
    })?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(|e| {
            ActionError::new(
                ErrorKind::Unreachable,
                format!("pg_try_advisory_lock on {shown}: {e}"),
            )
        })?;
    if row.get::<_, bool>(0) {
        Ok(Some(AdvisoryLock {
            client,
            connection,
            key,
        }))
    } else {
        connection.abort();
        Ok(None)
    }
}

impl AdvisoryLock {
    pub async fn unlock(self) {
        let _ = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await;
        drop(self.client);
        let _ = self.connection.await;
    }
}
