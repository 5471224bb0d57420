//! Load-balancer membership, waits and weights.

use std::sync::Arc;

use rhai::{Dynamic, Engine, Map, INT};

use super::func;
use crate::engine::context::ScriptContext;
use crate::engine::convert::{drain_map, instance_arg, invalid, throw, RhaiResult};

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    let c = ctx.clone();
    func(
        "deregister",
        &["inst: Map"],
        "Takes `inst` out of the load balancer: no new traffic; open connections may finish (HAProxy `drain`, nginx `down` + reload, ELBv2 deregister). Refused (kind `capacity`) when it would leave fewer than `lb.min_in_service` instances in service. Follow it with `wait_drained(inst)`.
Example: `deregister(inst); wait_drained(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<()> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.deregister(&inst)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "wait_drained",
        &["inst: Map", "Map"],
        "Waits until the load balancer reports no open connections to `inst` (HAProxy `scur` and queue 0, then maint; nginx's old workers gone; ELBv2 `unused`), bounded by `lb.drain_timeout` (kind `drain_timeout`). Returns `#{waited, connections_at_start}`.
Example: `let d = wait_drained(inst); info(`drained in ${d.waited}s`);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<Map> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.wait_drained(&inst))
            .map(|r| drain_map(&r))
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "register",
        &["inst: Map"],
        "Puts `inst` back into the load balancer (HAProxy `ready`, nginx `down` removed + reload, ELBv2 register). Follow it with `wait_in_service(inst)`.
Example: `register(inst); wait_in_service(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<()> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.register(&inst)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "wait_in_service",
        &["inst: Map", "FLOAT"],
        "Waits until the load balancer's own health checks report `inst` healthy, bounded by `lb.register_timeout`; fails early when the LB marks it down. Returns the seconds waited.
Example: `wait_in_service(inst);`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<f64> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.wait_in_service(&inst))
            .map(|d| d.as_secs_f64())
            .map_err(throw)
    });

    let c = ctx.clone();
    func(
        "set_weight",
        &["inst: Map", "weight: INT"],
        "Sets the share of traffic `inst` receives (0-256; HAProxy `set server … weight`, nginx `weight=`). Weight 0 keeps it registered but idle.
Example: `set_weight(canary, 10);`",
    )
    .register_into_engine(engine, move |inst: Dynamic, weight: INT| -> RhaiResult<()> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        if !(0..=256).contains(&weight) {
            return Err(invalid(format!("set_weight: weight must be 0-256, got {weight}")));
        }
        c.block_on(c.effects.set_weight(&inst, weight as u32)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "lb_state",
        &["inst: Map", "String"],
        "What the load balancer says about `inst` now: `in_service`, `draining`, `out_of_service`, `unhealthy`, `starting` or `unknown`.
Example: `if lb_state(inst) != \"in_service\" { warn(\"not serving\"); }`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<String> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        c.block_on(c.effects.state(&inst))
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
        &["inst: Map", "Map"],
        "The load balancer's own numbers for `inst` (HAProxy: `sessions`, `requests`, `http_5xx`, `http_2xx`, `response_ms`, …); empty where the LB keeps none.
Example: `let s = lb_stats(canary); if s.http_5xx > 0 { throw \"5xx\"; }`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<Map> {
        let inst = instance_arg(&c.effects.inventory, &inst)?;
        let stats = c.block_on(c.effects.stats(&inst)).map_err(throw)?;
        Ok(stats
            .into_iter()
            .map(|(k, v)| (k.into(), Dynamic::from(v)))
            .collect())
    });

    let c = ctx.clone();
    func(
        "switch_pool",
        &["pool: String"],
        "Sends all traffic to the instances of `pool` in one step (blue/green): HAProxy switches backends by weight, nginx swaps the upstream include, ELBv2 rewrites the listener's forward action.
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
