//! `[[instances]]`: names, hosts, ports, pools — each refused with its key.

use std::collections::HashSet;

use super::*;

pub(super) fn instances(
    c: &Checker,
    raw: Vec<crate::config::raw::RawInstance>,
) -> Result<Vec<Instance>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = |key: &str| {
            vec![
                Seg::Key("instances".into()),
                Seg::Index(i),
                Seg::Key(key.into()),
            ]
        };
        let host = match r.host {
            Some(h) if valid_host(&h) => h,
            Some(h) => {
                return Err(c.err(
                    &at("host"),
                    format!("invalid host {h:?}: expected a host name or an IP address"),
                ))
            }
            None => {
                return Err(c.err(
                    &[Seg::Key("instances".into()), Seg::Index(i)],
                    "missing key `host`",
                ))
            }
        };
        let name = r.name.clone().unwrap_or_else(|| host.clone());
        if !valid_name(&name) {
            return Err(c.err(
                &at("name"),
                format!("invalid name {name:?}: use letters, digits, '-', '_' or '.' (at most 64)"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(c.err(&at("name"), format!("duplicate instance name {name:?}")));
        }
        if let Some(id) = &r.id {
            if !valid_name(id) {
                return Err(c.err(&at("id"), format!("invalid instance id {id:?}")));
            }
        }
        if let Some(pool) = &r.pool {
            if !valid_name(pool) {
                return Err(c.err(&at("pool"), format!("invalid pool name {pool:?}")));
            }
        }
        let weight = match r.weight {
            None => None,
            Some(w) if (0..=256).contains(&w) => Some(w as u32),
            Some(w) => {
                return Err(c.err(&at("weight"), format!("invalid weight {w}: must be 0-256")))
            }
        };
        out.push(Instance {
            name,
            host,
            port: c.port(&at("port"), r.port)?,
            ssh_port: c.port(&at("ssh_port"), r.ssh_port)?,
            health_port: c.port(&at("health_port"), r.health_port)?,
            id: r.id,
            pool: r.pool,
            weight,
        });
    }
    Ok(out)
}

/// Two instances at one `host:port` would be drained and deployed as two
/// while the LB sees one: refused, naming both.
pub(super) fn distinct_addresses(
    c: &Checker,
    instances: &[Instance],
    default_port: u16,
) -> Result<(), ConfigError> {
    let mut seen: std::collections::HashMap<(String, u16), &str> = Default::default();
    for (i, inst) in instances.iter().enumerate() {
        let port = inst.port.unwrap_or(default_port);
        let key = (inst.host.to_ascii_lowercase(), port);
        if let Some(first) = seen.insert(key, &inst.name) {
            return Err(c.err(
                &[
                    Seg::Key("instances".into()),
                    Seg::Index(i),
                    Seg::Key("host".into()),
                ],
                format!(
                    "{} has the same address {}:{port} as {first}: each instance must be its own host:port",
                    inst.name,
                    host_for_url(&inst.host)
                ),
            ));
        }
    }
    Ok(())
}

/// A user name as `ssh -l` takes it, and nothing an ssh option could hide in.
pub(super) fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
