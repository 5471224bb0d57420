//! `import "name"`: the script's own folder first (confined: no absolute
//! paths, no `..`, no symlink out), then the stdlib embedded in the binary.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared, AST};

/// The stdlib, compiled into the binary so a deploy never depends on files
/// beside it.
pub const STDLIB: &[(&str, &str)] = &[
    ("steps", include_str!("../../stdlib/steps.rhai")),
    ("batches", include_str!("../../stdlib/batches.rhai")),
    ("gates", include_str!("../../stdlib/gates.rhai")),
    ("rollout", include_str!("../../stdlib/rollout.rhai")),
    ("canaries", include_str!("../../stdlib/canaries.rhai")),
];

/// Source texts by the name errors use (`scripts/rolling.rhai`,
/// `<stdlib>/steps.rhai`), so diagnostics can quote the failing line.
#[derive(Default)]
pub struct Sources {
    texts: Mutex<HashMap<String, Arc<str>>>,
    /// Compiled modules, kept for the lint.
    modules: Mutex<Vec<(String, AST)>>,
    /// Import path (`steps`) → shown file name (`scripts/steps.rhai`).
    aliases: Mutex<HashMap<String, String>>,
}

impl Sources {
    pub fn insert(&self, name: &str, text: &str) {
        self.texts
            .lock()
            .unwrap()
            .insert(name.to_string(), Arc::from(text));
    }

    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        self.texts.lock().unwrap().get(name).cloned()
    }

    /// Remembers that `import "path"` resolved to the file shown as `name`.
    pub fn alias(&self, path: &str, name: &str) {
        self.aliases
            .lock()
            .unwrap()
            .insert(path.to_string(), name.to_string());
    }

    /// The shown file name of an import path, if it was resolved.
    pub fn shown_name(&self, path: &str) -> Option<String> {
        self.aliases.lock().unwrap().get(path).cloned()
    }

    pub fn add_module(&self, name: &str, ast: &AST) {
        self.modules
            .lock()
            .unwrap()
            .push((name.to_string(), ast.clone()));
    }

    pub fn modules(&self) -> Vec<(String, AST)> {
        self.modules.lock().unwrap().clone()
    }
}

pub struct Resolver {
    root: PathBuf,
    /// How the root is shown in messages (as the operator typed it).
    shown_root: PathBuf,
    sources: Arc<Sources>,
}

impl Resolver {
    pub fn new(script_dir: &Path, sources: Arc<Sources>) -> Self {
        let shown_root = script_dir.to_path_buf();
        let root = script_dir
            .canonicalize()
            .unwrap_or_else(|_| script_dir.to_path_buf());
        Self {
            root,
            shown_root,
            sources,
        }
    }

    /// `scripts/steps.rhai`, or `steps.rhai` for a script in the current folder.
    fn shown(&self, path: &str) -> String {
        if self.shown_root == Path::new(".") {
            format!("{path}.rhai")
        } else {
            self.shown_root
                .join(format!("{path}.rhai"))
                .display()
                .to_string()
        }
    }

    fn fail(path: &str, msg: String, pos: Position) -> Box<EvalAltResult> {
        EvalAltResult::ErrorInModule(
            path.to_string(),
            EvalAltResult::ErrorRuntime(msg.into(), pos).into(),
            pos,
        )
        .into()
    }

    /// Finds the text of module `path`: (name for errors, source).
    fn locate(&self, path: &str, pos: Position) -> Result<(String, String), Box<EvalAltResult>> {
        let rel = Path::new(path);
        let escapes = rel.is_absolute()
            || rel.components().any(|c| {
                matches!(
                    c,
                    Component::ParentDir | Component::RootDir | Component::Prefix(_)
                )
            });
        if escapes || path.is_empty() {
            return Err(Self::fail(
                path,
                format!(
                    "import {path:?} is outside the script's folder ({}); imports are names relative to it, like \"steps\" or \"lib/gates\"",
                    self.shown_root.display()
                ),
                pos,
            ));
        }
        let file = self.root.join(format!("{path}.rhai"));
        if file.exists() {
            let real = file.canonicalize().unwrap_or(file.clone());
            if !real.starts_with(&self.root) {
                return Err(Self::fail(
                    path,
                    format!(
                        "import {path:?} resolves to {} outside the script's folder",
                        real.display()
                    ),
                    pos,
                ));
            }
            let text = std::fs::read_to_string(&real).map_err(|e| {
                Self::fail(path, format!("cannot read {}: {e}", file.display()), pos)
            })?;
            return Ok((self.shown(path), text));
        }
        if let Some((_, text)) = STDLIB.iter().find(|(name, _)| *name == path) {
            return Ok((format!("<stdlib>/{path}.rhai"), text.to_string()));
        }
        let known: Vec<&str> = STDLIB.iter().map(|(n, _)| *n).collect();
        Err(Self::fail(
            path,
            format!(
                "module {path:?} not found: no {} and no stdlib module of that name (stdlib: {})",
                self.shown(path),
                known.join(", ")
            ),
            pos,
        ))
    }
}

thread_local! {
    /// The modules being resolved on this thread, outermost first: an import
    /// of one of them is a cycle (Rhai would recurse until the stack ends).
    static RESOLVING: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pops the module off [`RESOLVING`] however its resolution ends.
struct Resolving;

impl Drop for Resolving {
    fn drop(&mut self) {
        RESOLVING.with(|r| r.borrow_mut().pop());
    }
}

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let (name, text) = self.locate(path, pos)?;
        let cycle = RESOLVING.with(|r| {
            let stack = r.borrow();
            (source == Some(name.as_str()) || stack.contains(&name)).then(|| {
                let mut chain: Vec<String> = stack.clone();
                if chain.is_empty() {
                    chain.extend(source.map(String::from));
                }
                chain.push(name.clone());
                chain.join(" → ")
            })
        });
        if let Some(chain) = cycle {
            return Err(Self::fail(
                path,
                format!(
                    "import cycle: {chain}; a script named like the module it imports shadows it (rename the script, e.g. my_{path}.rhai)"
                ),
                pos,
            ));
        }
        RESOLVING.with(|r| r.borrow_mut().push(name.clone()));
        let _popped = Resolving;
        self.sources.insert(&name, &text);
        self.sources.alias(path, &name);
        let mut ast = engine.compile(&text).map_err(|e| {
            EvalAltResult::ErrorInModule(
                path.to_string(),
                EvalAltResult::ErrorParsing(*e.0, e.1).into(),
                pos,
            )
        })?;
        ast.set_source(name.as_str());
        self.sources.add_module(&name, &ast);
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| EvalAltResult::ErrorInModule(path.to_string(), e, pos))?;
        Ok(module.into())
    }
}
