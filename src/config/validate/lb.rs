//! `[lb]`: the load balancer kind and its settings, checked against the
//! instances.

use super::*;

/// `[lb]` or `[[lb]]`, each entry checked by [`lb`] at its own key
/// (`lb.socket`, `lb[1].socket`), names made unique.
pub(super) fn lbs(
    c: &Checker,
    raw: Option<crate::config::raw::RawLbs>,
    instances: &[Instance],
) -> Result<Vec<LbSettings>, ConfigError> {
    use crate::config::raw::RawLbs;
    let entries: Vec<(Vec<Seg>, crate::config::raw::RawLb)> = match raw {
        None => vec![(k(&["lb"]), Default::default())],
        Some(RawLbs::One(l)) => vec![(k(&["lb"]), *l)],
        Some(RawLbs::Many(v)) if v.is_empty() => {
            return Err(c.err(
                &k(&["lb"]),
                "an empty [[lb]] list: add an entry with a kind",
            ))
        }
        Some(RawLbs::Many(v)) => v
            .into_iter()
            .enumerate()
            .map(|(i, l)| (vec![Seg::Key("lb".into()), Seg::Index(i)], l))
            .collect(),
    };
    let names = crate::config::lbs::default_names(
        &entries
            .iter()
            .map(|(_, l)| l.kind.clone().unwrap_or_else(|| "none".into()))
            .collect::<Vec<_>>(),
    );
    let mut out: Vec<LbSettings> = Vec::new();
    for (i, ((at, l), default_name)) in entries.into_iter().zip(names).enumerate() {
        // One capacity guard for the fleet: its bound is the first entry's.
        if i > 0 && l.min_in_service.is_some() {
            let mut key = at.clone();
            key.push(Seg::Key("min_in_service".into()));
            return Err(c.err(
                &key,
                "set min_in_service on the first [[lb]] only: it bounds the fleet, counted across every LB",
            ));
        }
        let settings = lb(c, &at, l, instances, default_name)?;
        let mut key = at.clone();
        key.push(Seg::Key("name".into()));
        if out.iter().any(|o| o.name == settings.name) {
            return Err(c.err(
                &key,
                format!("two load balancers are named {:?}", settings.name),
            ));
        }
        if !valid_name(&settings.name) {
            return Err(c.err(
                &key,
                format!(
                    "invalid name {:?}: use letters, digits, '-', '_' or '.'",
                    settings.name
                ),
            ));
        }
        out.push(settings);
    }
    Ok(out)
}

