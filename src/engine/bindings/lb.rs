//! Load-balancer membership, waits and weights.

use std::sync::Arc;

use rhai::{Dynamic, Engine, Map, INT};

use super::func;
use crate::engine::context::ScriptContext;
use crate::engine::convert::{drain_map, invalid, throw, RhaiResult};

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    let c = ctx.clone();
    func(
        "deregister",
        &["inst: Instance"],
        "Takes `inst` out of the load balancer: no new traffic; open connections may finish (HAProxy `drain`, nginx `down` + reload, ELBv2 deregister). Refused (kind `capacity`) when it would leave fewer than `lb.min_in_service` instances in service. Follow it with `wait_drained(inst)`.
Example: `deregister(inst); wait_drained(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<()> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.deregister(inst)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "wait_drained",
        &["inst: Instance", "Map"],
        "Waits until the load balancer reports no open connections to `inst` (HAProxy `scur` and queue 0, then maint; nginx: no connection left from nginx to it, counted with `ss`; ELBv2 `unused`, or with `lb.drain_detect = \"auto\"` `draining` with no connection to the target's port on the instance for `lb.drain_settle`; on every LB of `[[lb]]`), bounded by `lb.drain_timeout`: past it, with `lb.on_drain_timeout = \"proceed\"` (the default) what is left is closed where the LB can (HAProxy `shutdown sessions server`), warned and journalled, and the run goes on; with `\"fail\"` an error of kind `drain_timeout`. Returns `#{waited, connections_at_start, ended_by}` (`ended_by`: `\"lb\"` or `\"host\"`).
Example: `let d = wait_drained(inst); info(`drained in ${d.waited}s`);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<Map> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.wait_drained(inst))
            .map(|r| drain_map(&r))
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "register",
        &["inst: Instance"],
        "Puts `inst` back into the load balancer (HAProxy `ready`, nginx `down` removed + reload, ELBv2 register). Follow it with `wait_in_service(inst)`.
Example: `register(inst); wait_in_service(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<()> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.register(inst)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "wait_in_service",
        &["inst: Instance", "FLOAT"],
        "Waits until the load balancer's own health checks report `inst` healthy, bounded by `lb.register_timeout`; fails early when the LB marks it down. Returns the seconds waited.
Example: `wait_in_service(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<f64> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.wait_in_service(inst))
            .map(|d| d.as_secs_f64())
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "set_weight",
        &["inst: Instance", "weight: INT"],
        "Sets the share of traffic `inst` receives (0-256; HAProxy `set server … weight`, nginx `weight=`). Weight 0 keeps it registered but idle.
Example: `set_weight(canary, 10);`",
    )
    .register_into_engine(engine, move |inst: Dynamic, weight: INT| -> RhaiResult<()> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        if !(0..=256).contains(&weight) {
            return Err(invalid(format!("set_weight: weight must be 0-256, got {weight}")));
        }
        c.block_on(c.effects.set_weight(inst, weight as u32)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "supports_weights",
        &["bool"],
        "Whether the load balancer can weigh instances against each other (HAProxy and nginx: yes; ELBv2 and `none`: no), for scripts that stage by weight.
Example: `if !supports_weights() { fail(\"usage\", \"stage by count\"); }`",
    )
    .register_into_engine(engine, move || -> bool { c.effects.supports_weights() });

    let c = ctx.clone();
    func(
        "shift_traffic",
        &["group: Array", "share: Dynamic", "FLOAT"],
        "Sets LB weights so that the instances in `group` receive about `share` (\"5%\" or 0.05, strictly between 0 and 100 %) of their fleet's traffic: `group` gets one weight, every other instance of the fleet (of the pool, with pools) another, both 1-256. Returns the share those integer weights give (0-1). A failed or interrupted run puts the weights back as configured; so does `reset_weights()`. Refused before any change on load balancers without weights.
Example: `let got = shift_traffic([canary], \"5%\"); info(`canary takes ${got * 100.0}%`);`",
    )
    .register_into_engine(
        engine,
        move |group: rhai::Array, share: Dynamic| -> RhaiResult<f64> {
            let share = share_arg(&share)?;
            let group = group
                .iter()
                .map(|i| crate::engine::instance::arg(&c.effects.inventory, i).cloned())
                .collect::<RhaiResult<Vec<_>>>()?;
            c.block_on(c.effects.shift_traffic(&group, share))
                .map_err(throw)
        },
    );

    let c = ctx.clone();
    func(
        "reset_weights",
        &["INT"],
        "Puts every LB weight this run changed (`set_weight`, `shift_traffic`) back as configured: HAProxy `weight 100%` (the weight in haproxy.cfg), nginx the inventory's `weight` or none. Returns how many instances it reset (0 when none changed).
Example: `reset_weights();`",
    )
    .register_into_engine(engine, move || -> RhaiResult<INT> {
        c.block_on(c.effects.reset_weights())
            .map(|n| n as INT)
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "lb_state",
        &["inst: Instance", "String"],
        "What the load balancer says about `inst` now: `in_service`, `draining`, `out_of_service`, `unhealthy`, `starting` or `unknown`.
Example: `if lb_state(inst) != \"in_service\" { warn(\"not serving\"); }`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<String> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.state(inst))
            .map(|s| s.as_str().to_string())
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "in_service_count",
        &["INT"],
        "How many of the inventory's instances the load balancer has in service now.
Example: `info(`${in_service_count()} serving`);`",
    )
    .register_into_engine(engine, move || -> RhaiResult<INT> {
        c.block_on(c.effects.in_service_count())
            .map(|n| n as INT)
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "lb_stats",
        &["inst: Instance", "Map"],
        "The load balancer's own numbers for `inst` (HAProxy: `sessions`, `requests`, `http_5xx`, `http_2xx`, `response_ms`, …); empty where the LB keeps none.
Example: `let s = lb_stats(canary); if s.http_5xx > 0 { throw \"5xx\"; }`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<Map> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        let stats = c.block_on(c.effects.stats(inst)).map_err(throw)?;
        Ok(stats
            .into_iter()
            .map(|(k, v)| (k.into(), Dynamic::from(v)))
            .collect())
    });

    let c = ctx.clone();
    func(
        "live_pools",
        &["Array"],
        "The blue/green pools (`lb.pools`) taking traffic now, as the load balancer says: HAProxy and nginx, the pools with a member in rotation; ELBv2, the pools whose target group the listener forwards to. A plan assumes the first pool is live.
Example: `let live = live_pools(); if live.len() != 1 { fail(\"invalid_argument\", `live: ${live}`); }`",
    )
    .register_into_engine(engine, move || -> RhaiResult<rhai::Array> {
        c.block_on(c.effects.live_pools())
            .map(|v| v.into_iter().map(Dynamic::from).collect())
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "switch_pool",
        &["pool: String"],
        "Sends all traffic to the instances of `pool` in one step (blue/green), once the load balancer's own checks report the pool healthy (waits up to `lb.register_timeout`; refuses, changing nothing, when none of it came up): HAProxy `ready` for the pool and `drain` for the others in one write, nginx one rewrite of the upstream and one reload, ELBv2 the listener's forward action (100 to the pool's target group, 0 to the others).
Example: `switch_pool(\"green\");`",
    )
    .register_into_engine(engine, move |pool: &str| -> RhaiResult<()> {
        if !c.effects.inventory.lb.pools.contains_key(pool) {
            return Err(invalid(format!(
                "switch_pool: no pool {pool:?} in lb.pools of {}",
                c.effects.inventory.path.display()
            )));
        }
        c.block_on(c.effects.switch_pool(pool)).map_err(throw)
    });
}

/// A share of traffic: "25%" or 0.25.
fn share_arg(v: &Dynamic) -> RhaiResult<f64> {
    if let Ok(f) = v.as_float() {
        return Ok(f);
    }
    if v.is_string() {
        let text = v.to_string();
        if let Some(p) = text.trim().strip_suffix('%') {
            if let Ok(p) = p.trim().parse::<f64>() {
                return Ok(p / 100.0);
            }
        }
        return Err(invalid(format!(
            "invalid share {text:?}: a percentage like \"5%\" or a fraction like 0.05"
        )));
    }
    Err(invalid(format!(
        "expected a share like \"5%\" or 0.05, got {}",
        v.type_name()
    )))
}
