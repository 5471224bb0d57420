//! Health checks: HTTP from here, or on the instance (`health.via`, `health.command`).

use std::sync::Arc;

use rhai::{Dynamic, Engine, Map, INT};

use super::func;
use crate::engine::context::ScriptContext;
use crate::engine::convert::{duration_arg, health_map, invalid, throw, RhaiResult};

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    let c = ctx.clone();
    func(
        "health",
        &["inst: Instance", "Map"],
        "Polls `inst`'s health URL per the inventory's `[health]` (from this machine; on the instance over ssh with `health.via = \"ssh\"` — curl against localhost — or `health.command`, whose exit status is the verdict) until `healthy_threshold` consecutive successes, or fails (kind `health_failed`) after `retries` attempts, listing what each attempt saw. Returns `#{url, healthy, duration, attempts}`.
Example: `health(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<Map> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        let probe = c.effects.probe_for(inst);
        c.block_on(c.effects.health(&inst.name, &probe))
            .map(|r| health_map(&r))
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "health_url",
        &["url: String", "options: Map", "Map"],
        "Like `health`, for any URL. Options override the inventory's `[health]`: `expect_status`, `expect_body`, `timeout`, `interval`, `retries`, `healthy_threshold`.
Example: `health_url(\"http://127.0.0.1:8080/ready\", #{retries: 5, expect_body: \"ok\"});`",
    )
    .register_into_engine(engine, move |url: &str, opts: Map| -> RhaiResult<Map> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(format!("health_url: expected an http(s) URL, got {url:?}")));
        }
        let mut probe = c.effects.probe_for(&crate::config::Instance::local());
        probe.url = url.to_string();
        for (k, v) in &opts {
            let int = |v: &Dynamic| -> RhaiResult<INT> {
                v.as_int()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid(format!("health_url: option `{k}` must be a positive integer")))
            };
            match k.as_str() {
                "expect_status" => probe.expect_status = int(v)? as u16,
                "expect_body" => probe.expect_body = Some(v.to_string()),
                "timeout" => probe.timeout = duration_arg(v)?,
                "interval" => probe.interval = duration_arg(v)?,
                "retries" => probe.retries = int(v)? as u32,
                "healthy_threshold" => probe.healthy_threshold = int(v)? as u32,
                other => return Err(invalid(format!("health_url: unknown option `{other}`"))),
            }
        }
        c.block_on(c.effects.health(url, &probe))
            .map(|r| health_map(&r))
            .map_err(throw)
    });
}
