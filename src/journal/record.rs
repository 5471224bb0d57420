//! The records of a journal, one JSON object per line.

use serde::{Deserialize, Serialize};

/// One line of the journal.
// One run start per journal: boxing it would only complicate building one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    RunStart {
        run: String,
        at: String,
        script: String,
        script_sha256: String,
        inventory: String,
        inventory_sha256: String,
        user: String,
        host: String,
        pid: u32,
        args: Vec<String>,
        /// The inventory's fingerprint ([`crate::state::Identity`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        /// The inventory file, canonical.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inventory_path: Option<String>,
        /// The script, canonical: `recover` compiles it for its `on_compensate`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        script_path: Option<String>,
        /// The process's boot and start (see [`crate::lock::Holder`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        boot_id: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        proc_start: u64,
        /// With `lb.discover = true`: the fleet the run found, so `recover`
        /// knows a member that has left the target group since.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        instances: Vec<KnownInstance>,
    },
    /// Written before an effect acts.
    Intent {
        seq: u64,
        at: String,
        op: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        instance: Option<String>,
        text: String,
    },
    /// Written after it finished.
    Result {
        seq: u64,
        at: String,
        ok: bool,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        error_kind: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        error: Option<String>,
        /// The effect failed but may have taken place (a load-balancer request
        /// sent, its answer lost): treated as done until the LB says otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unknown_outcome: bool,
    },
    /// How a drain ended (after its `wait_drained` result): which signal,
    /// and how much of the LB's fixed delay it saved.
    Drained {
        at: String,
        instance: String,
        /// `lb` (the LB's own state) or `host` (no connection on the host).
        ended_by: String,
        waited_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deregistration_delay_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        saved_ms: Option<u64>,
    },
    /// An instance's fate after a failure, interruption or `recover`.
    Compensation {
        at: String,
        instance: String,
        restored: bool,
        detail: String,
        /// The rollback ran and succeeded: a later `recover` must not run it again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rolled_back: bool,
    },
    /// What a step was told from outside the run: the operator's answer to
    /// `confirm` or `--step` (`step` = `confirm` | `step`), or a metrics
    /// query's value (`step` = `metrics`, `answer` = the number or `no data`).
    Answer {
        at: String,
        step: String,
        question: String,
        answer: String,
    },
    RunEnd {
        at: String,
        outcome: String,
        #[serde(default)]
        left_out: Vec<String>,
        #[serde(default)]
        failed: Vec<String>,
    },
    /// An operator's say in the run: `pause`, `resume`, `abort`, `promote`
    /// (from `rollscript …`, any machine) or the answer to an `approval`.
    Control {
        at: String,
        command: String,
        /// `user@host`.
        by: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
}

/// An instance as a run knew it (discovered ones are in no inventory file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KnownInstance {
    pub name: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl From<&crate::config::Instance> for KnownInstance {
    fn from(i: &crate::config::Instance) -> Self {
        Self {
            name: i.name.clone(),
            host: i.host.clone(),
            port: i.port,
            ssh_port: i.ssh_port,
            health_port: i.health_port,
            id: i.id.clone(),
            pool: i.pool.clone(),
            weight: i.weight,
        }
    }
}

impl From<KnownInstance> for crate::config::Instance {
    fn from(k: KnownInstance) -> Self {
        Self {
            name: k.name,
            host: k.host,
            port: k.port,
            ssh_port: k.ssh_port,
            health_port: k.health_port,
            id: k.id,
            pool: k.pool,
            weight: k.weight,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
