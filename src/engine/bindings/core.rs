//! Inventory access, `--var`, time, logging and prompts.

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, FuncRegistration, ImmutableString, Map, INT};
use tracing::{info, warn};

use super::func;
use crate::engine::context::{Answers, ScriptContext};
use crate::engine::convert::{count_or_percent_arg, duration_arg, invalid, throw, RhaiResult};
use crate::primitives::sh_quote;

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    let c = ctx.clone();
    func(
        "instances",
        &["Array"],
        "All instances of the inventory, in order (without those found out of rotation before the run — parked by an operator — unless `--include-parked`). Each is an `Instance` with read-only properties `name`, `host`, `port`, `id`, `pool`, `weight`, `health_url` (also `inst[\"name\"]`); it prints as the map `#{name, host, port, id, pool, weight, health_url}` and `inst.to_map()` returns that map.
Example: `for inst in instances() { info(inst.name); }`",
    )
    .register_into_engine(engine, move || -> Array {
        let inv = &c.effects.inventory;
        inv.instances
            .iter()
            .enumerate()
            .filter(|(_, i)| c.only.as_ref().is_none_or(|only| only.contains(&i.name)))
            // Parked (out of rotation before the run): left as found.
            .filter(|(_, i)| !c.effects.hidden(&i.name))
            .map(|(at, _)| Dynamic::from(crate::engine::instance::InstanceRef::new(inv, at)))
            .collect()
    });

    let c = ctx.clone();
    func(
        "inventory",
        &["Map"],
        "The inventory's settings: `app` (name, deploy, rollback, migrate), `health`, `lb` (kind, drain_timeout, min_in_service, pools) and `instance_count` (the instances themselves: `instances()`).
Example: `let deploy = inventory().app.deploy;`",
    )
    .register_into_engine(engine, move || -> Map {
        // Built once per run (the inventory does not change during one):
        // scripts call this per instance (`steps::command_for`).
        c.inventory_map.get_or_init(|| inventory_map(&c)).clone()
    });

    let c = ctx.clone();
    func(
        "var",
        &["name: String", "default: Dynamic", "Dynamic"],
        "The value of `--var name=VALUE`, or `default` when it was not given. A value that parses as the default's type (integer, float, bool) takes that type; otherwise it stays a string (so `batch=25%` stays `\"25%\"`).
Example: `let batch = var(\"batch\", 1);`",
    )
    .register_into_engine(engine, move |name: ImmutableString, default: Dynamic| -> Dynamic {
        match c.vars.get(name.as_str()) {
            None => default,
            Some(v) => typed_like(v, &default),
        }
    });

    let c = ctx.clone();
    func(
        "var",
        &["name: String", "String"],
        "The value of `--var name=VALUE`; an error naming the flag when it was not given.
Example: `let version = var(\"version\");`",
    )
    .register_into_engine(engine, move |name: ImmutableString| -> RhaiResult<String> {
        c.vars
            .get(name.as_str())
            .cloned()
            .ok_or_else(|| invalid(format!("missing --var {name}=VALUE")))
    });

    // `var` is a reserved word in Rhai, so `var(...)` is parsed as custom
    // syntax that forwards to the two functions above (which keeps them in
    // the generated reference).
    engine.register_custom_syntax_with_state_raw(
        "var",
        |symbols, look_ahead, _| match symbols.len() {
            1 => Ok(Some("(".into())),
            2 => Ok(Some("$expr$".into())),
            3 if look_ahead == "," => Ok(Some(",".into())),
            3 => Ok(Some(")".into())),
            4 if symbols[3] == ")" => Ok(None),
            4 => Ok(Some("$expr$".into())),
            5 => Ok(Some(")".into())),
            _ => Ok(None),
        },
        false,
        |context, inputs, _| {
            let name = context.eval_expression_tree(&inputs[0])?;
            if !name.is_string() {
                return Err(invalid(format!(
                    "var: the name must be a string, got {}",
                    name.type_name()
                )));
            }
            match inputs.get(1) {
                Some(d) => {
                    let default = context.eval_expression_tree(d)?;
                    context.call_native_fn("var", (name, default))
                }
                None => context.call_native_fn("var", (name,)),
            }
        },
    );

    let c = ctx.clone();
    func(
        "sleep",
        &["duration: Dynamic"],
        "Waits exactly `duration` (`\"1.5s\"`, `\"2m\"` or milliseconds); Ctrl-C interrupts it. Prefer the LB waits, which end as soon as the LB agrees.
Example: `sleep(\"30s\");`",
    )
    .register_into_engine(engine, move |d: Dynamic| -> RhaiResult<()> {
        let d = duration_arg(&d)?;
        c.block_on(c.effects.sleep(d)).map_err(throw)
    });
    // Rhai's own `sleep(INT)` / `sleep(FLOAT)` (seconds, blocking the thread,
    // deaf to Ctrl-C and acting even in a plan) would win over the Dynamic
    // overload for numbers: shadow both with ours (milliseconds).
    let c = ctx.clone();
    FuncRegistration::new("sleep").register_into_engine(engine, move |ms: INT| -> RhaiResult<()> {
        let d = duration_arg(&Dynamic::from(ms))?;
        c.block_on(c.effects.sleep(d)).map_err(throw)
    });
    let c = ctx.clone();
    FuncRegistration::new("sleep").register_into_engine(engine, move |ms: f64| -> RhaiResult<()> {
        let d = duration_arg(&Dynamic::from(ms))?;
        c.block_on(c.effects.sleep(d)).map_err(throw)
    });

    // In a plan the script's own progress messages would describe work that
    // did not happen: they are demoted to debug there. Warnings still show.
    let c = ctx.clone();
    func(
        "info",
        &["message: String"],
        "Logs `message` at info level.\nExample: `info(`batch ${n} done`);`",
    )
    .register_into_engine(engine, move |msg: &str| script_info(&c, msg));
    func(
        "warn",
        &["message: String"],
        "Logs `message` as a warning.\nExample: `warn(\"canary is slow\");`",
    )
    .register_into_engine(engine, |msg: &str| warn!(target: "script", "{msg}"));
    let c = ctx.clone();
    func(
        "log",
        &["message: String"],
        "Logs `message` at info level (same as `info`).\nExample: `log(\"starting\");`",
    )
    .register_into_engine(engine, move |msg: &str| script_info(&c, msg));

    let c = ctx.clone();
    func(
        "confirm",
        &["message: String", "bool"],
        "Asks the operator a yes/no question on the terminal. `--yes` answers yes; without a terminal and without `--yes` it fails (kind `cancelled`) rather than guess. In a plan it is a step.
Example: `if !confirm(\"promote canary?\") { throw \"stopped by operator\"; }`",
    )
    .register_into_engine(engine, move |msg: &str| -> RhaiResult<bool> { confirm(&c, msg) });

    func(
        "chunks",
        &["items: Array", "size: Dynamic", "Array"],
        "Splits `items` into batches of `size` items, where `size` is a count or a percentage of the list (`\"25%\"`, rounded up, at least 1).
Example: `for batch in chunks(instances(), \"25%\") { ... }`",
    )
    // `&mut`: the list is borrowed, not copied first (a fleet of 100,000
    // instances would be copied twice, not once).
    .register_into_engine(engine, |items: &mut Array, size: Dynamic| -> RhaiResult<Array> {
        let size = count_or_percent_arg(&size)?.of_ceil(items.len()).max(1);
        Ok(items
            .chunks(size)
            .map(|c| Dynamic::from(c.to_vec()))
            .collect())
    });

    func(
        "seconds",
        &["duration: Dynamic", "FLOAT"],
        "A duration (`\"10m\"`, `\"1.5s\"` or milliseconds) in seconds, for arithmetic in scripts.
Example: `let rounds = seconds(var(\"bake\", \"1m\")) / 5.0;`",
    )
    .register_into_engine(engine, |d: Dynamic| -> RhaiResult<f64> {
        Ok(duration_arg(&d)?.as_secs_f64())
    });

    func(
        "sh_quote",
        &["value: String", "String"],
        "Quotes `value` for a POSIX shell so it arrives as one word of data, whatever it contains.
Example: `ssh(inst, \"./deploy.sh \" + sh_quote(version));`",
    )
    .register_into_engine(engine, |s: &str| -> String { sh_quote(s) });

    let c = ctx.clone();
    func(
        "dry_run",
        &["bool"],
        "True during `rollscript plan` / `--dry-run`, when no step acts.\nExample: `if !dry_run() { notify(url, \"done\"); }`",
    )
    .register_into_engine(engine, move || -> bool { c.effects.is_dry_run() });
}

