//! A held lock: a lease renewed by a heartbeat, reported lost when the row
//! is gone or forced away, deleted on release.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use super::db::{pg_text, Db};
use crate::config::format_duration;
use crate::state::HeldLock;

type LostFn = Box<dyn Fn(String) + Send + Sync>;

#[derive(Default)]
struct Lost {
    why: Option<String>,
    callback: Option<LostFn>,
}

/// A held lease: renewed by a heartbeat on the state runtime; deleted on
/// release.
pub(super) struct Lease {
    db: Arc<Db>,
    identity: String,
    token: String,
    lost: Arc<Mutex<Lost>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    pub(super) fn start(db: Arc<Db>, identity: String, token: String, lease: Duration) -> Self {
        let lost = Arc::new(Mutex::new(Lost::default()));
        let period = (lease / 3).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let answer_within = (lease / 2).clamp(Duration::from_millis(500), Duration::from_secs(10));
        let (client, id, tok, l, shown) = (
            db.client.clone(),
            identity.clone(),
            token.clone(),
            lost.clone(),
            db.shown.clone(),
        );
        let secs = lease.as_secs_f64();
        let heartbeat = db.handle.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let renewed = tokio::time::timeout(answer_within, async {
                    let c = client.lock().await;
                    c.execute(
                        "UPDATE rollscript_lock SET heartbeat = now(), expires = now() + make_interval(secs => $3) \
                         WHERE identity = $1 AND token = $2",
                        &[&id, &tok, &secs],
                    )
                    .await
                })
                .await;
                let why = match renewed {
                    Ok(Ok(1)) => continue,
                    Ok(Ok(_)) => format!(
                        "shared state lost: the deploy lock on {shown} was taken over by another run (--force)"
                    ),
                    Ok(Err(e)) => format!(
                        "shared state lost: cannot renew the deploy lock's lease on {shown}: {}",
                        pg_text(&e)
                    ),
                    Err(_) => format!(
                        "shared state lost: {shown} did not answer a heartbeat within {}",
                        format_duration(answer_within)
                    ),
                };
                let mut lost = l.lock().unwrap();
                lost.why = Some(why.clone());
                if let Some(f) = &lost.callback {
                    f(why);
                }
                break;
            }
        });
        Self {
            db,
            identity,
            token,
            lost,
            heartbeat: Some(heartbeat),
        }
    }
}

impl HeldLock for Lease {
    fn on_lost(&mut self, f: Box<dyn Fn(String) + Send + Sync>) {
        let mut lost = self.lost.lock().unwrap();
        if let Some(why) = &lost.why {
            f(why.clone());
        }
        lost.callback = Some(f);
    }

    fn release(&mut self) {
        let Some(hb) = self.heartbeat.take() else {
            return;
        };
        hb.abort();
        if self.lost.lock().unwrap().why.is_some() {
            return;
        }
        let client = self.db.client.clone();
        let (id, tok) = (self.identity.clone(), self.token.clone());
        let r = self.db.call(Duration::from_secs(5), async move {
            let c = client.lock().await;
            c.execute(
                "DELETE FROM rollscript_lock WHERE identity = $1 AND token = $2",
                &[&id, &tok],
            )
            .await
            .map_err(|e| pg_text(&e))
        });
        if let Err(e) = r {
            warn!(
                "could not release the deploy lock on {}: {e} — it expires by itself",
                self.db.shown
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}
