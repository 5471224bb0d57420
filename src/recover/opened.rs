//! One inventory's state, as `recover`, `unlock` and `runs` start: the
//! inventory, its identity and its state backend; which run to recover.

use std::path::Path;
use std::sync::Arc;

use crate::config::Inventory;
use crate::journal;
use crate::state::{self, Identity, LockStatus, StateBackend, StoredRun};

/// One inventory's state, as every command here starts.
pub(crate) struct Opened {
    pub inventory: Inventory,
    pub identity: Identity,
    pub backend: Arc<dyn StateBackend>,
}

pub(crate) fn open(inventory_path: &Path) -> Result<Opened, String> {
    let inventory = Inventory::load(inventory_path).map_err(|e| e.to_string())?;
    let identity = Identity::of(&inventory);
    let backend = state::open(&inventory).map_err(|e| e.to_string())?;
    Ok(Opened {
        inventory,
        identity,
        backend,
    })
}

impl Opened {
    pub fn runs(&self) -> Result<Vec<StoredRun>, String> {
        state::runs(&*self.backend, &self.identity, &self.inventory).map_err(|e| e.to_string())
    }

    pub fn where_(&self) -> String {
        format!(
            "{} (state: {})",
            self.inventory.path.display(),
            self.backend.describe()
        )
    }
}

/// The run to recover: the one named, else the newest that left instances
/// out or weights changed.
pub(crate) fn pick(
    runs: &[StoredRun],
    id: Option<&str>,
    where_: &str,
) -> Result<Option<StoredRun>, String> {
    if let Some(id) = id {
        return state::find_run(runs, id)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("no run {id:?} of {where_} (see `rollscript runs`)"));
    }
    Ok(runs
        .iter()
        .rev()
        .find(|r| {
            let s = journal::summarise(&r.records());
            !s.out_of_service.is_empty() || s.weights_changed
        })
        .cloned())
}

pub(crate) fn release_stale_lock(backend: &dyn StateBackend, status: Option<&LockStatus>) {
    if let Some(LockStatus::Stale(h, why)) = status {
        if backend.break_lock().is_ok() {
            println!("released a stale deploy lock: {} — {why}", h.describe());
        }
    }
}
