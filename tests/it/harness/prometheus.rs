//! A real Prometheus (Debian's `prometheus`) on 127.0.0.1 scraping the fleet's
//! apps (`/metrics` of demo/app.py) every second, for canary gates. Its own
//! prefix (config, TSDB) in a temp dir; stopped by PID when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{find_program, free_port, http, wait_until, Proc};

pub struct Prometheus {
    pub port: u16,
    pub proc: Proc,
    _dir: TempDir,
    log: PathBuf,
}

impl Prometheus {
    /// Scrapes `targets` (`host:port`) every second; returns once it answers.
    pub fn start(targets: &[String]) -> Prometheus {
        let bin = find_program("prometheus")
            .expect("prometheus is not installed: run tools/setup (Debian package `prometheus`)");
        let dir = tempfile::Builder::new()
            .prefix("rs-prom-")
            .tempdir()
            .unwrap();
        let port = free_port("127.0.0.1");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: app\n    scrape_timeout: 900ms\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let proc = Proc::spawn(
            "prometheus",
            Command::new(bin)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle")
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out)),
        );
        let p = Prometheus {
            port,
            proc,
            _dir: dir,
            log,
        };
        wait_until("prometheus to answer", Duration::from_secs(30), || {
            http::get(format!("127.0.0.1:{port}").as_str(), "/-/ready")
                .is_ok_and(|(status, _)| status == 200)
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until every target has been scraped up (`up == 1`) at least once.
    pub fn wait_scraping(&self, n: usize) {
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(
            "prometheus to scrape every app",
            Duration::from_secs(30),
            || {
                http::get(addr.as_str(), "/api/v1/query?query=sum(up)")
                    .is_ok_and(|(_, body)| body.contains(&format!("\"{n}\"]")))
            },
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
