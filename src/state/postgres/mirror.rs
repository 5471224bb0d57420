//! The journal's shared copy: every record line in `rollscript_journal`.

use std::sync::Arc;

use super::db::{pg_text, Db, STATEMENT_TIMEOUT};
use crate::state::JournalMirror;

/// The journal's copy in `rollscript_journal`.
pub(super) struct Mirror {
    pub db: Arc<Db>,
    pub identity: String,
}

impl JournalMirror for Mirror {
    fn describe(&self) -> String {
        self.db.shown.clone()
    }

    fn count(&self, run: &str) -> Result<u64, String> {
        let client = self.db.client.clone();
        let (id, run) = (self.identity.clone(), run.to_string());
        self.db.call(STATEMENT_TIMEOUT, async move {
            let c = client.lock().await;
            c.query_one(
                "SELECT coalesce(max(line) + 1, 0) FROM rollscript_journal WHERE identity = $1 AND run = $2",
                &[&id, &run],
            )
            .await
            .map(|r| r.get::<_, i64>(0) as u64)
            .map_err(|e| pg_text(&e))
        })
    }

    fn append(&self, run: &str, line: u64, text: &str) -> Result<(), String> {
        let client = self.db.client.clone();
        let (id, run, text) = (self.identity.clone(), run.to_string(), text.to_string());
        self.db.call(STATEMENT_TIMEOUT, async move {
            let c = client.lock().await;
            c.execute(
                "INSERT INTO rollscript_journal (identity, run, line, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&id, &run, &(line as i64), &text],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_text(&e))
        })
    }
}
