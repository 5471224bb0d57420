//! The Rhai host — the only module that imports `rhai`.
//!
//! [`Host::new`] builds the one Engine of a run: explicit limits (the same in
//! debug and release builds), `eval` disabled, `print`/`debug` to `tracing`,
//! imports confined to the script's folder then the embedded stdlib. Scripts
//! and every module they import are compiled and linted before the first side
//! effect; the script then runs on a blocking thread and primitives bridge to
//! async with `Handle::block_on`.

pub mod api;
mod bindings;
pub mod context;
mod convert;
pub mod diagnostics;
pub mod instance;
mod lint;
mod resolver;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use rhai::{Dynamic, Engine, Scope, AST};
use tracing::{debug, info};

pub use context::{Answers, ScriptContext};
pub use diagnostics::Diagnostic;
pub use resolver::STDLIB;

use resolver::{Resolver, Sources};

/// Limits, set explicitly so a script behaves the same in debug and release
/// builds (their defaults differ: 8 vs 64 call levels).
pub mod limits {
    pub const CALL_LEVELS: usize = 64;
    pub const EXPR_DEPTH: usize = 64;
    pub const FN_EXPR_DEPTH: usize = 32;
    /// Enough for a plan over 10,000 instances; an endless loop stops in seconds.
    pub const OPERATIONS: u64 = 200_000_000;
    pub const MODULES: usize = 64;
    // No string, array or map size limits: Rhai enforces them by walking the
    // whole value after every assignment, which made a plan of 10,000
    // instances quadratic (118 s). Scripts are the operator's own code; the
    // operations limit still ends a runaway loop.
}

pub struct Host {
    engine: Engine,
    sources: Arc<Sources>,
}

/// A script compiled with all its imports, ready to run.
pub struct Compiled {
    ast: AST,
    /// The script's name in messages (as the operator typed the path).
    file: String,
}

impl Host {
    /// An engine for scripts in `script_dir`, with bindings acting through `ctx`.
    pub fn new(script_dir: &Path, ctx: Arc<ScriptContext>) -> Self {
        let sources = Arc::new(Sources::default());
        let mut engine = Engine::new();
        engine
            .set_max_call_levels(limits::CALL_LEVELS)
            .set_max_expr_depths(limits::EXPR_DEPTH, limits::FN_EXPR_DEPTH)
            .set_max_operations(limits::OPERATIONS)
            .set_max_modules(limits::MODULES)
            // Undefined variables are compile errors, caught before any step runs.
            .set_strict_variables(true)
            .set_fail_on_invalid_map_property(true)
            // No string interning: Rhai interns every string a `let` or an
            // interpolation makes, and past a few thousand distinct strings
            // (instance names, messages) its cache is full and every new one
            // scans it to evict one — 40% of a plan of 100,000 instances.
            .set_max_strings_interned(0)
            .set_module_resolver(Resolver::new(script_dir, sources.clone()));
        engine.disable_symbol("eval");
        engine.on_print(|s| info!(target: "script", "{s}"));
        engine
            .on_debug(|s, src, pos| debug!(target: "script", "{}{pos:?}: {s}", src.unwrap_or("")));
        // Ctrl-C between statements; waits inside primitives watch the same token.
        let effects = ctx.effects.clone();
        // Checked on every operation: after a primitive returns
        // "interrupted" the script must not run its catch block. The token
        // itself is read every 64th operation (and after every primitive, by
        // `ScriptContext::block_on`); in between two atomics say whether it
        // was seen cancelled (a lock and a mutex per operation were 7% of a
        // plan of 100,000 instances).
        engine.on_progress(move |ops| {
            let cancelled = if ops % 64 == 0 {
                effects.is_cancelled()
            } else {
                effects.seen_cancelled()
            };
            if cancelled {
                Some(Dynamic::from("interrupted"))
            } else {
                None
            }
        });
        bindings::register_all(&mut engine, &ctx);
        Self { engine, sources }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `path` and every module it imports, then lints the lot.
    /// Returns every problem found, not only the first.
    pub fn compile(&self, path: &Path) -> Result<Compiled, Vec<Diagnostic>> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::plain(format!("cannot read script {file}: {e}"))])?;
        self.compile_text(&file, &text)
    }

    pub fn compile_text(&self, file: &str, text: &str) -> Result<Compiled, Vec<Diagnostic>> {
        self.sources.insert(file, text);
        let mut ast = self
            .engine
            .compile_into_self_contained(&Scope::new(), text)
            .map_err(|e| {
                let d = Diagnostic::from_eval(&e, file, &self.sources);
                vec![self.locate_import_error(d, &e, text, file)]
            })?;
        ast.set_source(file);
        let problems = lint::unknown_functions(&self.engine, &ast, file, &self.sources);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Compiled {
            ast,
            file: file.to_string(),
        })
    }

    /// `compile_into_self_contained` resolves imports without a position;
    /// point at the script's `import` line ourselves.
    fn locate_import_error(
        &self,
        mut d: Diagnostic,
        err: &rhai::EvalAltResult,
        text: &str,
        file: &str,
    ) -> Diagnostic {
        let rhai::EvalAltResult::ErrorInModule(path, _, pos) = err else {
            return d;
        };
        if !pos.is_none() {
            return d;
        }
        let found = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.trim_start().starts_with("import") && import_path(l) == *path);
        if let Some((n, line)) = found {
            let at = diagnostics::Location {
                file: file.to_string(),
                line: n + 1,
                col: line.find("import").unwrap_or(0) + 1,
            };
            if d.location.is_none() {
                d.location = Some(at);
                d.source_line = Some(line.to_string());
            } else {
                d.chain.insert(
                    0,
                    diagnostics::Frame {
                        function: format!("import \"{path}\""),
                        at: Some(at),
                    },
                );
            }
        }
        d
    }

    /// Runs a compiled script to the end.
    pub fn run(&self, compiled: &Compiled) -> Result<Dynamic, Diagnostic> {
        let mut scope = Scope::new();
        self.engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &compiled.ast)
            .map_err(|e| Diagnostic::from_eval(&e, &compiled.file, &self.sources))
    }
}

impl Host {
    /// The script's `on_compensate` step as a plain closure, if it set one.
    #[allow(deprecated)] // create_context: rhai marks it "volatile", not deprecated.
    pub fn compensation_hook(
        &self,
        ctx: &ScriptContext,
    ) -> Option<impl Fn(&crate::config::Instance) -> Result<(), String> + Sync + '_> {
        let (f, store) = ctx.hook.lock().unwrap().clone()?;
        let inventory = ctx.effects.inventory.clone();
        let sources = self.sources.clone();
        Some(move |inst: &crate::config::Instance| {
            let call = store.create_context(&self.engine);
            let handle = instance::InstanceRef::of(&inventory, inst);
            f.call_within_context::<Dynamic>(&call, (Dynamic::from(handle),))
                .map(|_| ())
                .map_err(|e| {
                    let d = Diagnostic::from_eval(&e, "", &sources);
                    match &d.location {
                        Some(at) => format!("on_compensate failed at {at}: {}", d.message),
                        None => format!("on_compensate failed: {}", d.message),
                    }
                })
        })
    }
}

fn import_path(line: &str) -> String {
    line.split('"').nth(1).unwrap_or_default().to_string()
}
