//! Machine-readable output on a real HAProxy fleet: with `--log-format json`
//! every line of stderr is one JSON object and the last is a `summary`
//! naming every instance; `--summary json` prints that summary alone on
//! stdout and it agrees with the run's journal.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::fleet::{FleetSpec, LbKind};
use crate::harness::one_fleet_at_a_time;
use crate::harness::run::Running;

#[test]
fn json_logs_are_json_on_every_line_and_end_with_a_summary_that_matches_the_journal() {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let inv_s = inv.display().to_string();
    let r = Running::start(&[
        "run",
        "scripts/rolling.rhai",
        "-i",
        &inv_s,
        "--yes",
        "--var",
        "version=v2",
        "--log-format",
        "json",
        "--summary",
        "json",
    ])
    .wait(Duration::from_secs(180));
    assert_eq!(r.code, Some(0), "{}", r.dump());

    // stderr: JSON objects only, the last one the summary.
    let records: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("a stderr line that is not JSON ({e}): {l:?}\n{}", r.dump())
            })
        })
        .collect();
    let last = records.last().expect("records");
    assert_eq!(last["type"], "summary", "{last}");
    assert_eq!(last["exit_code"], 0);
    let names: Vec<&str> = last["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1", "web-2", "web-3"]);
    assert!(records
        .iter()
        .any(|r| r["step"] == "drained" && r["instance"] == "web-2"));

    // stdout: the summary object alone, the same as stderr's last record.
    let summary: serde_json::Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", r.stdout));
    for key in ["run", "exit_code", "outcome", "instances", "journal"] {
        assert_eq!(summary[key], last[key], "{key}");
    }
    // … and the journal: the run id, the outcome, six ok steps per instance.
    let journal = std::fs::read_to_string(summary["journal"].as_str().unwrap()).unwrap();
    let lines: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["run"], summary["run"]);
    let end = lines.iter().find(|l| l["type"] == "run_end").unwrap();
    assert_eq!(end["outcome"], summary["outcome"]);
    let mut steps: BTreeMap<String, u64> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["type"] == "intent") {
        *steps
            .entry(l["instance"].as_str().unwrap_or("-").to_string())
            .or_default() += 1;
    }
    for i in summary["instances"].as_array().unwrap() {
        assert_eq!(i["state"], "updated", "{i}");
        assert_eq!(
            i["steps"].as_u64(),
            steps.get(i["name"].as_str().unwrap()).copied(),
            "steps of {} in the summary and the journal",
            i["name"]
        );
    }
}

#[test]
fn a_refused_run_with_json_logs_prints_one_error_object() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::harness::rollscript()
        .current_dir(crate::harness::repo())
        .args(["run", "scripts/rolling.rhai", "-i"])
        .arg(dir.path().join("missing.toml"))
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert_eq!(lines[0]["type"], "error");
    assert_eq!(lines[0]["exit_code"], 2);
    assert!(lines[0]["message"]
        .as_str()
        .unwrap()
        .contains("cannot read inventory"));
}
