//! What every binding can reach during one run: the effects layer, the
//! `--var` values, the operator's answers, and the per-run `once` cache.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

#[allow(deprecated)]
use rhai::{Dynamic, FnPtr, NativeCallContextStore};
use tokio::runtime::Handle;

use crate::effects::Effects;

/// How the operator wants prompts answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// `--yes`: every `confirm` is answered yes.
    Yes,
    /// Ask on the terminal; refuse if there is none.
    Ask,
}

pub struct ScriptContext {
    pub effects: Arc<Effects>,
    pub vars: BTreeMap<String, String>,
    pub answers: Answers,
    handle: Handle,
    /// `once(key, fn)` results. One mutex per key so a second caller waits for
    /// the first to finish instead of running the step again.
    once: Mutex<HashMap<String, Arc<Mutex<Option<Dynamic>>>>>,
    /// `on_compensate(f)`: the script's rollback step and the state (imports)
    /// it needs, to call after the script itself has stopped.
    #[allow(deprecated)]
    pub(crate) hook: Mutex<Option<(FnPtr, NativeCallContextStore)>>,
    /// `--only-failed`: the instances `instances()` returns, when set.
    pub only: Option<std::collections::BTreeSet<String>>,
    /// What `inventory()` returns, built at its first call.
    pub(crate) inventory_map: std::sync::OnceLock<rhai::Map>,
}

impl ScriptContext {
    pub fn new(
        effects: Arc<Effects>,
        vars: BTreeMap<String, String>,
        answers: Answers,
        handle: Handle,
    ) -> Self {
        Self {
            effects,
            vars,
            answers,
            handle,
            once: Mutex::new(HashMap::new()),
            hook: Mutex::new(None),
            only: None,
            inventory_map: std::sync::OnceLock::new(),
        }
    }

    /// How many instances `instances()` returns.
    pub fn instance_count(&self) -> usize {
        match &self.only {
            Some(only) => only.len(),
            None => self.effects.inventory.instances.len(),
        }
    }

    /// Restricts `instances()` to `names` (re-running only failed instances).
    pub fn only(mut self, names: std::collections::BTreeSet<String>) -> Self {
        self.only = Some(names);
        self
    }

    /// Runs an async primitive from the script's blocking thread. The future is
    /// built by the caller inside this call, so nothing borrows across threads.
    /// Afterwards it notes a cancellation the primitive saw, for the engine's
    /// cheap check between operations ([`crate::effects::Effects::seen_cancelled`]).
    ///
    /// A future that is ready at once (every primitive in a plan, most
    /// reads of state) is polled once here, inside the runtime's context,
    /// without `Handle::block_on`'s setting up and tearing down of a
    /// blocking runtime context each time (2 % of the instructions of
    /// a plan); one that is not is handed to `block_on`, whose poll
    /// replaces the first poll's no-op waker.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let first = {
            let _in_runtime = self.handle.enter();
            fut.as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        };
        let out = match first {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => self.handle.block_on(fut),
        };
        self.effects.is_cancelled();
        out
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn once_slot(&self, key: &str) -> Arc<Mutex<Option<Dynamic>>> {
        self.once
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .clone()
    }
}
