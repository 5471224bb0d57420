//! The inventory exactly as written in TOML: loose types, every key optional,
//! unknown keys refused. [`super::validate`] turns this into an [`super::Inventory`].

use serde::Deserialize;

/// Integer or string, for keys that take a count or a percentage (`1`, `"50%"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub app: Option<RawApp>,
    pub ssh: Option<RawSsh>,
    pub health: Option<RawHealth>,
    /// `[lb]` (one) or `[[lb]]` (several).
    pub lb: Option<RawLbs>,
    pub database: Option<RawDatabase>,
    pub state: Option<RawState>,
    #[serde(default)]
    pub instances: Vec<RawInstance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub name: Option<String>,
    pub deploy: Option<String>,
    pub rollback: Option<String>,
    pub migrate: Option<String>,
    pub migrate_timeout: Option<String>,
    pub on_rollback_failure: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    pub user: Option<String>,
    pub port: Option<i64>,
    pub identity: Option<String>,
    pub known_hosts: Option<String>,
    pub host_key_checking: Option<String>,
    pub config: Option<String>,
    pub connect_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub max_parallel: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub scheme: Option<String>,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub expect_status: Option<i64>,
    pub expect_body: Option<String>,
    pub timeout: Option<String>,
    pub interval: Option<String>,
    pub retries: Option<i64>,
    pub healthy_threshold: Option<i64>,
    pub via: Option<String>,
    pub command: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLb {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub on_drain_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub register_timeout: Option<String>,
    pub poll_interval: Option<String>,
    pub min_in_service: Option<IntOrString>,
    pub drain_detect: Option<String>,
    pub drain_settle: Option<String>,
    // haproxy
    pub socket: Option<String>,
    pub backend: Option<String>,
    // nginx
    pub upstream_file: Option<String>,
    pub upstream: Option<String>,
    pub test_command: Option<String>,
    pub reload_command: Option<String>,
    pub run_on: Option<String>,
    // aws
    pub target_group_arn: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub listener_arn: Option<String>,
    pub port: Option<i64>,
    pub discover: Option<bool>,
    // blue/green: one backend or target group per pool
    pub pools: Option<std::collections::BTreeMap<String, RawPool>>,
}

/// `[lb]` or `[[lb]]`. Not `#[serde(untagged)]`: that would swallow the
/// located "unknown key" errors of the entries into "did not match any variant".
#[derive(Debug)]
pub enum RawLbs {
    One(Box<RawLb>),
    Many(Vec<RawLb>),
}

impl<'de> Deserialize<'de> for RawLbs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawLbs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an [lb] table or [[lb]] entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<RawLbs, A::Error> {
                RawLb::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(|l| RawLbs::One(Box::new(l)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, s: A) -> Result<RawLbs, A::Error> {
                Vec::<RawLb>::deserialize(serde::de::value::SeqAccessDeserializer::new(s))
                    .map(RawLbs::Many)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub backend: Option<String>,
    pub upstream: Option<String>,
    pub target_group_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<String>,
    pub lock_id: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub ssh_port: Option<i64>,
    pub health_port: Option<i64>,
    pub id: Option<String>,
    pub pool: Option<String>,
    pub weight: Option<i64>,
}
