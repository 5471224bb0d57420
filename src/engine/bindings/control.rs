//! What the operator decides during a run: `approval` (a question answered
//! on the terminal or with `rollscript resume` / `abort`) and `wait_promote`
//! (a bake `rollscript promote` ends early).

use std::sync::Arc;

use rhai::{Dynamic, Engine};

use super::func;
use crate::engine::context::ScriptContext;
use crate::engine::convert::{duration_arg, throw, RhaiResult};

pub fn register(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    let c = ctx.clone();
    func(
        "approval",
        &["question: String", "bool"],
        "Waits for a person to decide: `y`/`n` on the terminal, or from anywhere `rollscript resume` (yes) / `rollscript abort` (no, and the run is aborted). Journalled with the answer and who gave it. `--yes` does not answer it. In a plan it is a step.
Example: `if !approval(\"promote the canary?\") { fail(\"gate_failed\", \"not approved\"); }`",
    )
    .register_into_engine(engine, move |question: &str| -> RhaiResult<bool> {
        c.block_on(c.effects.approval(question)).map_err(throw)
    });

    let c = ctx.clone();
    func(
        "wait_promote",
        &["duration: Dynamic", "bool"],
        "Waits up to `duration` (`\"10m\"` or milliseconds): `true` as soon as `rollscript promote` ends the bake as passed, `false` when the time is up. `rollscript abort` and Ctrl-C end it with an error. In a plan it is a step (`gates::bake` uses it).
Example: `if wait_promote(\"30s\") { info(\"promoted\"); }`",
    )
    .register_into_engine(engine, move |d: Dynamic| -> RhaiResult<bool> {
        let d = duration_arg(&d)?;
        c.block_on(c.effects.wait_promote(d)).map_err(throw)
    });
}
