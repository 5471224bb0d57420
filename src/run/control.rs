//! The run's ear on its control channel: every 200 ms, the requests
//! `rollscript pause|resume|abort|promote` left in the state backend since
//! the last look, each journalled (who, what) and handed to the effects
//! layer (see `effects/control.rs` for what each does).

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::effects::Effects;
use crate::journal::{self, Record};
use crate::state::control::{Command, ControlChannel};

/// How often the run looks: fast enough for "promote ends a bake within a
/// second", cheap enough for a database (one indexed read).
pub(crate) const POLL: Duration = Duration::from_millis(200);

pub(crate) async fn watch(channel: Arc<dyn ControlChannel>, run: String, effects: Arc<Effects>) {
    let mut seen = 0usize;
    let mut failing = false;
    loop {
        let (c, r) = (channel.clone(), run.clone());
        let read = tokio::task::spawn_blocking(move || c.read(&r, seen)).await;
        match read {
            Ok(Ok(requests)) => {
                if failing {
                    info!("the control channel answers again");
                    failing = false;
                }
                for req in requests {
                    seen += 1;
                    // Journal first, then act, then log: a prompt on the
                    // terminal holds the log, not the run's state.
                    if let Some(j) = effects.journal() {
                        j.best_effort(&Record::Control {
                            at: journal::now(),
                            command: req.command.word().into(),
                            by: req.by.clone(),
                            detail: String::new(),
                        });
                    }
                    let line = effects.control().apply(&req);
                    match req.command {
                        Command::Abort | Command::Pause => {
                            warn!(step = req.command.word(), "{line}")
                        }
                        _ => info!(step = req.command.word(), "{line}"),
                    }
                }
            }
            Ok(Err(e)) if !failing => {
                warn!("cannot read the run's control requests (pause, resume, abort, promote): {e}; trying again");
                failing = true;
            }
            _ => {}
        }
        tokio::time::sleep(POLL).await;
    }
}
