//! Fakes of the services beside the fleet: the database lock, metrics,
//! notifications, the operator's answers and discovery. Each records what it
//! was asked, so a test asserts the exact calls.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::Calls;
use crate::config::{Instance, Inventory};
use crate::primitives::{ActionResult, Database, DbLock, Discovery, Metrics, Notifier, Operator};

/// A lock held while its guard lives; `held` makes every try fail.
#[derive(Default)]
pub struct FakeDatabase {
    pub calls: Calls,
    pub held: Mutex<bool>,
}

struct FakeDbLock(Calls, i64);

#[async_trait]
impl DbLock for FakeDbLock {
    async fn unlock(self: Box<Self>) {
        self.0.push(format!("unlock {}", self.1));
    }
}

#[async_trait]
impl Database for FakeDatabase {
    async fn try_lock(&self, _url: &str, key: i64) -> ActionResult<Option<Box<dyn DbLock>>> {
        self.calls.push(format!("try_lock {key}"));
        if *self.held.lock().unwrap() {
            return Ok(None);
        }
        Ok(Some(Box::new(FakeDbLock(self.calls.clone(), key))))
    }
}

/// Answers queries from `values` (by the exact PromQL); `None` otherwise.
#[derive(Default)]
pub struct FakeMetrics {
    pub calls: Calls,
    pub values: Mutex<BTreeMap<String, f64>>,
}

#[async_trait]
impl Metrics for FakeMetrics {
    async fn query(&self, _url: &str, promql: &str) -> ActionResult<Option<f64>> {
        self.calls.push(format!("query {promql}"));
        Ok(self.values.lock().unwrap().get(promql).copied())
    }
}

#[derive(Default)]
pub struct FakeNotifier {
    pub calls: Calls,
}

#[async_trait]
impl Notifier for FakeNotifier {
    async fn notify(&self, url: &str, message: &str) -> Result<(), String> {
        self.calls.push(format!("notify {url}: {message}"));
        Ok(())
    }
}

/// Answers questions from a queue; with an empty queue it is "no terminal".
#[derive(Default)]
pub struct FakeOperator {
    pub questions: Calls,
    pub answers: Mutex<VecDeque<String>>,
}

impl Operator for FakeOperator {
    fn interactive(&self) -> bool {
        !self.answers.lock().unwrap().is_empty()
    }

    fn ask(&self, question: &str) -> Option<String> {
        self.questions.push(question.to_string());
        self.answers.lock().unwrap().pop_front()
    }
}

/// Finds `found` when the inventory discovers.
#[derive(Default)]
pub struct FakeDiscovery {
    pub found: Mutex<Vec<Instance>>,
}

#[async_trait]
impl Discovery for FakeDiscovery {
    async fn discover(&self, _inv: &Inventory) -> ActionResult<Vec<Instance>> {
        Ok(self.found.lock().unwrap().clone())
    }
}

/// The service fakes of one [`super::Fakes`].
#[derive(Default, Clone)]
pub struct ServiceFakes {
    pub database: Arc<FakeDatabase>,
    pub metrics: Arc<FakeMetrics>,
    pub notifier: Arc<FakeNotifier>,
    pub operator: Arc<FakeOperator>,
    pub discovery: Arc<FakeDiscovery>,
}
