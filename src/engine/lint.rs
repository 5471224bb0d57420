//! Checks Rhai leaves to run time, done before the first side effect: a call
//! to a function that exists nowhere is a typo that would otherwise surface
//! halfway through a deploy, with hosts already drained.

use std::collections::HashSet;

use rhai::{ASTNode, Engine, Expr, Position, Stmt, AST};

use super::diagnostics::{Diagnostic, Location};
use super::resolver::Sources;

/// Rhai keywords that look like function calls.
const KEYWORD_FUNCTIONS: &[&str] = &[
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_fn",
    "is_def_var",
    "type_of",
    "print",
    "debug",
];

pub fn unknown_functions(
    engine: &Engine,
    main: &AST,
    file: &str,
    sources: &Sources,
) -> Vec<Diagnostic> {
    let modules = sources.modules();
    let mut known: HashSet<String> = KEYWORD_FUNCTIONS.iter().map(|s| s.to_string()).collect();
    for sig in engine.gen_fn_signatures(true) {
        if let Some(name) = sig.split('(').next() {
            // Signatures may carry a `get$`/`set$` prefix or a namespace.
            known.insert(name.rsplit("::").next().unwrap_or(name).trim().to_string());
        }
    }
    let asts: Vec<(String, &AST)> = std::iter::once((file.to_string(), main))
        .chain(modules.iter().map(|(n, a)| (n.clone(), a)))
        .collect();
    for (_, ast) in &asts {
        for f in ast.iter_functions() {
            known.insert(f.name.to_string());
            // A parameter holding a function pointer may be called like a function.
            known.extend(f.params.iter().map(|p| p.to_string()));
        }
        ast.walk(&mut |path: &[ASTNode]| {
            if let Some(ASTNode::Stmt(Stmt::Var(x, ..))) = path.last() {
                known.insert(x.0.name.to_string());
            }
            true
        });
    }

    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (name, ast) in &asts {
        ast.walk(&mut |path: &[ASTNode]| {
            let call = match path.last() {
                Some(ASTNode::Expr(Expr::FnCall(x, pos))) => Some((x, *pos)),
                Some(ASTNode::Stmt(Stmt::FnCall(x, pos))) => Some((x, *pos)),
                _ => None,
            };
            if let Some((x, pos)) = call {
                let fname = x.name.as_str();
                let plain = fname
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && !fname.contains('$');
                if x.op_token.is_none()
                    && plain
                    && !known.contains(fname)
                    && seen.insert((name.clone(), pos))
                {
                    problems.push(unknown(name, fname, !x.namespace.is_empty(), pos, sources));
                }
            }
            true
        });
    }
    problems
}

fn unknown(
    file: &str,
    fname: &str,
    namespaced: bool,
    pos: Position,
    sources: &Sources,
) -> Diagnostic {
    let mut d = Diagnostic::plain(if namespaced {
        format!("unknown function: no imported module defines {fname}()")
    } else {
        format!("unknown function: {fname}() is not a rollscript primitive, a Rhai built-in, or defined in this script (see `rollscript api`)")
    });
    if let (Some(line), Some(col)) = (pos.line(), pos.position()) {
        d.location = Some(Location {
            file: file.to_string(),
            line,
            col,
        });
        d.source_line = sources
            .get(file)
            .and_then(|t| t.lines().nth(line - 1).map(String::from));
    }
    d
}
