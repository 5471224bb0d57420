//! The side effects beside the fleet's own: the database lock a migration
//! runs under, metric queries for canary gates, notifications, questions to
//! the operator, and discovery of the fleet. Each is a trait with a live
//! implementation in `providers` and a fake for tests, so the effects layer
//! is the only door to all of them and a dry run or a test can stand in.

use async_trait::async_trait;

use super::ActionResult;
use crate::config::{Instance, Inventory};

/// A held lock on a shared database (PostgreSQL `pg_try_advisory_lock`).
#[async_trait]
pub trait DbLock: Send + Sync {
    async fn unlock(self: Box<Self>);
}

#[async_trait]
pub trait Database: Send + Sync {
    /// Takes lock `key` on the database at `url`; `Ok(None)` when another
    /// session holds it.
    async fn try_lock(&self, url: &str, key: i64) -> ActionResult<Option<Box<dyn DbLock>>>;
}

#[async_trait]
pub trait Metrics: Send + Sync {
    /// One instant query (`/api/v1/query`): the first sample's value, `None`
    /// for no data (an empty result, NaN, ±Inf).
    async fn query(&self, url: &str, promql: &str) -> ActionResult<Option<f64>>;
}

#[async_trait]
pub trait Notifier: Send + Sync {
    /// Posts `message` to a Slack-compatible webhook; the error as text.
    async fn notify(&self, url: &str, message: &str) -> Result<(), String>;
}

/// Questions to the person running the deploy (`confirm`, `--step`).
/// Blocking: a prompt waits for a line.
pub trait Operator: Send + Sync {
    /// Whether a person can answer (a terminal): `confirm` refuses to guess
    /// without one.
    fn interactive(&self) -> bool;
    /// Asks `question`; the answer line, trimmed and lower-case (`--step`
    /// also takes answers piped in), or `None` at the end of the input.
    fn ask(&self, question: &str) -> Option<String>;
    /// [`Operator::ask`] that gives up (`None`) once `stop` says so: an
    /// `approval` the control channel answered first. Checked at least
    /// every 200 ms.
    fn ask_until(&self, question: &str, stop: &(dyn Fn() -> bool + Send + Sync)) -> Option<String> {
        if stop() {
            return None;
        }
        self.ask(question)
    }
}

#[async_trait]
pub trait Discovery: Send + Sync {
    /// The fleet's members the load balancer knows and the inventory may not
    /// list (`lb.discover = true`); empty when the inventory discovers nothing.
    async fn discover(&self, inv: &Inventory) -> ActionResult<Vec<Instance>>;
}
