//! The load-balancer contract: one test body every `LoadBalancer` provider
//! must pass, run against HAProxy (`haproxy.rs`), nginx (`nginx.rs`), ELBv2
//! in moto (`aws.rs`) and the fake (`FakeLb`, here). A new backend gets the
//! whole contract by implementing [`Subject`] (the provider, its fleet, and
//! the LB's own view of it) and calling [`check`].
//!
//! What it holds a provider to, checked both through the provider and
//! against the LB's own state (HAProxy's `show stat`, the nginx upstream
//! file, DescribeTargetHealth, the fake's table):
//! - every instance starts in service, and `in_service_count` counts them;
//! - `deregister` takes exactly that instance out of rotation at once (state
//!   draining or out of service, the count one less), `wait_drained` ends
//!   with it out of service, and traffic, where it flows, avoids it;
//! - `register` + `wait_in_service` put it back: in service, counted, and
//!   serving again;
//! - where the LB has weights, `set_weight` is the LB's weight, survives a
//!   deregister/register, and `reset_weight` restores the configured one;
//! - an instance the LB does not know is refused (kind `lb`, naming it) and
//!   nothing else changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rollscript::config::{Instance, Inventory};
use rollscript::primitives::{ActionError, ErrorKind, LoadBalancer, MemberState};
use rollscript::providers::fake::FakeLb;

/// The bound on every wait of the contract.
pub const WAIT: Duration = Duration::from_secs(30);

/// A load balancer under test, with a fleet it serves.
#[async_trait]
pub trait Subject: Send + Sync {
    /// The provider under test.
    fn lb(&self) -> &dyn LoadBalancer;
    /// The inventory it was built from.
    fn inventory(&self) -> &Inventory;
    /// An instance this LB does not know (default: `web-9`, port 1, on the
    /// first instance's host).
    fn stranger(&self) -> Instance {
        Instance {
            name: "web-9".into(),
            port: Some(1),
            ..self.inventory().instances[0].clone()
        }
    }
    /// At least three instances, all in service when [`check`] starts
    /// (default: the inventory's, the stranger excepted).
    fn fleet(&self) -> Vec<Instance> {
        let stranger = self.stranger().name;
        self.inventory()
            .instances
            .iter()
            .filter(|i| i.name != stranger)
            .cloned()
            .collect()
    }
    /// Whether the LB itself (not the provider) routes new traffic to `name`.
    async fn in_rotation(&self, name: &str) -> bool;
    /// The LB's own weight for `name`; only asked when the provider
    /// supports weights.
    async fn weight(&self, _name: &str) -> u32 {
        unreachable!("this LB has no weights")
    }
    /// The names of the instances that answered `n` requests sent through
    /// the LB, where the test can send traffic.
    fn served(&self, _n: usize) -> Option<Vec<String>> {
        None
    }
}

