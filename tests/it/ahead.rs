//! ssh handshakes overlap the work before them (`connect_ahead`, done by
//! `rollout::rolling` for the next batch): the next instance's master is
//! open while the current one deploys, and a host that cannot be reached is
//! reported at its own turn, never earlier.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::journal::Journal;
use crate::harness::{repo, rollscript, wait_until};

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// Established connections to `name`'s sshd (its masters).
fn ssh_connections(fleet: &Fleet, name: &str) -> usize {
    let port = fleet.instance(name).ssh_port;
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn rolling(inventory: &Path) -> Command {
    let mut c = rollscript();
    c.current_dir(repo())
        .args([
            "run",
            "scripts/rolling.rhai",
            "--yes",
            "--var",
            "version=v2",
        ])
        .arg("-i")
        .arg(inventory);
    c
}

#[test]
fn the_next_instance_is_connected_while_the_current_one_deploys() {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let deploy = fleet.wrapper(
        "deploy-held-on-web-1.sh",
        "if [ \"$NAME\" = web-1 ]; then mark web-1-deploying; wait_for go; fi\nexec \"$bin/deploy.sh\" \"$@\"",
    );
    let inv = fleet
        .inventory()
        .deploy(&deploy)
        .min_in_service(2)
        .write(&fleet.path("ahead.toml"));
    assert_eq!(
        ssh_connections(&fleet, "web-2"),
        0,
        "no master before the run"
    );

    let run = fleet.spawn("run", rolling(&inv));
    fleet.wait_ctl("web-1-deploying", Duration::from_secs(60));
    wait_until(
        "web-2's master to open while web-1 deploys",
        Duration::from_secs(20),
        || ssh_connections(&fleet, "web-2") > 0,
    );
    let web3_during = ssh_connections(&fleet, "web-3");
    let journal = crate::harness::journal::only_journal(&inv);
    let web2_steps = journal.steps("web-2");
    fleet.touch("go");
    let r = run.wait(RUN_TIMEOUT);

    assert_eq!(r.code, Some(0), "{}", r.dump());
    assert!(
        web2_steps.is_empty(),
        "web-2 had no step yet while its master opened: {web2_steps:?}"
    );
    assert_eq!(
        web3_during, 0,
        "only the next batch is connected ahead, not the whole fleet"
    );
    for name in ["web-1", "web-2", "web-3"] {
        assert_eq!(fleet.version(name), "v2", "{name}\n{}", r.dump());
    }
}

#[test]
fn a_host_that_cannot_be_reached_ahead_fails_at_its_own_turn_and_not_before() {
    let mut fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = fleet
        .inventory()
        .min_in_service(2)
        .write(&fleet.path("ahead.toml"));
    fleet.stop_sshd("web-2");
    let (ip2, ssh2) = (
        fleet.instance("web-2").ip.clone(),
        fleet.instance("web-2").ssh_port,
    );

    let r = fleet.exec("run", rolling(&inv), RUN_TIMEOUT);
    let j: Journal = crate::harness::journal::only_journal(&inv);

    assert_eq!(r.code, Some(1), "{}", r.dump());
    // web-1 went through its whole turn although web-2 (connected ahead
    // during it) was unreachable all along.
    let web1: Vec<String> = j
        .steps("web-1")
        .into_iter()
        .filter(|(_, ok)| *ok == Some(true))
        .map(|(op, _)| op)
        .collect();
    assert!(
        web1.contains(&"ssh".to_string())
            && web1.last().map(String::as_str) == Some("wait_in_service"),
        "web-1 deployed and back before web-2 failed: {web1:?}\n{}",
        r.dump()
    );
    // web-2 failed at its own deploy, after web-1's, as connection_refused,
    // naming it (then the script rolls web-1 back, as rolling.rhai does).
    let refused = format!("web-2: connection refused by {ip2} port {ssh2}");
    let (deployed, refused_at) = (r.stderr.find("web-1: deployed"), r.stderr.find(&refused));
    assert!(
        deployed.is_some() && refused_at > deployed,
        "web-1 deployed, then {refused}\n{}",
        r.dump()
    );
    let failed: Vec<_> = j
        .of_type("intent")
        .into_iter()
        .filter(|i| i["instance"] == "web-2" && i["op"] == "ssh")
        .filter_map(|i| j.result_of(i["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(failed.len(), 1, "{}", r.dump());
    assert_eq!(failed[0]["error_kind"], "connection_refused");
    // Nothing was tried on web-3.
    assert!(j.steps("web-3").is_empty(), "{:?}", j.steps("web-3"));
}