fn script_info(c: &ScriptContext, msg: &str) {
    if c.effects.is_dry_run() {
        tracing::debug!(target: "script", "{msg}");
    } else {
        info!(target: "script", "{msg}");
    }
}

fn inventory_map(c: &ScriptContext) -> Map {
    let inv = &c.effects.inventory;
    let s = |v: &Option<String>| v.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT);
    let mut app = Map::new();
    app.insert("name".into(), inv.app.name.clone().into());
    app.insert("deploy".into(), s(&inv.app.deploy));
    app.insert("rollback".into(), s(&inv.app.rollback));
    app.insert("migrate".into(), s(&inv.app.migrate));
    app.insert(
        "migrate_timeout".into(),
        crate::config::format_duration(inv.app.migrate_timeout).into(),
    );

    let mut health = Map::new();
    health.insert("port".into(), (inv.health.port as INT).into());
    health.insert("path".into(), inv.health.path.clone().into());
    health.insert(
        "expect_status".into(),
        (inv.health.expect_status as INT).into(),
    );
    health.insert("retries".into(), (inv.health.retries as INT).into());

    let mut lb = Map::new();
    lb.insert("kind".into(), inv.lb.backend.kind().into());
    lb.insert(
        "drain_timeout".into(),
        crate::config::format_duration(inv.lb.drain_timeout).into(),
    );
    lb.insert(
        "min_in_service".into(),
        inv.lb.min_in_service.to_string().into(),
    );
    let pools: Array = inv
        .lb
        .pools
        .keys()
        .map(|k| Dynamic::from(k.clone()))
        .collect();
    lb.insert("pools".into(), pools.into());

    let mut m = Map::new();
    m.insert("app".into(), app.into());
    m.insert("health".into(), health.into());
    m.insert("lb".into(), lb.into());
    m.insert("has_database".into(), inv.database.is_some().into());
    m.insert("max_parallel".into(), (inv.ssh.max_parallel as INT).into());
    m.insert("instance_count".into(), (inv.instances.len() as INT).into());
    // The instances themselves come from `instances()`: building 10,000 maps
    // on every `inventory().app` lookup made large plans quadratic.
    m
}

/// `--var` values are strings; give them the default's type where they parse.
fn typed_like(v: &str, default: &Dynamic) -> Dynamic {
    if default.is_int() {
        if let Ok(n) = v.trim().parse::<INT>() {
            return n.into();
        }
    } else if default.is_float() {
        if let Ok(f) = v.trim().parse::<f64>() {
            return f.into();
        }
    } else if default.is_bool() {
        match v.trim() {
            "true" | "yes" | "1" => return true.into(),
            "false" | "no" | "0" => return false.into(),
            _ => {}
        }
    }
    v.to_string().into()
}

fn confirm(c: &ScriptContext, msg: &str) -> RhaiResult<bool> {
    c.effects
        .confirm(msg, c.answers == Answers::Yes)
        .map_err(throw)
}
