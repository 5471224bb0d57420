//! Script errors rendered for the operator: `file:line:col`, the source line,
//! a caret, and the call chain through functions and modules.

use std::fmt::Write;

use rhai::{EvalAltResult, Map, ParseError, Position};

use super::convert::{error_from_map, ERROR_MARKER};
use super::resolver::Sources;

/// Where in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A call on the way to the error: `name` was called at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub at: Option<Location>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// First line of the message, e.g. `syntax error: expecting ';'`.
    pub message: String,
    /// The primitive's error kind (`command_failed`, …) when it came from one.
    pub kind: Option<String>,
    /// Further lines (command, stderr tail).
    pub detail: Vec<String>,
    pub location: Option<Location>,
    pub source_line: Option<String>,
    /// Outermost call first.
    pub chain: Vec<Frame>,
    /// The run was interrupted (Ctrl-C), not failed.
    pub interrupted: bool,
}

fn location(file: &str, pos: Position) -> Option<Location> {
    Some(Location {
        file: file.to_string(),
        line: pos.line()?,
        col: pos.position().unwrap_or(1),
    })
}

/// Strips Rhai's own ` (line 7, position 5)` suffix: we show the location better.
fn without_position(text: String, pos: Position) -> String {
    let suffix = format!(" ({pos})");
    match text.strip_suffix(&suffix) {
        Some(t) => t.to_string(),
        None => text,
    }
}

impl Diagnostic {
    pub fn from_parse(err: &ParseError, file: &str, sources: &Sources) -> Self {
        let eval = EvalAltResult::ErrorParsing(err.0.as_ref().clone(), err.1);
        Self::from_eval(&eval, file, sources)
    }

    /// Unwraps nested function-call and module errors down to the cause,
    /// following which file each level's position refers to.
    pub fn from_eval(err: &EvalAltResult, main_file: &str, sources: &Sources) -> Self {
        let mut file = main_file.to_string();
        let mut chain = Vec::new();
        let mut e = err;
        loop {
            match e {
                EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                    chain.push(Frame {
                        function: name.clone(),
                        at: location(&file, *pos),
                    });
                    if !src.is_empty() {
                        file = src.clone();
                    }
                    e = inner;
                }
                EvalAltResult::ErrorInModule(path, inner, pos) => {
                    if !pos.is_none() {
                        chain.push(Frame {
                            function: format!("import \"{path}\""),
                            at: location(&file, *pos),
                        });
                    }
                    file = sources.shown_name(path).unwrap_or_else(|| path.clone());
                    e = inner;
                }
                _ => break,
            }
        }
        let pos = e.position();
        let mut d = Diagnostic {
            message: String::new(),
            kind: None,
            detail: Vec::new(),
            location: location(&file, pos),
            source_line: None,
            chain,
            interrupted: false,
        };
        match e {
            EvalAltResult::ErrorParsing(pe, _) => d.message = format!("syntax error: {pe}"),
            EvalAltResult::ErrorTerminated(..) => {
                d.message = "interrupted".into();
                d.interrupted = true;
            }
            EvalAltResult::ErrorRuntime(v, _) => {
                let action = v
                    .read_lock::<Map>()
                    .filter(|m| m.contains_key(ERROR_MARKER))
                    .and_then(|m| error_from_map(&m));
                match action {
                    Some(ae) => {
                        let text = ae.to_string();
                        let mut lines = text.lines();
                        d.message = lines.next().unwrap_or_default().to_string();
                        d.detail = lines.map(|l| l.trim_start().to_string()).collect();
                        d.interrupted = ae.kind == crate::primitives::ErrorKind::Cancelled
                            && ae.message == "interrupted";
                        d.kind = Some(ae.kind.as_str().to_string());
                    }
                    None => d.message = format!("script error: {v}"),
                }
            }
            EvalAltResult::ErrorFunctionNotFound(sig, _) => {
                d.message = format!("unknown function: {sig}")
            }
            EvalAltResult::ErrorTooManyOperations(_) => d.message =
                "too many operations: the script ran past its operation limit (an endless loop?)"
                    .into(),
            EvalAltResult::ErrorStackOverflow(_) => {
                d.message = "call stack too deep: runaway recursion?".into()
            }
            other => d.message = without_position(other.to_string(), pos),
        }
        if let Some(loc) = &d.location {
            d.source_line = sources
                .get(&loc.file)
                .and_then(|t| t.lines().nth(loc.line.saturating_sub(1)).map(String::from));
        }
        d
    }

    /// A message with no script location (e.g. a file that cannot be read).
    pub fn plain(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: None,
            detail: Vec::new(),
            location: None,
            source_line: None,
            chain: Vec::new(),
            interrupted: false,
        }
    }

    /// One line: `file:line:col: message` (for JSON logs and summaries).
    pub fn headline(&self) -> String {
        match &self.location {
            Some(at) => format!("{at}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// rustc-style rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.kind {
            Some(kind) => writeln!(out, "error[{kind}]: {}", self.message).unwrap(),
            None => writeln!(out, "error: {}", self.message).unwrap(),
        }
        for l in &self.detail {
            writeln!(out, "   {l}").unwrap();
        }
        if let Some(loc) = &self.location {
            let num = loc.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(out, "{pad}--> {loc}").unwrap();
            if let Some(src) = &self.source_line {
                writeln!(out, "{pad} |").unwrap();
                writeln!(out, "{num} | {src}").unwrap();
                // Tabs keep their width so the caret lines up.
                let lead: String = src
                    .chars()
                    .take(loc.col.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                writeln!(out, "{pad} | {lead}^").unwrap();
            }
        }
        if !self.chain.is_empty() {
            writeln!(out, "call chain (outermost first):").unwrap();
            for f in &self.chain {
                match &f.at {
                    Some(at) => writeln!(out, "  {at}: {}", describe_call(&f.function)).unwrap(),
                    None => writeln!(out, "  {}", describe_call(&f.function)).unwrap(),
                }
            }
        }
        out
    }
}

fn describe_call(function: &str) -> String {
    if function.starts_with("anon$") {
        "in a closure".to_string()
    } else if function.starts_with("import ") {
        function.to_string()
    } else {
        format!("in call to {function}()")
    }
}
