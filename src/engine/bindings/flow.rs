//! Control flow the runtime owns: `parallel` and `once`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, NativeCallContext, INT};

use super::func;
use crate::engine::context::ScriptContext;
use crate::engine::convert::{error_from_map, invalid, throw, RhaiResult};
use crate::primitives::{ActionError, ErrorKind};

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    let c = ctx.clone();
    func(
        "parallel",
        &["items: Array", "limit: INT", "f: FnPtr", "Array"],
        "Calls `f(item)` for every item, at most `limit` at once, and returns the results in input order. Every item runs even if another fails; if any failed, the error lists each failure (kind `script` or the single failure's own kind) and carries all results in `e.details`. In a plan the items run one after another and the estimate accounts for the concurrency.
Example: `parallel(batch, 5, |inst| deploy_one(inst));`",
    )
    .register_into_engine(
        engine,
        move |ctx: NativeCallContext, items: Array, limit: INT, f: FnPtr| -> RhaiResult<Array> {
            if limit < 1 {
                return Err(invalid(format!("parallel: limit must be at least 1, got {limit}")));
            }
            let out = parallel(&c, &ctx, items, limit as usize, &f);
            // A branch may have stopped on a cancellation no primitive of
            // this thread saw: the engine's cheap check must know of it.
            c.effects.is_cancelled();
            out
        },
    );

    let c = ctx.clone();
    func(
        "on_compensate",
        &["f: FnPtr"],
        "Registers `f(inst)` as this script's rollback step for instances the run leaves out of service when it fails, is aborted or is interrupted (after a crash, `rollscript recover` uses the default step). `f` should roll the instance back and health-check it, throwing if it cannot; the runtime then puts the instance back into the load balancer and names every instance it leaves out. Without a hook the runtime runs `app.rollback` (if a command ran on the instance) and `health`.
Example: `on_compensate(|inst| steps::rollback_one_checked(inst));`",
    )
    .register_into_engine(
        engine,
        move |ctx: NativeCallContext, f: FnPtr| {
            set_hook(&c, &ctx, f);
        },
    );

    let c = ctx.clone();
    func(
        "compensate",
        &["inst: Instance", "bool"],
        "Compensates `inst` now, as the runtime does for every instance a failed run leaves out: the script's `on_compensate` step or `app.rollback` (if a command ran on it) and health, then back into the load balancer if healthy. Returns true when it is back in service (or was never out), false when it is left out (named in the log and the summary).
Example: `if !compensate(inst) { warn(`${inst.name} left out`); }`",
    )
    .register_into_engine(engine, move |inst: Dynamic| -> RhaiResult<bool> {
        let inst = crate::engine::instance::arg(&c.effects.inventory, &inst)?;
        Ok(c.effects.compensate_now(c.handle(), &inst.name))
    });

    let c = ctx.clone();
    func(
        "once",
        &["key: String", "f: FnPtr", "Dynamic"],
        "Runs `f()` the first time `key` is seen in this run and returns its result; later calls with the same key return that result without running `f` again (also from other `parallel` branches, which wait for the first). A failed `f` is not remembered, so it may be retried.
Example: `once(\"migrate\", || ssh(instances()[0], inventory().app.migrate));`",
    )
    .register_into_engine(
        engine,
        move |ctx: NativeCallContext, key: &str, f: FnPtr| -> RhaiResult<Dynamic> {
            let slot = c.once_slot(key);
            let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = guard.as_ref() {
                return Ok(v.clone());
            }
            let v: Dynamic = f.call_within_context(&ctx, ())?;
            *guard = Some(v.clone());
            Ok(v)
        },
    );
}

/// What one `parallel` item ended with.
type ItemResult = Result<Dynamic, Box<EvalAltResult>>;

/// Registers the compensation hook (kept with the caller's imports).
#[allow(deprecated)] // store_data: rhai marks it "volatile", not deprecated.
fn set_hook(c: &ScriptContext, ctx: &NativeCallContext, f: FnPtr) {
    *c.hook.lock().unwrap() = Some((f, ctx.store_data()));
}

