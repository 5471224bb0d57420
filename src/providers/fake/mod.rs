//! In-memory fakes of every side-effect trait, for fast script-logic tests
//! (compensation, capacity guard, journal, strategies' control flow). They
//! record every call so a test can assert the exact sequence. Real components
//! are tested separately against sshd, HAProxy, nginx and moto.

mod services;

pub use services::{
    FakeDatabase, FakeDiscovery, FakeMetrics, FakeNotifier, FakeOperator, ServiceFakes,
};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::Instance;
use crate::primitives::{
    ActionError, ActionResult, Attempt, Cmd, DrainReport, ErrorKind, ExecOutput, HealthCheck,
    HealthProbe, HealthReport, LbOp, LoadBalancer, MemberState, MemberStats, Providers, Transport,
};

/// Shared call log: `"deregister web-1"`, `"ssh web-2: ./deploy.sh"`, `"health web-1"`.
#[derive(Default, Clone)]
pub struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    pub fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Default)]
pub struct FakeLb {
    pub calls: Calls,
    /// Instance name → state; absent means in service.
    pub states: Mutex<BTreeMap<String, MemberState>>,
    /// `"deregister web-2"` → fail with this error. An error marked
    /// `unknown_outcome` is returned *after* the change took effect (a
    /// request whose answer was lost).
    pub failures: Mutex<BTreeMap<String, ActionError>>,
    /// Like `failures`, but each fails once.
    pub fail_once: Mutex<BTreeMap<String, ActionError>>,
    /// What `verify` reports (inventory disagreements).
    pub problems: Mutex<Vec<String>>,
    /// How long each wait takes (tokio time, so tests can pause the clock).
    pub wait: Duration,
    /// The most instances out of service at one instant (not `InService`).
    pub max_out: Mutex<usize>,
    /// What `stats` reports per instance (absent: no numbers, like nginx).
    pub stats: Mutex<BTreeMap<String, MemberStats>>,
}

impl FakeLb {
    fn op(&self, what: &str, inst: &Instance) -> ActionResult<()> {
        let key = format!("{what} {}", inst.name);
        self.calls.push(key.clone());
        let once = self.fail_once.lock().unwrap().remove(&key);
        match once.or_else(|| self.failures.lock().unwrap().get(&key).cloned()) {
            Some(e) => Err(e.host(inst.name.clone())),
            None => Ok(()),
        }
    }

    /// Sets `name`'s state as the LB's reaction to `result` of an op.
    fn apply(&self, name: &str, state: MemberState, result: ActionResult<()>) -> ActionResult<()> {
        let applies = match &result {
            Ok(()) => true,
            Err(e) => e.unknown_outcome,
        };
        if applies {
            let mut states = self.states.lock().unwrap();
            states.insert(name.to_string(), state);
            let out = states
                .values()
                .filter(|s| **s != MemberState::InService)
                .count();
            let mut max = self.max_out.lock().unwrap();
            *max = (*max).max(out);
        }
        result
    }

    /// Sets what the LB says about `name` (out of rotation before a run,
    /// DOWN by health, …).
    pub fn park(&self, name: &str, state: MemberState) {
        self.states.lock().unwrap().insert(name.to_string(), state);
    }

    pub fn state_of(&self, name: &str) -> MemberState {
        self.states
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or(MemberState::InService)
    }
}

#[async_trait]
impl LoadBalancer for FakeLb {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn describe(&self, op: LbOp, inst: &Instance) -> String {
        format!("fake {}: {op:?}", inst.name)
    }
    async fn deregister(&self, inst: &Instance) -> ActionResult<()> {
        let r = self.op("deregister", inst);
        self.apply(&inst.name, MemberState::OutOfService, r)
    }
    async fn wait_drained(&self, inst: &Instance, _timeout: Duration) -> ActionResult<DrainReport> {
        self.op("wait_drained", inst)?;
        tokio::time::sleep(self.wait).await;
        Ok(DrainReport {
            waited: self.wait,
            ..Default::default()
        })
    }
    async fn register(&self, inst: &Instance) -> ActionResult<()> {
        // Registered: in rotation, not yet passing the LB's checks.
        let r = self.op("register", inst);
        self.apply(&inst.name, MemberState::Starting, r)
    }
    async fn wait_in_service(&self, inst: &Instance, _timeout: Duration) -> ActionResult<Duration> {
        tokio::time::sleep(self.wait).await;
        match self.op("wait_in_service", inst) {
            Ok(()) => {
                self.apply(&inst.name, MemberState::InService, Ok(()))?;
                Ok(self.wait)
            }
            Err(e) => {
                // The LB's checks marked it down.
                self.apply(&inst.name, MemberState::Unhealthy, Ok(()))?;
                Err(e)
            }
        }
    }
    fn state_word(&self, state: &MemberState) -> String {
        match state {
            MemberState::OutOfService => "MAINT".into(),
            MemberState::Draining => "DRAIN".into(),
            other => other.as_str().into(),
        }
    }
    async fn stats(&self, inst: &Instance) -> ActionResult<MemberStats> {
        Ok(self
            .stats
            .lock()
            .unwrap()
            .get(&inst.name)
            .cloned()
            .unwrap_or_default())
    }
    async fn verify(&self, _fleet: &[Instance]) -> ActionResult<Vec<String>> {
        Ok(self.problems.lock().unwrap().clone())
    }
    async fn set_weight(&self, inst: &Instance, weight: u32) -> ActionResult<()> {
        self.op(&format!("weight={weight}"), inst)
    }
    fn supports_weights(&self) -> bool {
        true
    }
    async fn reset_weight(&self, inst: &Instance) -> ActionResult<()> {
        self.op("weight=reset", inst)
    }
    async fn state(&self, inst: &Instance) -> ActionResult<MemberState> {
        Ok(self.state_of(&inst.name))
    }
    async fn in_service_count(&self, fleet: &[Instance]) -> ActionResult<usize> {
        Ok(fleet
            .iter()
            .filter(|i| self.state_of(&i.name) == MemberState::InService)
            .count())
    }
}

