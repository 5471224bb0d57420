//! Script functions, one module per family. Each has a single `register`
//! entry point; bindings only convert arguments and call the Rust API.

mod control;
mod core;
mod flow;
mod health;
mod lb;
mod remote;

use std::sync::Arc;

use rhai::{Engine, FuncRegistration};

use super::context::ScriptContext;

pub fn register_all(engine: &mut Engine, ctx: &Arc<ScriptContext>) {
    crate::engine::instance::register(engine, &ctx.effects.inventory);
    core::register(engine, ctx);
    control::register(engine, ctx);
    flow::register(engine, ctx);
    flow::register_gates(engine, ctx);
    lb::register(engine, ctx);
    remote::register(engine, ctx);
    health::register(engine, ctx);
}

/// A registration with the signature and doc that `rollscript api` prints.
/// `params` are `name: Type` pairs followed by the return type; `doc` is
/// markdown, its first line the summary, an `Example:` block after.
fn func(name: &str, params: &[&str], doc: &str) -> FuncRegistration {
    let comment = doc
        .trim()
        .lines()
        .map(|l| format!("/// {l}").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    FuncRegistration::new(name)
        .with_params_info(params)
        .with_comments([comment])
}