#[allow(deprecated)] // store_data/create_context: rhai marks them "volatile", not deprecated.
fn parallel(
    c: &ScriptContext,
    ctx: &NativeCallContext,
    items: Array,
    limit: usize,
    f: &FnPtr,
) -> RhaiResult<Array> {
    let n = items.len();
    let mut results: Vec<Option<ItemResult>> = (0..n).map(|_| None).collect();

    if let Some(rec) = c.effects.recorder() {
        // A dry run is sequential so the plan's numbering is stable; the
        // recorder schedules the estimates onto `limit` lanes.
        rec.begin_group(n, limit.min(n.max(1)));
        for (i, item) in items.into_iter().enumerate() {
            rec.begin_branch();
            let r = f.call_within_context::<Dynamic>(ctx, (item,));
            rec.end_branch();
            results[i] = Some(r);
        }
        rec.end_group();
    } else {
        let store = ctx.store_data();
        let engine = ctx.engine();
        let next = AtomicUsize::new(0);
        let items = &items;
        let slots: Vec<Mutex<Option<ItemResult>>> = (0..n).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..limit.min(n) {
                scope.spawn(|| {
                    // Each worker gets its own copy of the caller's global
                    // state (imports, constants), so closures see the modules
                    // the script imported.
                    let ctx = store.create_context(engine);
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            break;
                        }
                        let r = f.call_within_context::<Dynamic>(&ctx, (items[i].clone(),));
                        *slots[i].lock().unwrap() = Some(r);
                    }
                });
            }
        });
        for (i, slot) in slots.into_iter().enumerate() {
            results[i] = slot.into_inner().unwrap();
        }
    }

    let mut ok = Array::with_capacity(n);
    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r.expect("every item ran") {
            Ok(v) => ok.push(v),
            Err(e) => {
                ok.push(Dynamic::UNIT);
                failures.push((i, e));
            }
        }
    }
    if failures.is_empty() {
        return Ok(ok);
    }
    if failures.len() == 1 {
        // One failure: rethrow it as it was, so its kind and location survive.
        return Err(failures.pop().unwrap().1);
    }
    let mut err = ActionError::new(
        ErrorKind::Script,
        format!("{} of {n} parallel items failed", failures.len()),
    );
    for (i, e) in &failures {
        let what = describe_failure(e);
        err = err.detail(format!("item {i}"), what.lines().next().unwrap_or_default());
        err.message.push_str(&format!(
            "\n  item {i}: {}",
            what.lines().next().unwrap_or_default()
        ));
    }
    Err(throw(err))
}

/// One line about a failed item: the primitive's error if that is the cause,
/// else the script error, without Rhai's wrapping of function calls.
fn describe_failure(mut e: &EvalAltResult) -> String {
    loop {
        match e {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
            | EvalAltResult::ErrorInModule(_, inner, _) => e = inner,
            EvalAltResult::ErrorRuntime(v, _) => {
                return match v.read_lock::<rhai::Map>().and_then(|m| error_from_map(&m)) {
                    Some(ae) => ae.to_string(),
                    None => v.to_string(),
                }
            }
            other => return other.to_string(),
        }
    }
}

pub fn register_gates(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    func(
        "fail",
        &["kind: String", "message: String"],
        "Stops with a structured error of `kind` (`gate_failed`, `health_failed`, `script`, … — see `e.kind`), like a primitive's, so callers can catch it and the final message says what failed.
Example: `if rate > 0.01 { fail(\"gate_failed\", `5xx rate ${rate}`); }`",
    )
    .register_into_engine(engine, |kind: &str, message: &str| -> RhaiResult<()> {
        let kind = ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| invalid(format!("fail: unknown kind {kind:?}")))?;
        Err(throw(ActionError::new(kind, message)))
    });

    let c = ctx.clone();
    func(
        "with_migration_lock",
        &["f: FnPtr", "Dynamic"],
        "Runs `f()` holding the PostgreSQL advisory lock of `[database]` (`pg_try_advisory_lock(lock_id)` on `database.url`), so two runs can never migrate at once; fails with kind `locked` at once if another session holds it. Without a `[database]` in the inventory `f()` runs without a lock and a warning.
Example: `with_migration_lock(|| ssh(first, inventory().app.migrate));`",
    )
    .register_into_engine(
        engine,
        move |ctx: NativeCallContext, f: FnPtr| -> RhaiResult<Dynamic> {
            let Some(db) = c.effects.inventory.database.clone() else {
                tracing::warn!("no [database] in the inventory: migrating without a lock");
                return f.call_within_context(&ctx, ());
            };
            let lock = c.block_on(c.effects.migration_lock(&db.url, db.lock_id)).map_err(throw)?;
            let r = f.call_within_context::<Dynamic>(&ctx, ());
            if let Some(lock) = lock {
                c.block_on(lock.unlock());
            }
            r
        },
    );

    let c = ctx.clone();
    func(
        "prometheus_query",
        &["url: String", "promql: String", "Dynamic"],
        "Evaluates `promql` with the Prometheus HTTP API at `url` (`/api/v1/query`) and returns the first sample's value as a FLOAT, or `()` when there is no data (an empty result, NaN or ±Inf — e.g. an error rate over no traffic): a gate must treat that as inconclusive, never as 0. For canary gates.
Example: `let p95 = prometheus_query(url, \"histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))\");`",
    )
    .register_into_engine(engine, move |url: &str, promql: &str| -> RhaiResult<Dynamic> {
        c.block_on(c.effects.prometheus(url, promql))
            .map(|v| v.map(Dynamic::from).unwrap_or(Dynamic::UNIT))
            .map_err(throw)
    });
}