fn lb(
    c: &Checker,
    at: &[Seg],
    l: crate::config::raw::RawLb,
    instances: &[Instance],
    default_name: String,
) -> Result<LbSettings, ConfigError> {
    let k = |parts: &[&str]| -> Vec<Seg> {
        let mut v = at.to_vec();
        v.extend(parts.iter().skip(1).map(|p| Seg::Key(p.to_string())));
        v
    };
    let kind = l.kind.clone().unwrap_or_else(|| "none".into());
    let need = |key: &str, v: &Option<String>| -> Result<String, ConfigError> {
        v.clone().ok_or_else(|| {
            c.err(
                &k(&["lb"]),
                format!("missing key `{key}` (required when kind = \"{kind}\")"),
            )
        })
    };
    // Keys that belong to another kind are almost always a copy-paste slip.
    let foreign: &[(&str, bool)] = &[
        ("socket", l.socket.is_some() && kind != "haproxy"),
        (
            "upstream_file",
            l.upstream_file.is_some() && kind != "nginx",
        ),
        (
            "target_group_arn",
            l.target_group_arn.is_some() && kind != "aws",
        ),
        ("listener_arn", l.listener_arn.is_some() && kind != "aws"),
    ];
    if let Some((key, _)) = foreign.iter().find(|(_, bad)| *bad) {
        return Err(c.err(&k(&["lb", key]), format!("not used when kind = \"{kind}\"")));
    }
    let backend = match kind.as_str() {
        "none" => LbBackend::None,
        "haproxy" => {
            let backend = need("backend", &l.backend)?;
            if !valid_name(&backend) {
                return Err(c.err(&k(&["lb", "backend"]), format!("invalid backend name {backend:?}")));
            }
            LbBackend::Haproxy {
                socket: need("socket", &l.socket)?,
                backend,
            }
        }
        "nginx" => {
            let file = need("upstream_file", &l.upstream_file)?;
            let upstream = l.upstream.clone().unwrap_or_else(|| "backend".into());
            if !valid_name(&upstream) {
                return Err(c.err(&k(&["lb", "upstream"]), format!("invalid upstream name {upstream:?}")));
            }
            if let Some(host) = &l.run_on {
                if !instances.iter().any(|i| &i.name == host) {
                    return Err(c.err(
                        &k(&["lb", "run_on"]),
                        format!("no instance named {host:?}"),
                    ));
                }
            }
            LbBackend::Nginx {
                upstream_file: c.path(&file),
                upstream,
                test_command: l.test_command.clone().unwrap_or_else(|| "nginx -t".into()),
                reload_command: l.reload_command.clone().unwrap_or_else(|| "nginx -s reload".into()),
                run_on: l.run_on.clone(),
            }
        }
        "aws" if !cfg!(feature = "aws") => {
            return Err(c.err(
                &k(&["lb", "kind"]),
                "this rollscript was built without the `aws` feature; rebuild with default features",
            ))
        }
        "aws" => {
            let arn = need("target_group_arn", &l.target_group_arn)?;
            if !arn.starts_with("arn:") {
                return Err(c.err(
                    &k(&["lb", "target_group_arn"]),
                    format!("invalid ARN {arn:?}: expected arn:aws:elasticloadbalancing:…"),
                ));
            }
            LbBackend::Aws {
                target_group_arn: arn,
                region: l.region.clone(),
                endpoint: l.endpoint.clone(),
                listener_arn: l.listener_arn.clone(),
                port: c.port(&k(&["lb", "port"]), l.port)?,
                discover: l.discover.unwrap_or(false),
            }
        }
        other => {
            return Err(c.err(
                &k(&["lb", "kind"]),
                format!("unknown load balancer {other:?}: expected \"aws\", \"haproxy\", \"nginx\" or \"none\""),
            ))
        }
    };

    let discovers = matches!(backend, LbBackend::Aws { discover: true, .. });
    if instances.is_empty() && !discovers {
        return Err(c.err(
            &[Seg::Key("instances".into())],
            "the fleet is empty: add at least one [[instances]] with a host (or set lb.discover = true for an AWS target group)",
        ));
    }

    let min_in_service = match &l.min_in_service {
        None => CountOrPercent::Count(1),
        Some(IntOrString::Int(n)) if *n >= 0 => CountOrPercent::Count(*n as u64),
        Some(IntOrString::Int(n)) => {
            return Err(c.err(
                &k(&["lb", "min_in_service"]),
                format!("invalid count {n}: must be 0 or more"),
            ))
        }
        Some(IntOrString::Str(s)) => {
            CountOrPercent::parse(s).map_err(|m| c.err(&k(&["lb", "min_in_service"]), m))?
        }
    };
    if let CountOrPercent::Count(n) = min_in_service {
        if !discovers && n as usize > instances.len() {
            return Err(c.err(
                &k(&["lb", "min_in_service"]),
                format!(
                    "{n} is more than the {} instances of the fleet: no instance could ever be taken out",
                    instances.len()
                ),
            ));
        }
    }

    let mut pools = BTreeMap::new();
    for (name, p) in l.pools.unwrap_or_default() {
        if !valid_name(&name) {
            return Err(c.err(&k(&["lb", "pools"]), format!("invalid pool name {name:?}")));
        }
        if !instances
            .iter()
            .any(|i| i.pool.as_deref() == Some(name.as_str()))
        {
            return Err(c.err(
                &k(&["lb", "pools", &name]),
                format!("no instance has pool = {name:?}"),
            ));
        }
        for v in [&p.backend, &p.upstream].into_iter().flatten() {
            if !valid_name(v) {
                return Err(c.err(&k(&["lb", "pools", &name]), format!("invalid name {v:?}")));
            }
        }
        pools.insert(
            name,
            PoolTarget {
                backend: p.backend,
                upstream: p.upstream,
                target_group_arn: p.target_group_arn,
            },
        );
    }

    Ok(LbSettings {
        name: l.name.clone().unwrap_or(default_name),
        on_drain_timeout: match l.on_drain_timeout.as_deref() {
            None | Some("proceed") => DrainPolicy::Proceed,
            Some("fail") => DrainPolicy::Fail,
            Some(other) => {
                return Err(c.err(
                    &k(&["lb", "on_drain_timeout"]),
                    format!("expected \"proceed\" or \"fail\", got {other:?}"),
                ))
            }
        },
        drain_timeout: c.duration(
            &k(&["lb", "drain_timeout"]),
            l.drain_timeout.as_ref(),
            Duration::from_secs(120),
        )?,
        register_timeout: c.duration(
            &k(&["lb", "register_timeout"]),
            l.register_timeout.as_ref(),
            Duration::from_secs(120),
        )?,
        poll_interval: match &l.poll_interval {
            None => None,
            Some(s) => Some(parse_duration(s).map_err(|m| c.err(&k(&["lb", "poll_interval"]), m))?),
        },
        min_in_service,
        drain_detect: match &l.drain_detect {
            None => DrainDetect::default(),
            Some(s) => DrainDetect::parse(s).map_err(|m| c.err(&k(&["lb", "drain_detect"]), m))?,
        },
        drain_settle: c.duration(
            &k(&["lb", "drain_settle"]),
            l.drain_settle.as_ref(),
            DEFAULT_DRAIN_SETTLE,
        )?,
        backend,
        pools,
    })
}
