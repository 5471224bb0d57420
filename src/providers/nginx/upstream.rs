//! The upstream file rollscript owns: one `upstream NAME { … }` block,
//! parsed, reconciled with the inventory, edited and rendered back. The
//! membership state lives in it (`down`, `weight=`); other directives in the
//! block and other server parameters are kept as written.

use std::collections::HashMap;
use std::path::Path;

use tracing::warn;

use crate::config::{Instance, Inventory};

/// The `upstream NAME { … }` block rollscript owns.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Upstream {
    name: String,
    /// Directives other than `server` (`least_conn`, `keepalive 16`), kept.
    directives: Vec<String>,
    servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Server {
    pub(super) addr: String,
    pub(super) weight: Option<u32>,
    pub(super) down: bool,
    /// Other parameters (`max_fails=3`, `backup`), kept as written.
    pub(super) other: Vec<String>,
}

impl Upstream {
    /// The block named `name` in `text`; None when `text` holds no
    /// directives at all (a new, empty file).
    pub(super) fn parse(text: &str, name: &str) -> Result<Option<Upstream>, String> {
        let tokens = tokenize(text);
        if tokens.is_empty() {
            return Ok(None);
        }
        let head = ["upstream", name, "{"];
        if tokens.len() < 4 || tokens[..3] != head {
            return Err(format!(
                "expected the file to hold only `upstream {name} {{ … }}`, found `{}`",
                tokens[..tokens.len().min(3)].join(" ")
            ));
        }
        let mut up = Upstream {
            name: name.to_string(),
            directives: Vec::new(),
            servers: Vec::new(),
        };
        let mut stmt: Vec<&str> = Vec::new();
        let mut rest = tokens[3..].iter();
        loop {
            match rest.next().map(String::as_str) {
                None => return Err(format!("`upstream {name} {{` is never closed")),
                Some("}") if stmt.is_empty() => break,
                Some(";") => {
                    up.statement(&stmt)?;
                    stmt.clear();
                }
                Some(t @ ("{" | "}")) => {
                    return Err(format!("unexpected `{t}` in upstream {name}"))
                }
                Some(t) => stmt.push(t),
            }
        }
        if let Some(extra) = rest.next() {
            return Err(format!("found `{extra}` after the upstream {name} block"));
        }
        Ok(Some(up))
    }

    fn statement(&mut self, words: &[&str]) -> Result<(), String> {
        match words {
            [] => Ok(()),
            ["server", addr, params @ ..] => {
                let mut s = Server {
                    addr: addr.to_string(),
                    weight: None,
                    down: false,
                    other: Vec::new(),
                };
                for p in params {
                    if *p == "down" {
                        s.down = true;
                    } else if let Some(w) = p.strip_prefix("weight=") {
                        s.weight = Some(
                            w.parse()
                                .map_err(|_| format!("bad weight in `server {addr} {p}`"))?,
                        );
                    } else {
                        s.other.push(p.to_string());
                    }
                }
                self.servers.push(s);
                Ok(())
            }
            ["server"] => Err("`server` without an address".into()),
            _ => {
                self.directives.push(words.join(" "));
                Ok(())
            }
        }
    }

    /// One server per inventory instance, in inventory order: state from the
    /// file when it lists the address, else up with the inventory's weight.
    /// Servers no longer in the inventory are dropped (rollscript owns the
    /// file, and sending traffic to a host removed from the fleet is worse).
    pub(super) fn reconcile(
        file: Option<Upstream>,
        name: &str,
        inv: &Inventory,
        addr_of: impl Fn(&Instance) -> String,
    ) -> Upstream {
        let (directives, mut known) = match file {
            Some(f) => (
                f.directives,
                f.servers
                    .into_iter()
                    .map(|s| (s.addr.clone(), s))
                    .collect::<HashMap<_, _>>(),
            ),
            None => (Vec::new(), HashMap::new()),
        };
        let servers = inv
            .instances
            .iter()
            .map(|i| {
                let addr = addr_of(i);
                known.remove(&addr).unwrap_or(Server {
                    addr,
                    weight: i.weight,
                    down: false,
                    other: Vec::new(),
                })
            })
            .collect();
        for gone in known.keys() {
            warn!("nginx upstream {name}: dropping server {gone}, which is not in the inventory");
        }
        Upstream {
            name: name.to_string(),
            directives,
            servers,
        }
    }