/// Runs the whole contract against `s`.
pub async fn check(s: &dyn Subject) {
    let lb = s.lb();
    let fleet = s.fleet();
    assert!(fleet.len() >= 3, "the contract needs three instances");
    let n = fleet.len();
    let (a, others) = (&fleet[0], &fleet[1..]);
    let count = || async { lb.in_service_count(&fleet).await.unwrap() };
    let rotation = || async {
        let mut out = Vec::new();
        for i in &fleet {
            out.push((i.name.clone(), s.in_rotation(&i.name).await));
        }
        out
    };
    let all_in: Vec<(String, bool)> = fleet.iter().map(|i| (i.name.clone(), true)).collect();
    let only_a_out: Vec<(String, bool)> = fleet
        .iter()
        .map(|i| (i.name.clone(), i.name != a.name))
        .collect();

    // In service at the start.
    assert_eq!(
        count().await,
        n,
        "{}: everyone counted at the start",
        lb.kind()
    );
    for i in &fleet {
        assert_eq!(
            lb.state(i).await.unwrap(),
            MemberState::InService,
            "{}",
            i.name
        );
    }
    assert_eq!(rotation().await, all_in);

    // deregister: out of rotation at once, only that one.
    lb.deregister(a).await.unwrap();
    let state = lb.state(a).await.unwrap();
    assert!(
        matches!(state, MemberState::Draining | MemberState::OutOfService),
        "{}: {} after deregister: {state:?}",
        lb.kind(),
        a.name
    );
    assert_eq!(
        rotation().await,
        only_a_out,
        "{}: after deregister",
        lb.kind()
    );
    assert_eq!(
        count().await,
        n - 1,
        "{}: counted after deregister",
        lb.kind()
    );
    for i in others {
        assert_eq!(
            lb.state(i).await.unwrap(),
            MemberState::InService,
            "{}",
            i.name
        );
    }

    // drained: out of service, and no traffic reaches it.
    lb.wait_drained(a, WAIT).await.unwrap();
    assert_eq!(lb.state(a).await.unwrap(), MemberState::OutOfService);
    assert_eq!(
        rotation().await,
        only_a_out,
        "{}: after the drain",
        lb.kind()
    );
    assert_eq!(
        count().await,
        n - 1,
        "{}: counted after the drain",
        lb.kind()
    );
    if let Some(served) = s.served(3 * n) {
        assert!(
            !served.contains(&a.name),
            "{}: {} served while out: {served:?}",
            lb.kind(),
            a.name
        );
    }

    // register + wait_in_service: back, counted, serving.
    lb.register(a).await.unwrap();
    lb.wait_in_service(a, WAIT).await.unwrap();
    assert_eq!(lb.state(a).await.unwrap(), MemberState::InService);
    assert_eq!(rotation().await, all_in, "{}: after register", lb.kind());
    assert_eq!(count().await, n, "{}: counted after register", lb.kind());
    if let Some(served) = s.served(3 * n) {
        assert!(
            served.contains(&a.name),
            "{}: {} serves again: {served:?}",
            lb.kind(),
            a.name
        );
    }

    // Weights, where the LB has them.
    if lb.supports_weights() {
        let configured = s.weight(&a.name).await;
        lb.set_weight(a, 3).await.unwrap();
        assert_eq!(s.weight(&a.name).await, 3, "{}: set_weight", lb.kind());
        lb.deregister(a).await.unwrap();
        lb.register(a).await.unwrap();
        lb.wait_in_service(a, WAIT).await.unwrap();
        assert_eq!(
            s.weight(&a.name).await,
            3,
            "{}: the weight survives a deregister/register",
            lb.kind()
        );
        lb.reset_weight(a).await.unwrap();
        assert_eq!(
            s.weight(&a.name).await,
            configured,
            "{}: reset_weight",
            lb.kind()
        );
    }

    // An instance the LB does not know: refused, naming it; nothing changes.
    let stranger = s.stranger();
    let refused = |e: ActionError, op: &str| {
        assert_eq!(
            e.kind,
            ErrorKind::Lb,
            "{}: {op} of a stranger: {e}",
            lb.kind()
        );
        assert_eq!(
            e.host.as_deref(),
            Some(stranger.name.as_str()),
            "{}: {op} names the stranger: {e}",
            lb.kind()
        );
    };
    refused(lb.deregister(&stranger).await.unwrap_err(), "deregister");
    refused(lb.register(&stranger).await.unwrap_err(), "register");
    match lb.state(&stranger).await {
        Ok(state) => assert_eq!(state, MemberState::Unknown, "{}", lb.kind()),
        Err(e) => refused(e, "state"),
    }
    assert_eq!(
        rotation().await,
        all_in,
        "{}: after the refusals",
        lb.kind()
    );
    assert_eq!(
        count().await,
        n,
        "{}: counted after the refusals",
        lb.kind()
    );
}

// ---- the fake -------------------------------------------------------------------------

/// `FakeLb` over three instances, `web-9` unknown to it.
struct Fake {
    lb: Arc<FakeLb>,
    inv: Inventory,
}

impl Fake {
    fn new() -> Fake {
        let text = "[app]\nname = \"fake\"\ndeploy = \"true\"\n\n[lb]\nkind = \"none\"\n\n\
                    [[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n\n\
                    [[instances]]\nname = \"web-2\"\nhost = \"127.0.0.2\"\n\n\
                    [[instances]]\nname = \"web-3\"\nhost = \"127.0.0.3\"\n";
        let inv = Inventory::parse(std::path::Path::new("fake.toml"), text).unwrap();
        let lb = Arc::new(FakeLb::default());
        // The fake knows every instance but web-9: its refusals are configured.
        for op in ["deregister", "register"] {
            lb.failures.lock().unwrap().insert(
                format!("{op} web-9"),
                ActionError::new(ErrorKind::Lb, "fake: no server web-9"),
            );
        }
        lb.states
            .lock()
            .unwrap()
            .insert("web-9".into(), MemberState::Unknown);
        Fake { lb, inv }
    }
}

#[async_trait]
impl Subject for Fake {
    fn lb(&self) -> &dyn LoadBalancer {
        &*self.lb
    }

    fn inventory(&self) -> &Inventory {
        &self.inv
    }

    async fn in_rotation(&self, name: &str) -> bool {
        self.lb.state_of(name) == MemberState::InService
    }

    /// The fake's weight is what its calls say: the last `weight=N`, or 1
    /// (configured) after a `weight=reset` or before any.
    async fn weight(&self, name: &str) -> u32 {
        let mut weights = BTreeMap::new();
        for call in self.lb.calls.all() {
            if let Some((w, who)) = call
                .strip_prefix("weight=")
                .and_then(|rest| rest.split_once(' '))
            {
                match w.parse() {
                    Ok(w) => weights.insert(who.to_string(), w),
                    Err(_) => weights.remove(who),
                };
            }
        }
        weights.get(name).copied().unwrap_or(1)
    }
}

#[tokio::test]
async fn the_fake_keeps_the_load_balancer_contract() {
    check(&Fake::new()).await;
}
