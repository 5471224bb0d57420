use std::path::Path;

use super::render::{render, Input};
use super::{Given, Member, Source};
use crate::config::Inventory;

fn member(name: &str, host: &str, port: Option<u16>) -> Member {
    Member {
        name: name.into(),
        host: host.into(),
        port,
        id: None,
        note: format!("HAProxy server web/{name}"),
        name_guessed: false,
        parked: None,
    }
}

fn haproxy() -> Source {
    Source::Haproxy {
        socket: "/run/haproxy/admin.sock".into(),
        backend: "credit_radar".into(),
    }
}

fn written(source: &Source, given: &Given, members: &[Member]) -> (String, Inventory) {
    let path = Path::new("rollscript.toml");
    let text = render(&Input {
        path,
        source,
        given,
        members,
        from: "HAProxy backend credit_radar at /run/haproxy/admin.sock".into(),
    });
    let inv = Inventory::parse(path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, inv)
}

#[test]
fn without_flags_every_default_is_marked_as_a_guess_and_the_file_parses() {
    let members = [
        member("web-1", "10.0.1.10", Some(4000)),
        member("web-2", "10.0.1.11", Some(4000)),
        member("web-3", "10.0.1.12", Some(4000)),
    ];
    let (text, inv) = written(&haproxy(), &Given::default(), &members);
    for guessed in ["name", "deploy", "user", "port", "path", "min_in_service"] {
        let l = text
            .lines()
            .find(|l| l.starts_with(&format!("{guessed} = ")))
            .unwrap_or_else(|| panic!("no {guessed} in\n{text}"));
        assert!(l.contains("# guess:"), "{guessed} is not marked: {l}");
    }
    assert_eq!(inv.app.name, "credit_radar");
    assert_eq!(
        inv.app.deploy.as_deref(),
        Some("cd /home/ubuntu/credit_radar && ./deploy.sh")
    );
    assert_eq!(inv.health.port, 4000);
    // One port for all: on [health], not repeated per instance.
    assert!(inv.instances.iter().all(|i| i.port.is_none()), "{text}");
    assert_eq!(inv.lb.min_in_service.to_string(), "2");
    // Nothing a run would refuse for a missing file: identity and known_hosts
    // are left to ssh's own defaults.
    assert!(inv.missing_files().is_empty(), "{text}");
}

#[test]
fn flags_replace_the_guesses_and_distinct_ports_stay_on_each_instance() {
    let given = Given {
        name: Some("shop".into()),
        deploy: Some("/srv/shop/deploy.sh".into()),
        user: Some("deploy".into()),
        health_path: Some("/up".into()),
        ..Given::default()
    };
    let members = [
        member("a", "127.0.1.1", Some(40001)),
        member("b", "127.0.1.2", Some(40002)),
    ];
    let (text, inv) = written(&haproxy(), &given, &members);
    for key in ["name", "deploy", "user", "path"] {
        let l = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap();
        assert!(!l.contains("guess"), "{l}");
    }
    assert_eq!(inv.health.path, "/up");
    assert_eq!(inv.ssh.user.as_deref(), Some("deploy"));
    let ports: Vec<u16> = inv.instances.iter().map(|i| inv.traffic_port(i)).collect();
    assert_eq!(ports, [40001, 40002]);
    assert_eq!(
        inv.health_url(&inv.instances[1]),
        "http://127.0.1.2:40002/up"
    );
}

#[test]
fn a_parked_server_is_written_with_a_note_and_one_instance_gets_no_spare() {
    let mut m = member("web-1", "10.0.1.10", Some(4000));
    m.parked = Some("MAINT".into());
    let (text, inv) = written(&haproxy(), &Given::default(), &[m]);
    assert!(
        text.contains("# MAINT on the load balancer now: runs leave it out of rotation"),
        "{text}"
    );
    assert_eq!(inv.lb.min_in_service.to_string(), "0");
}