    /// The `server` addresses, as written.
    pub(super) fn addrs(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|s| s.addr.as_str())
    }

    pub(super) fn find(&self, addr: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// Every inventory instance has a server after `reconcile`; only an
    /// instance from elsewhere has none.
    pub(super) fn server(&mut self, addr: &str) -> Result<&mut Server, String> {
        let name = &self.name;
        self.servers
            .iter_mut()
            .find(|s| s.addr == addr)
            .ok_or_else(|| format!("upstream {name} has no server {addr}"))
    }

    pub(super) fn render(&self, inventory: &Path) -> String {
        let mut out = format!(
            "# Managed by rollscript (lb.upstream_file of {}).\n\
             # Rewritten on deregister, register, set_weight and switch_pool: the\n\
             # `down` and `weight=` flags below are the live membership. Other\n\
             # directives and server parameters are kept.\n\
             upstream {} {{\n",
            inventory.display(),
            self.name
        );
        for d in &self.directives {
            out.push_str(&format!("    {d};\n"));
        }
        for s in &self.servers {
            out.push_str("    server ");
            out.push_str(&s.addr);
            if let Some(w) = s.weight {
                out.push_str(&format!(" weight={w}"));
            }
            for p in &s.other {
                out.push(' ');
                out.push_str(p);
            }
            if s.down {
                out.push_str(" down");
            }
            out.push_str(";\n");
        }
        out.push_str("}\n");
        out
    }
}

/// nginx's config words, with `{`, `}` and `;` as words of their own and
/// `#` comments dropped.
/// One `server` of an upstream block, for `rollscript init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// As written: `10.0.1.10:4000`, `app1.internal`, `[::1]:4000`.
    pub addr: String,
    pub weight: Option<u32>,
    pub down: bool,
}

/// The servers of `upstream NAME { … }` in `text`, read the way a run reads
/// lb.upstream_file (so a file `init` accepts is one a run accepts too).
pub fn upstream_servers(text: &str, name: &str) -> Result<Vec<UpstreamServer>, String> {
    let block = Upstream::parse(text, name)?
        .ok_or_else(|| format!("the file is empty: no `upstream {name} {{ … }}` block"))?;
    Ok(block
        .servers
        .into_iter()
        .map(|s| UpstreamServer {
            addr: s.addr,
            weight: s.weight,
            down: s.down,
        })
        .collect())
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut word = String::new();
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '{' | '}' | ';') {
                if !word.is_empty() {
                    tokens.push(std::mem::take(&mut word));
                }
                if !c.is_whitespace() {
                    tokens.push(c.to_string());
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            tokens.push(word);
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# a comment\nupstream backend {\n    least_conn;\n    server 10.0.1.10:4000 max_fails=3;\n    server 10.0.1.11:4000 weight=5 down; # drained\n    server 10.0.9.9:4000;\n}\n";

    fn inv() -> Inventory {
        let text = "[app]\nname = \"a\"\n[lb]\nkind = \"nginx\"\nupstream_file = \"up.conf\"\n\
            [[instances]]\nname = \"web-1\"\nhost = \"10.0.1.10\"\nport = 4000\npool = \"blue\"\n\
            [[instances]]\nname = \"web-2\"\nhost = \"10.0.1.11\"\nport = 4000\npool = \"blue\"\n\
            [[instances]]\nname = \"web-3\"\nhost = \"10.0.1.12\"\nport = 4000\nweight = 3\npool = \"green\"\n";
        Inventory::parse(Path::new("/srv/rollscript.toml"), text).unwrap()
    }

    fn addr(i: &Instance) -> String {
        format!("{}:{}", i.host, i.port.unwrap())
    }

    #[test]
    fn the_file_is_the_membership_state_and_keeps_what_it_does_not_manage() {
        let parsed = Upstream::parse(FILE, "backend").unwrap().unwrap();
        assert_eq!(parsed.directives, ["least_conn"]);
        assert_eq!(parsed.servers.len(), 3);
        assert!(parsed.servers[1].down);
        assert_eq!(parsed.servers[1].weight, Some(5));

        let up = Upstream::reconcile(Some(parsed), "backend", &inv(), addr);
        let text = up.render(Path::new("/srv/rollscript.toml"));
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "upstream backend {",
                "    least_conn;",
                "    server 10.0.1.10:4000 max_fails=3;",
                "    server 10.0.1.11:4000 weight=5 down;",
                "    server 10.0.1.12:4000 weight=3;",
                "}",
            ],
            "10.0.9.9 left the inventory; web-3 is new, with its inventory weight"
        );
        let again = Upstream::parse(&text, "backend").unwrap().unwrap();
        assert_eq!(again, up, "render and parse agree");
    }

    #[test]
    fn a_file_that_is_not_just_our_block_is_refused() {
        assert_eq!(Upstream::parse("\n# nothing yet\n", "backend"), Ok(None));
        for bad in [
            "upstream other { server a:1; }",
            "upstream backend { server a:1; } server { }",
            "upstream backend { server a:1;",
            "http { upstream backend { } }",
        ] {
            assert!(Upstream::parse(bad, "backend").is_err(), "{bad}");
        }
    }
}