/// Commands always succeed unless a rule matches a substring of the command line.
#[derive(Default)]
pub struct FakeTransport {
    pub calls: Calls,
    /// (instance name or "*", substring of the command) → exit status and stderr.
    pub rules: Mutex<Vec<(String, String, i32, String)>>,
    /// How long each command takes (benches: a realistic round trip).
    pub latency: Duration,
}

impl FakeTransport {
    pub fn fail(&self, instance: &str, contains: &str, status: i32, stderr: &str) {
        self.rules
            .lock()
            .unwrap()
            .push((instance.into(), contains.into(), status, stderr.into()));
    }
}

#[async_trait]
impl Transport for FakeTransport {
    fn describe(&self, inst: &Instance, cmd: &Cmd) -> String {
        format!("ssh {}: {}", inst.name, cmd.to_shell())
    }
    async fn exec(
        &self,
        inst: &Instance,
        cmd: &Cmd,
        _timeout: Duration,
    ) -> ActionResult<ExecOutput> {
        let line = cmd.to_shell();
        self.calls.push(format!("ssh {}: {line}", inst.name));
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let rules = self.rules.lock().unwrap().clone();
        for (who, contains, status, stderr) in rules {
            if (who == "*" || who == inst.name) && line.contains(&contains) {
                return Ok(ExecOutput {
                    status,
                    stderr,
                    ..Default::default()
                });
            }
        }
        Ok(ExecOutput::default())
    }
}

/// Healthy unless the URL is in `unhealthy`.
#[derive(Default)]
pub struct FakeHealth {
    pub calls: Calls,
    pub unhealthy: Mutex<BTreeSet<String>>,
    /// How long each check takes (benches).
    pub latency: Duration,
}

#[async_trait]
impl HealthCheck for FakeHealth {
    async fn check(&self, probe: &HealthProbe) -> ActionResult<HealthReport> {
        self.calls.push(format!("health {}", probe.url));
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.unhealthy.lock().unwrap().contains(&probe.url) {
            return Err(ActionError::new(
                ErrorKind::HealthFailed,
                format!(
                    "not healthy: {} after {} attempts (503)",
                    probe.url, probe.retries
                ),
            ));
        }
        Ok(HealthReport {
            url: probe.url.clone(),
            attempts: vec![Attempt {
                at: Duration::ZERO,
                outcome: "200".into(),
                ok: true,
                latency: Duration::ZERO,
            }],
            duration: Duration::ZERO,
        })
    }
}

/// A full set of fakes, and handles to inspect them.
pub struct Fakes {
    pub lb: Arc<FakeLb>,
    pub ssh: Arc<FakeTransport>,
    pub health: Arc<FakeHealth>,
    pub services: ServiceFakes,
}

impl Fakes {
    pub fn new() -> Self {
        Self {
            lb: Arc::new(FakeLb::default()),
            ssh: Arc::new(FakeTransport::default()),
            health: Arc::new(FakeHealth::default()),
            services: ServiceFakes::default(),
        }
    }

    pub fn providers(&self) -> Providers {
        let s = &self.services;
        Providers {
            lb: self.lb.clone(),
            ssh: self.ssh.clone(),
            local: Arc::new(super::local::LocalTransport),
            health: self.health.clone(),
            database: s.database.clone(),
            metrics: s.metrics.clone(),
            notifier: s.notifier.clone(),
            operator: s.operator.clone(),
            discovery: s.discovery.clone(),
        }
    }
}

impl Default for Fakes {
    fn default() -> Self {
        Self::new()
    }
}
