//! Signals during a live run. First Ctrl-C, SIGTERM or SIGHUP (the
//! operator's ssh session dropped): cancel — waits end, the script stops at
//! the next statement, compensation runs. A first signal *during*
//! compensation only says what is going on: stopping it would leave
//! instances out. Another one stops at once; the journal records which
//! instances are out, for `rollscript recover`.

use std::sync::Arc;

use tracing::{error, warn};

use super::Outcome;
use crate::effects::Effects;
use crate::journal::{self, Record};
use crate::lock;

pub(crate) async fn watch(effects: Arc<Effects>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    let mut cancelled = false;
    let mut warned_compensating = false;
    loop {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
            _ = hup.recv() => {},
        }
        if effects.is_compensating() && !warned_compensating {
            warned_compensating = true;
            effects.stop_after_compensation();
            warn!(
                "compensating {} instance(s) so that none is left out; press Ctrl-C again to stop at once",
                effects.out_of_service().len()
            );
            continue;
        }
        if !cancelled && !effects.is_compensating() {
            warn!("interrupt received: stopping at the next safe point, then compensating (again to stop now)");
            effects.cancel_token().cancel();
            cancelled = true;
            continue;
        }
        let left = effects.out_of_service();
        error!(
            "stopping now; out of service: {} — run `rollscript recover`",
            if left.is_empty() {
                "none".to_string()
            } else {
                left.join(", ")
            }
        );
        if let Some(j) = effects.journal() {
            j.best_effort(&Record::RunEnd {
                at: journal::now(),
                outcome: "killed".into(),
                left_out: left,
                failed: effects.ledger.failed(),
            });
        }
        let _ = lock::force_unlock_if_mine(&effects.inventory.path);
        std::process::exit(Outcome::Interrupted.exit_code() as i32);
    }
}
