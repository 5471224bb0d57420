//! What the orchestrator itself costs per instance (issue 17): a real
//! `run scripts/rolling.rhai` — the whole pipeline, the Rhai script, the
//! effects layer, the capacity guard, the fsynced journal — against the
//! fakes with realistic latencies (LB waits 20 ms, ssh commands 50 ms,
//! health checks 5 ms), `parallel` batches of 50.
//!
//! `cargo bench --bench fake_run` runs a child process per fleet size (100
//! and 1,000 instances by default; `-- 100 1000 2000` for others) and
//! prints each one's CPU time (user + system, getrusage) and peak RSS
//! (VmHWM), then the cost per instance as the slope between the sizes, so
//! start-up and the binary's own memory do not count. Targets: ≤ 2 ms CPU
//! and ≤ 50 KB per instance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollscript::providers::fake::{FakeHealth, FakeLb, FakeTransport, Fakes};
use rollscript::run::{run_with, RunOptions, SummaryFormat};

/// One measured run: instances, CPU seconds, peak RSS in KB, wall seconds, exit code.
struct Measured {
    n: usize,
    cpu: f64,
    rss_kb: f64,
    wall: f64,
    code: u8,
}

fn inventory(n: usize) -> String {
    let mut s = String::from(
        "[app]\nname = \"bench\"\ndeploy = \"./deploy.sh {version}\"\nrollback = \"./rollback.sh\"\n\
         [health]\nport = 4000\n\
         [lb]\nkind = \"haproxy\"\nsocket = \"/nonexistent/rollscript-bench.sock\"\nbackend = \"web\"\n",
    );
    s.push_str(&format!("min_in_service = {}\n", n - 50));
    for i in 0..n {
        s.push_str(&format!(
            "[[instances]]\nname = \"web-{i}\"\nhost = \"127.{}.{}.{}\"\n",
            20 + i / (254 * 250),
            (i / 254) % 250,
            i % 254 + 1
        ));
    }
    s
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn peak_rss_kb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

/// The child: one run of `n` instances, its numbers on stdout.
fn child(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("rollscript.toml");
    std::fs::write(&inv, inventory(n)).unwrap();
    let fakes = Fakes {
        lb: Arc::new(FakeLb {
            wait: Duration::from_millis(20),
            ..Default::default()
        }),
        ssh: Arc::new(FakeTransport {
            latency: Duration::from_millis(50),
            ..Default::default()
        }),
        health: Arc::new(FakeHealth {
            latency: Duration::from_millis(5),
            ..Default::default()
        }),
        services: Default::default(),
    };
    let opts = RunOptions {
        script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rolling.rhai"),
        inventory: inv,
        vars: BTreeMap::from([
            ("version".to_string(), "v2".to_string()),
            ("batch".to_string(), "50".to_string()),
        ]),
        dry_run: false,
        yes: true,
        lock_wait: Duration::ZERO,
        only_failed: None,
        step: false,
        include_parked: false,
        preflight: false,
        summary: SummaryFormat::Off,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = fakes.providers();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let outcome = rt
        .block_on(run_with(opts, move |_| p.clone()))
        .unwrap_or_else(|f| f.outcome);
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let deploys = fakes
        .ssh
        .calls
        .all()
        .iter()
        .filter(|c| c.contains("deploy.sh"))
        .count();
    println!(
        "{n} {cpu} {} {wall} {} {deploys}",
        peak_rss_kb(),
        outcome.exit_code()
    );
}

fn measure(n: usize) -> Measured {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .arg(n.to_string())
        .env("RUST_LOG", "off")
        .output()
        .expect("the bench runs itself");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(
        f.len() == 6,
        "child run of {n} printed {text:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        f[5].parse::<usize>().unwrap(),
        n,
        "every instance deployed once"
    );
    Measured {
        n,
        cpu: f[1].parse().unwrap(),
        rss_kb: f[2].parse().unwrap(),
        wall: f[3].parse().unwrap(),
        code: f[4].parse().unwrap(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(args[1].parse().unwrap());
        return;
    }
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.len() < 2 {
        sizes = vec![100, 1000];
    }
    println!("fake-fleet run: scripts/rolling.rhai --var batch=50, LB waits 20 ms, ssh 50 ms, health 5 ms");
    println!(
        "{:>6}  {:>9}  {:>10}  {:>8}  exit",
        "N", "cpu s", "peak RSS", "wall s"
    );
    let runs: Vec<Measured> = sizes.iter().map(|&n| measure(n)).collect();
    for m in &runs {
        println!(
            "{:>6}  {:>9.3}  {:>7.1} MB  {:>8.2}  {}",
            m.n,
            m.cpu,
            m.rss_kb / 1024.0,
            m.wall,
            m.code
        );
    }
    let (a, b) = (&runs[0], &runs[runs.len() - 1]);
    let dn = (b.n - a.n) as f64;
    let cpu_ms = (b.cpu - a.cpu) / dn * 1000.0;
    let kb = (b.rss_kb - a.rss_kb) / dn;
    println!(
        "per instance (slope {}→{}): {cpu_ms:.2} ms CPU (target ≤ 2 ms: {}), {kb:.1} KB peak memory (target ≤ 50 KB: {})",
        a.n,
        b.n,
        if cpu_ms <= 2.0 { "met" } else { "MISSED" },
        if kb <= 50.0 { "met" } else { "MISSED" }
    );
}
