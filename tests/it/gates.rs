//! Canary gates against a real Prometheus scraping the demo app's
//! `/metrics`, with the seed's alert as the gate: "error rate > 1 %". Behind
//! nginx, which keeps no per-server numbers, so Prometheus is the only
//! traffic gate: a release answering 20 % of its requests with 500 is caught
//! and rolled back, a good one passes, and a gate whose query never returns
//! data fails the bake at its end instead of passing it.

use std::time::Duration;

use crate::harness::fleet::{FleetSpec, LbKind};
use crate::harness::load::Load;
use crate::harness::one_fleet_at_a_time;
use crate::harness::prometheus::Prometheus;
use crate::harness::run::{Finished, Running};

const RATE: u32 = 50;
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The seed's alert, on the canaries only (`$CANARY`: their `host:port`).
///
/// Users' requests (`/`): an instance answers 503 while it boots, but only
/// to the health checks — it is out of rotation then. `or vector(0)`: a
/// release that never answered a 5xx has no 5xx series at all, which is a
/// rate of 0, not "no data" (the denominator still says whether it served).
const ERROR_RATE: &str = "(sum(rate(http_requests_total{instance=~\"$CANARY\",path=\"/\",code=~\"5..\"}[5s])) or vector(0)) / sum(rate(http_requests_total{instance=~\"$CANARY\",path=\"/\"}[5s]))";
/// P95 from the app's histogram, against `max_p95` (seconds).
const P95: &str = "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{instance=~\"$CANARY\"}[5s])))";

struct Outcome {
    run: Finished,
    versions: Vec<(String, String)>,
    prometheus: String,
}

/// A canary of `version` on a 3-instance nginx fleet under load, its bake
/// gated by `error_rate` (and the p95) in a Prometheus scraping every app.
fn canary(version: &str, error_rate: &str) -> Outcome {
    let _one = one_fleet_at_a_time();
    let fleet = FleetSpec::new(LbKind::Nginx, 3).start();
    let prom = Prometheus::start(&fleet.instances.iter().map(|i| i.addr()).collect::<Vec<_>>());
    prom.wait_scraping(3);
    let inv = fleet.inventory().write(&fleet.path("rollscript.toml"));
    let load = Load::start(fleet.lb_addr(), RATE, Duration::from_secs(120));
    let vars = [
        format!("version={version}"),
        "stages=1,100%".into(),
        "bake=10s".into(),
        "gate_interval=1s".into(),
        format!("prometheus_url={}", prom.url()),
        format!("prometheus_error_rate={error_rate}"),
        format!("prometheus_p95={P95}"),
    ];
    let mut args = vec![
        "run".to_string(),
        "scripts/canary.rhai".into(),
        "-i".into(),
        inv.display().to_string(),
        "--yes".into(),
    ];
    for v in &vars {
        args.push("--var".into());
        args.push(v.clone());
    }
    let run =
        Running::start(&args.iter().map(String::as_str).collect::<Vec<_>>()).wait(RUN_TIMEOUT);
    load.stop();
    Outcome {
        versions: fleet.versions().into_iter().collect(),
        prometheus: prom.log(),
        run,
    }
}

fn ctx(o: &Outcome) -> String {
    format!(
        "{}\n--- versions {:?}\n--- prometheus log (tail)\n{}",
        o.run.dump(),
        o.versions,
        o.prometheus
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn all_on(o: &Outcome, version: &str) -> bool {
    o.versions.iter().all(|(_, v)| v == version)
}

#[test]
fn a_canary_answering_20_percent_500s_is_caught_by_the_prometheus_error_rate_and_rolled_back() {
    let o = canary("v2-5xx20", ERROR_RATE);
    assert_eq!(o.run.code, Some(1), "{}", ctx(&o));
    assert!(
        o.run.stderr.contains(
            "canary aborted: stage 1 gate: prometheus error rate: prometheus_error_rate = "
        ),
        "the gate names the rate it saw\n{}",
        ctx(&o)
    );
    assert!(
        all_on(&o, "v1"),
        "the canary was rolled back, the rest never deployed\n{}",
        ctx(&o)
    );
}

#[test]
fn a_good_canary_passes_its_prometheus_gates_and_the_fleet_is_promoted() {
    // Exit 0 also says both gates had data: an inconclusive one fails.
    let o = canary("v2", ERROR_RATE);
    assert_eq!(o.run.code, Some(0), "{}", ctx(&o));
    assert!(all_on(&o, "v2"), "{}", ctx(&o));
}

#[test]
fn a_gate_whose_query_never_returns_data_fails_at_the_end_of_the_bake() {
    let o = canary(
        "v2",
        "sum(rate(no_such_metric_total{instance=~\"$CANARY\"}[5s]))",
    );
    assert_eq!(o.run.code, Some(1), "{}", ctx(&o));
    assert!(
        o.run.stderr.contains("inconclusive after the 10s bake")
            && o.run.stderr.contains("no data for prometheus_error_rate"),
        "no data is not a pass\n{}",
        ctx(&o)
    );
    assert!(all_on(&o, "v1"), "rolled back\n{}", ctx(&o));
}
