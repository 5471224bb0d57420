//! Finds the line of a key in the inventory text, so validation errors found
//! after deserialising can still say `rollscript.toml:14:`.

use toml_edit::{ArrayOfTables, ImDocument, InlineTable, Item, Table, Value};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Renders `[Key(instances), Index(2), Key(name)]` as `instances[2].name`.
pub fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// 1-based line of the value at `path` (or of the deepest part of it that
/// exists, so a missing key points at its table).
pub fn line_of(text: &str, path: &[Seg]) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::of_item(doc.as_item());
    let mut best = None;
    for seg in path {
        node = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) => {
                best = t.key(k).and_then(|key| key.span()).or(best);
                match t.get(k) {
                    Some(item) => {
                        best = item.span().or(best);
                        Node::of_item(item)
                    }
                    None => break,
                }
            }
            (Seg::Key(k), Node::Inline(t)) => {
                best = t.key(k).and_then(|key| key.span()).or(best);
                match t.get(k) {
                    Some(v) => {
                        best = v.span().or(best);
                        Node::of_value(v)
                    }
                    None => break,
                }
            }
            (Seg::Index(i), Node::Tables(a)) => match a.get(*i) {
                Some(t) => {
                    best = t.span().or(best);
                    Node::Table(t)
                }
                None => break,
            },
            _ => break,
        };
    }
    best.map(|span| line_at(text, span.start))
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Tables(&'a ArrayOfTables),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        match item {
            Item::Table(t) => Self::Table(t),
            Item::ArrayOfTables(a) => Self::Tables(a),
            Item::Value(v) => Self::of_value(v),
            Item::None => Self::Leaf,
        }
    }

    fn of_value(v: &'a Value) -> Self {
        match v {
            Value::InlineTable(t) => Self::Inline(t),
            _ => Self::Leaf,
        }
    }
}

/// 1-based line number of a byte offset.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
