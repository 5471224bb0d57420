//! The fleet as the load balancer holds it, read only: HAProxy's `show
//! servers state BACKEND`, the `upstream NAME` block of an nginx include,
//! an ELBv2 target group's members (EC2 DescribeInstances for their private
//! IPs, as `lb.discover` does), or the `--hosts` given.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Given, Member, Source};
use crate::config::{valid_host, valid_name};
use crate::providers::{haproxy, nginx};

pub(super) async fn members(source: &Source, given: &Given) -> Result<Vec<Member>, String> {
    match source {
        Source::Haproxy { socket, backend } => {
            let servers = haproxy::backend_servers(socket, backend)
                .await
                .map_err(|e| e.message)?;
            let mut names = Names::default();
            Ok(servers
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let (name, name_guessed) = match valid_name(&s.name) && names.free(&s.name) {
                        true => (s.name.clone(), false),
                        false => (names.numbered(i), true),
                    };
                    names.take(&name);
                    Member {
                        note: match name_guessed {
                            false => format!("HAProxy server {backend}/{}", s.name),
                            true => format!(
                                "guess: HAProxy server {backend}/{} (its name is no valid instance name)",
                                s.name
                            ),
                        },
                        name,
                        name_guessed,
                        host: s.addr,
                        port: Some(s.port),
                        id: None,
                        parked: s.parked.map(str::to_string),
                    }
                })
                .collect())
        }
        Source::Nginx {
            upstream_file,
            upstream,
            ..
        } => {
            let text = std::fs::read_to_string(upstream_file)
                .map_err(|e| format!("cannot read {}: {e}", upstream_file.display()))?;
            let servers = nginx::upstream_servers(&text, upstream).map_err(|e| {
                format!(
                    "{}: {e} (rollscript rewrites lb.upstream_file: keep the `upstream {upstream}` block in an include file of its own)",
                    upstream_file.display()
                )
            })?;
            let mut names = Names::default();
            servers
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let (host, port) = split_addr(&s.addr).ok_or_else(|| {
                        format!(
                            "upstream {upstream}: server {} is not host:port (unix sockets cannot be deployed to)",
                            s.addr
                        )
                    })?;
                    let (name, guessed) = names.for_host(&host, i);
                    Ok(Member {
                        note: format!("guess: nginx server {} (nginx names no servers)", s.addr),
                        name,
                        name_guessed: guessed,
                        host,
                        port: Some(port),
                        id: None,
                        parked: s.down.then(|| "down".to_string()),
                    })
                })
                .collect()
        }
        Source::None { hosts } => {
            let mut names = Names::default();
            hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let h = h.trim();
                    if !valid_host(h) {
                        return Err(format!("--hosts: {h:?} is no host name or IP address"));
                    }
                    let (name, guessed) = names.for_host(h, i);
                    Ok(Member {
                        note: match guessed {
                            true => "guess: named in order of --hosts".to_string(),
                            false => "from --hosts".to_string(),
                        },
                        name,
                        name_guessed: guessed,
                        host: h.to_string(),
                        port: None,
                        id: None,
                        parked: None,
                    })
                })
                .collect()
        }
        Source::Aws {
            target_group_arn,
            region,
            endpoint,
        } => {
            aws_members(
                target_group_arn,
                region.as_deref(),
                endpoint.as_deref(),
                given,
            )
            .await
        }
    }
}

#[cfg(feature = "aws")]
async fn aws_members(
    arn: &str,
    region: Option<&str>,
    endpoint: Option<&str>,
    given: &Given,
) -> Result<Vec<Member>, String> {
    use std::sync::Arc;
    // Discovery as a run does it, from an inventory holding only the LB.
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut text = format!(
        "[app]\nname = \"init\"\n[health]\nport = {}\n[lb]\nkind = \"aws\"\ndiscover = true\ntarget_group_arn = {}\n",
        given.health_port.unwrap_or(render::DEFAULT_PORT),
        q(arn)
    );
    if let Some(r) = region {
        text.push_str(&format!("region = {}\n", q(r)));
    }
    if let Some(e) = endpoint {
        text.push_str(&format!("endpoint = {}\n", q(e)));
    }
    let inv = crate::config::Inventory::parse(std::path::Path::new("--target-group-arn"), &text)
        .map_err(|e| e.to_string())?;
    let found = crate::providers::aws::ElbV2::new(Arc::new(inv))
        .discover()
        .await
        .map_err(|e| e.message)?;
    Ok(found
        .into_iter()
        .map(|i| {
            let tagged = Some(&i.name) != i.id.as_ref();
            Member {
                note: match tagged {
                    true => format!("{} (its Name tag)", i.id.clone().unwrap_or_default()),
                    false => "no usable Name tag: named by its instance id".to_string(),
                },
                name: i.name,
                name_guessed: false,
                host: i.host,
                port: i.port,
                id: i.id,
                parked: None,
            }
        })
        .collect())
}

#[cfg(feature = "aws")]
use super::render;

#[cfg(not(feature = "aws"))]
async fn aws_members(
    _arn: &str,
    _region: Option<&str>,
    _endpoint: Option<&str>,
    _given: &Given,
) -> Result<Vec<Member>, String> {
    Err("this rollscript was built without the `aws` feature".into())
}

/// Instance names handed out so far, so none is given twice.
#[derive(Default)]
struct Names(BTreeSet<String>);

impl Names {
    fn free(&self, name: &str) -> bool {
        !self.0.contains(name)
    }

    fn take(&mut self, name: &str) {
        self.0.insert(name.to_string());
    }

    /// `web-N` (N from 1, the first one free).
    fn numbered(&self, i: usize) -> String {
        (i + 1..)
            .map(|n| format!("web-{n}"))
            .find(|n| self.free(n))
            .expect("a free name")
    }

    /// A host name's first label (`app1` of `app1.internal`) when it is one
    /// nobody has; else `web-N`. Returns the name and whether it is a guess
    /// from the order alone.
    fn for_host(&mut self, host: &str, i: usize) -> (String, bool) {
        let label = host.split('.').next().unwrap_or_default();
        let (name, guessed) =
            match host.parse::<IpAddr>().is_err() && valid_name(label) && self.free(label) {
                true => (label.to_string(), false),
                false => (self.numbered(i), true),
            };
        self.take(&name);
        (name, guessed)
    }
}

/// `host:port`, `[v6]:port`, or a bare host (nginx's default port 80).
fn split_addr(addr: &str) -> Option<(String, u16)> {
    if addr.starts_with("unix:") {
        return None;
    }
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest.split_once(']')?;
        let port = match port.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => 80,
        };
        return Some((host.to_string(), port));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((addr.to_string(), 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("10.0.1.10:4000"),
            Some(("10.0.1.10".into(), 4000))
        );
        assert_eq!(
            split_addr("app1.internal"),
            Some(("app1.internal".into(), 80))
        );
        assert_eq!(split_addr("[::1]:4000"), Some(("::1".into(), 4000)));
        assert_eq!(split_addr("unix:/run/app.sock"), None);
        assert_eq!(split_addr("10.0.1.10:http"), None);
    }

    #[test]
    fn host_names_give_names_and_addresses_are_numbered() {
        let mut n = Names::default();
        assert_eq!(n.for_host("10.0.1.10", 0), ("web-1".into(), true));
        assert_eq!(n.for_host("app1.internal", 1), ("app1".into(), false));
        assert_eq!(n.for_host("app1.other", 2), ("web-3".into(), true));
    }
}
