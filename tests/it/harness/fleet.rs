//! A real local fleet for the end-to-end strategy tests: N instances of
//! `demo/app.py`, each on its own 127.0.1.x address and port and reachable
//! over its own sshd ([`SshFleet`]), `demo/deploy.sh` / `demo/rollback.sh`
//! as `app.deploy` / `app.rollback`, and HAProxy or nginx in front. Plus a
//! load generator ([`Load`]) and a bounded runner for the rollscript binary
//! ([`Running`]).
//!
//! Layout of the fleet's temp dir (what `deploy.sh` expects: it finds its
//! instance by the server address of the ssh connection among
//! `<dir>/*/instance.env`):
//!
//! ```text
//! bin/{app.py,deploy.sh,rollback.sh}   copied from demo/
//! web-N/{instance.env,VERSION,app.pid,app.log}
//! lb/                                   haproxy.cfg + admin.sock, or nginx prefix
//! rollscript.toml                       written by `inventory().write(…)`
//! ```
//!
//! The load balancer never hides a careless rollout (TESTING.md): HAProxy
//! runs with `retries 0`, no `option redispatch`, `http-reuse never`; nginx
//! with `proxy_next_upstream off`. Every process is stopped by PID when the
//! fleet is dropped, whether the test passed or failed: the LB and the
//! sshd's by their [`Proc`], the apps (started detached by `deploy.sh`) by
//! the PIDs in their pid files and by scanning /proc for processes whose
//! command line names this fleet's own temp dir.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::sampler::{LbSampler, LbSource};
use super::sshd::{toml_str, SshFleet};
use super::{find_program, free_port, repo, rollscript, Proc};

/// How long the fleet may take to come up (apps booted, LB checks passed).
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbKind {
    Haproxy,
    Nginx,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub lb: LbKind,
    /// One entry per instance (`web-1`, `web-2`, …): its blue/green pool.
    pub pools: Vec<Option<String>>,
    /// This pool starts out of rotation (HAProxy `disabled` = MAINT, nginx
    /// `down`): the idle pool of a blue/green fleet.
    pub idle_pool: Option<String>,
    /// Python source used as the instances' `APP` instead of demo/app.py
    /// (it receives app.py's arguments; `REAL_APP` in it is replaced by the
    /// path of the copied app.py).
    pub app_variant: Option<String>,
    /// The path of HAProxy's own health check (`option httpchk GET …`).
    pub haproxy_check: String,
}

impl FleetSpec {
    /// `n` instances behind `lb`, no pools.
    pub fn new(lb: LbKind, n: usize) -> Self {
        Self {
            lb,
            pools: vec![None; n],
            idle_pool: None,
            app_variant: None,
            haproxy_check: "/health".into(),
        }
    }

    /// `blue` instances in pool "blue" (live) and `green` in pool "green"
    /// (idle: out of rotation at start).
    pub fn blue_green(lb: LbKind, blue: usize, green: usize) -> Self {
        let mut pools = vec![Some("blue".to_string()); blue];
        pools.extend(vec![Some("green".to_string()); green]);
        Self {
            lb,
            pools,
            idle_pool: Some("green".into()),
            app_variant: None,
            haproxy_check: "/health".into(),
        }
    }

    pub fn app_variant(mut self, python: &str) -> Self {
        self.app_variant = Some(python.to_string());
        self
    }

    /// HAProxy checks the servers on `path` instead of `/health`.
    pub fn haproxy_check(mut self, path: &str) -> Self {
        self.haproxy_check = path.to_string();
        self
    }

    pub fn start(self) -> Fleet {
        Fleet::start(self)
    }
}

/// One app instance.
#[derive(Debug, Clone)]
pub struct AppInstance {
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub ssh_port: u16,
    pub pool: Option<String>,
    /// `<fleet>/web-N`: VERSION, PREVIOUS_VERSION, app.pid, app.log.
    pub dir: PathBuf,
}

impl AppInstance {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// The load balancer in front of the fleet.
pub enum Lb {
    Haproxy(FleetHaproxy),
    Nginx(FleetNginx),
}

pub struct Fleet {
    pub spec: FleetSpec,
    pub dir: TempDir,
    pub instances: Vec<AppInstance>,
    pub lb: Lb,
    pub ssh: SshFleet,
}

impl Fleet {
    fn start(spec: FleetSpec) -> Fleet {
        let n = spec.pools.len();
        let ssh = SshFleet::start(n);
        let dir = tempfile::Builder::new()
            .prefix("rs-fleet-")
            .tempdir()
            .unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        for f in ["app.py", "deploy.sh", "rollback.sh"] {
            let to = bin.join(f);
            fs::copy(repo().join("demo").join(f), &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let app = match &spec.app_variant {
            None => bin.join("app.py"),
            Some(src) => {
                let p = bin.join("app_variant.py");
                let src = src.replace("REAL_APP", &bin.join("app.py").display().to_string());
                fs::write(&p, src).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
                p
            }
        };
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".to_string()
        } else {
            "python3".to_string()
        };
        let instances: Vec<AppInstance> = ssh
            .hosts
            .iter()
            .zip(&spec.pools)
            .enumerate()
            .map(|(i, (host, pool))| {
                let name = format!("web-{}", i + 1);
                let idir = dir.path().join(&name);
                fs::create_dir_all(&idir).unwrap();
                let port = free_port(&host.ip);
                fs::write(
                    idir.join("instance.env"),
                    format!(
                        "NAME={name}\nADDR={}\nPORT={port}\nPYTHON={python}\nAPP={}\nBOOT_DELAY=0.5\n",
                        host.ip,
                        app.display()
                    ),
                )
                .unwrap();
                AppInstance {
                    name,
                    ip: host.ip.clone(),
                    port,
                    ssh_port: host.port,
                    pool: pool.clone(),
                    dir: idir,
                }
            })
            .collect();

        // The fleet is half-built from here: a Fleet owns it, so a failure
        // below still stops every app started so far.
        let lb_dir = dir.path().join("lb");
        fs::create_dir_all(&lb_dir).unwrap();
        let mut fleet = Fleet {
            lb: Lb::Haproxy(FleetHaproxy::placeholder()),
            spec,
            dir,
            instances,
            ssh,
        };
        // v1 everywhere, started by the same deploy.sh rollscript will run.
        for inst in &fleet.instances {
            let out = Command::new(bin.join("deploy.sh"))
                .arg("v1")
                .env("DEMO_INSTANCE_DIR", &inst.dir)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "deploy.sh v1 on {} failed: {}{}",
                inst.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for inst in &fleet.instances {
            wait_until(&format!("{} healthy", inst.name), START_TIMEOUT, || {
                http_get(&inst.addr(), "/health").is_ok_and(|r| r.status == 200)
            });
        }
        let idle = |i: &AppInstance| {
            fleet.spec.idle_pool.is_some() && i.pool.as_deref() == fleet.spec.idle_pool.as_deref()
        };
        let servers: Vec<(String, String, bool)> = fleet
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.addr(), idle(i)))
            .collect();
        fleet.lb = match fleet.spec.lb {
            LbKind::Haproxy => Lb::Haproxy(FleetHaproxy::start(
                &lb_dir,
                &servers,
                &fleet.spec.haproxy_check,
            )),
            LbKind::Nginx => Lb::Nginx(FleetNginx::start(&lb_dir, &servers)),
        };
        fleet
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.path().join("bin").join(name)
    }

    pub fn instance(&self, name: &str) -> &AppInstance {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
    }

    pub fn names(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.name.clone()).collect()
    }

    /// The address clients use: the load balancer's frontend.
    pub fn lb_addr(&self) -> SocketAddr {
        let port = match &self.lb {
            Lb::Haproxy(h) => h.port,
            Lb::Nginx(n) => n.port,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn haproxy(&self) -> &FleetHaproxy {
        match &self.lb {
            Lb::Haproxy(h) => h,
            Lb::Nginx(_) => panic!("this fleet runs nginx, not HAProxy"),
        }
    }

    pub fn nginx(&self) -> &FleetNginx {
        match &self.lb {
            Lb::Nginx(n) => n,
            Lb::Haproxy(_) => panic!("this fleet runs HAProxy, not nginx"),
        }
    }

    /// The version `name` serves, asked directly (GET / on the app, not
    /// through the LB); the status and body when it does not answer 200.
    pub fn version(&self, name: &str) -> String {
        let inst = self.instance(name);
        match http_get(&inst.addr(), "/") {
            Ok(r) if r.status == 200 => r
                .body
                .trim()
                .strip_prefix("version=")
                .unwrap_or(r.body.trim())
                .to_string(),
            Ok(r) => format!("HTTP {} {}", r.status, r.body.trim()),
            Err(e) => format!("unreachable: {e}"),
        }
    }

    /// Every instance's version: `[(name, version)]`.
    pub fn versions(&self) -> Vec<(String, String)> {
        self.instances
            .iter()
            .map(|i| (i.name.clone(), self.version(&i.name)))
            .collect()
    }

    /// Every instance's state in the LB: HAProxy's `show stat` status
    /// (`UP`, `MAINT`, `DRAIN`, …), nginx's `up` / `down` from the upstream file.
    pub fn lb_states(&self) -> Vec<(String, String)> {
        match &self.lb {
            Lb::Haproxy(h) => self
                .instances
                .iter()
                .map(|i| (i.name.clone(), h.status(&i.name)))
                .collect(),
            Lb::Nginx(n) => {
                let servers = n.servers();
                self.instances
                    .iter()
                    .map(|i| {
                        let state = servers
                            .iter()
                            .find(|(addr, _)| *addr == i.addr())
                            .map(|(_, down)| if *down { "down" } else { "up" })
                            .unwrap_or("missing");
                        (i.name.clone(), state.to_string())
                    })
                    .collect()
            }
        }
    }

    /// Every instance's LB weight: HAProxy's `show stat` weight, nginx's
    /// `weight=` in the upstream file (1, nginx's default, when absent).
    pub fn weights(&self) -> Vec<(String, u32)> {
        match &self.lb {
            Lb::Haproxy(h) => {
                let stats = h.stats();
                self.instances
                    .iter()
                    .map(|i| {
                        let w = stats
                            .get(&i.name)
                            .and_then(|row| row.get("weight"))
                            .and_then(|w| w.parse().ok())
                            .unwrap_or_else(|| panic!("no weight for {} in `show stat`", i.name));
                        (i.name.clone(), w)
                    })
                    .collect()
            }
            Lb::Nginx(n) => {
                let text = n.upstream();
                self.instances
                    .iter()
                    .map(|i| {
                        let line = text
                            .lines()
                            .map(|l| l.split('#').next().unwrap_or_default().trim())
                            .find(|l| {
                                l.strip_prefix("server ")
                                    .and_then(|r| r.split_whitespace().next())
                                    .map(|a| a.trim_end_matches(';'))
                                    == Some(i.addr().as_str())
                            })
                            .unwrap_or_else(|| {
                                panic!("no server {} in the upstream file:\n{text}", i.addr())
                            });
                        let w = line
                            .trim_end_matches(';')
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("weight="))
                            .map_or(1, |w| w.parse().unwrap());
                        (i.name.clone(), w)
                    })
                    .collect()
            }
        }
    }

    /// Where an [`LbSampler`] reads this fleet's LB.
    pub fn lb_source(&self) -> LbSource {
        match &self.lb {
            Lb::Haproxy(h) => LbSource::Haproxy {
                socket: h.socket.clone(),
                backend: h.backend.clone(),
            },
            Lb::Nginx(n) => LbSource::Nginx {
                upstream_file: n.upstream_file.clone(),
            },
        }
    }

    /// Starts sampling the LB every 10 ms (until the sampler is stopped).
    pub fn sampler(&self) -> LbSampler {
        LbSampler::start(self.lb_source())
    }

    /// Stops `name`'s app (SIGTERM, by the PID in its app.pid) and waits
    /// until it is gone: the instance stays in rotation, its health fails.
    pub fn stop_app(&self, name: &str) {
        let pid = self
            .app_pid(name)
            .unwrap_or_else(|| panic!("{name} has no app running"));
        stop_pids(&[pid], Duration::from_secs(5));
        wait_until(&format!("{name}'s app to exit"), START_TIMEOUT, || {
            !alive(pid)
        });
    }

    /// The run journals beside `inventory` (`.rollscript/runs/*.jsonl`), oldest first.
    pub fn journals(inventory: &Path) -> Vec<PathBuf> {
        let dir = inventory
            .parent()
            .unwrap_or(Path::new("."))
            .join(".rollscript/runs");
        let mut v: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        v.sort();
        v
    }

    /// The PID in `name`'s app.pid (the running app process).
    pub fn app_pid(&self, name: &str) -> Option<u32> {
        fs::read_to_string(self.instance(name).dir.join("app.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// An inventory for this fleet (every instance), to adjust and write.
    pub fn inventory(&self) -> FleetInventory {
        FleetInventory {
            deploy: self.bin("deploy.sh").display().to_string(),
            rollback: self.bin("rollback.sh").display().to_string(),
            migrate: None,
            database: None,
            min_in_service: None,
            only: None,
            lb: match &self.lb {
                Lb::Haproxy(h) => format!(
                    "kind = \"haproxy\"\nsocket = {}\nbackend = \"{}\"\n",
                    toml_str(&h.socket.display().to_string()),
                    h.backend
                ),
                Lb::Nginx(n) => format!(
                    "kind = \"nginx\"\nupstream_file = {}\nupstream = \"backend\"\ntest_command = {}\nreload_command = {}\n",
                    toml_str(&n.upstream_file.display().to_string()),
                    toml_str(&n.test_command),
                    toml_str(&n.reload_command)
                ),
            },
            pool_key: match self.spec.lb {
                LbKind::Haproxy => format!("backend = \"{}\"", HAPROXY_BACKEND),
                LbKind::Nginx => "upstream = \"backend\"".to_string(),
            },
            ssh: format!(
                "user = \"root\"\nidentity = {}\nknown_hosts = {}\nconfig = {}\nconnect_timeout = \"5s\"\ncommand_timeout = \"60s\"\n",
                toml_str(&self.ssh.client_key.display().to_string()),
                toml_str(&self.ssh.known_hosts.display().to_string()),
                toml_str(&self.ssh.ssh_config.display().to_string()),
            ),
            instances: self.instances.clone(),
            overrides: Vec::new(),
            instance_overrides: Vec::new(),
        }
    }

    /// Stops every app process of this fleet: those in the pid files and any
    /// other process whose command line names this fleet's dir (an app a
    /// deploy was starting, a deploy.sh, a rollscript run on its inventory).
    fn stop_apps(&self) {
        let mut pids: Vec<u32> = self
            .instances
            .iter()
            .filter_map(|i| self.app_pid(&i.name))
            .collect();
        pids.extend(pids_naming(self.dir.path()));
        pids.sort_unstable();
        pids.dedup();
        let me = std::process::id();
        pids.retain(|p| *p != me && alive(*p));
        stop_pids(&pids, Duration::from_secs(5));
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Apps first (they are not children of any Proc); the LB and the
        // sshd's then stop with their own Proc.
        self.stop_apps();
    }
}

/// PIDs of live processes whose command line contains `dir` (this fleet's
/// unique temp dir, so only processes the test started match).
fn pids_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(pid)
        })
        .collect()
}

/// Running and not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// SIGTERM each PID, wait up to `grace` for all, then SIGKILL the rest.
fn stop_pids(pids: &[u32], grace: Duration) {
    for &p in pids {
        // SAFETY: kill(2) on a PID verified above to be one of ours.
        unsafe {
            libc::kill(p as i32, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in pids.iter().filter(|p| alive(**p)) {
        // SAFETY: as above.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
}

// ---- the inventory ------------------------------------------------------------------

/// Inventory text for a fleet; every path absolute, so it can be written
/// anywhere (two runs need two directories: the deploy lock and the
/// journal live beside the inventory).
#[derive(Clone)]
pub struct FleetInventory {
    deploy: String,
    rollback: String,
    migrate: Option<String>,
    database: Option<String>,
    min_in_service: Option<usize>,
    only: Option<Vec<String>>,
    lb: String,
    pool_key: String,
    ssh: String,
    instances: Vec<AppInstance>,
    /// `(section, key, TOML value)` set over what the fleet would write.
    overrides: Vec<(String, String, String)>,
    /// `(instance, key, TOML value)` set over its `[[instances]]` entry.
    instance_overrides: Vec<(String, String, String)>,
}

impl FleetInventory {
    /// `app.deploy` (default: the fleet's bin/deploy.sh).
    pub fn deploy(mut self, cmd: &str) -> Self {
        self.deploy = cmd.to_string();
        self
    }

    pub fn migrate(mut self, cmd: &str) -> Self {
        self.migrate = Some(cmd.to_string());
        self
    }

    /// `[database] url = …`
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_string());
        self
    }

    /// `lb.min_in_service` (default: all but one of the inventory's instances,
    /// at least 1).
    pub fn min_in_service(mut self, n: usize) -> Self {
        self.min_in_service = Some(n);
        self
    }

    /// `app.rollback` (default: the fleet's bin/rollback.sh).
    pub fn rollback(mut self, cmd: &str) -> Self {
        self.rollback = cmd.to_string();
        self
    }

    /// Sets `key = value` (`value` is TOML: `"\"x\""`, `"3"`) in `[section]`
    /// (`app`, `ssh`, `lb`), replacing what the fleet would write there.
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        self.overrides
            .push((section.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// Sets `key = value` (TOML) in instance `name`'s `[[instances]]` entry.
    pub fn set_instance(mut self, name: &str, key: &str, value: &str) -> Self {
        self.instance_overrides
            .push((name.to_string(), key.to_string(), value.to_string()));
        self
    }

    /// Only these instances.
    pub fn only(mut self, names: &[&str]) -> Self {
        self.only = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    fn selected(&self) -> Vec<&AppInstance> {
        self.instances
            .iter()
            .filter(|i| self.only.as_ref().is_none_or(|o| o.contains(&i.name)))
            .collect()
    }

    /// The keys of `[section]`: `body` (`key = value` lines) with this
    /// inventory's overrides for that section applied.
    fn section(&self, section: &str, body: &str) -> String {
        let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
        for (sec, key, value) in &self.overrides {
            if sec != section {
                continue;
            }
            let line = format!("{key} = {value}");
            let prefix = format!("{key} =");
            match lines.iter_mut().find(|l| l.starts_with(&prefix)) {
                Some(l) => *l = line,
                None => lines.push(line),
            }
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out
    }

    pub fn text(&self) -> String {
        let selected = self.selected();
        let mut app = format!(
            "name = \"fleet\"\ndeploy = {}\nrollback = {}\n",
            toml_str(&self.deploy),
            toml_str(&self.rollback)
        );
        if let Some(m) = &self.migrate {
            app.push_str(&format!(
                "migrate = {}\nmigrate_timeout = \"60s\"\n",
                toml_str(m)
            ));
        }
        let mut t = format!(
            "# Written by tests/it/harness/fleet.rs\n[app]\n{}",
            self.section("app", &app)
        );
        t.push_str(&format!("\n[ssh]\n{}\n", self.section("ssh", &self.ssh)));
        t.push_str(
            "[health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nretries = 30\nhealthy_threshold = 2\n\n",
        );
        let min = self
            .min_in_service
            .unwrap_or_else(|| selected.len().saturating_sub(1).max(1));
        let lb = format!(
            "{}drain_timeout = \"30s\"\nregister_timeout = \"30s\"\nmin_in_service = {min}\n",
            self.lb
        );
        t.push_str(&format!("[lb]\n{}\n", self.section("lb", &lb)));
        let mut pools: Vec<&str> = selected.iter().filter_map(|i| i.pool.as_deref()).collect();
        pools.sort_unstable();
        pools.dedup();
        for p in pools {
            t.push_str(&format!("[lb.pools.{p}]\n{}\n\n", self.pool_key));
        }
        if let Some(url) = &self.database {
            t.push_str(&format!("[database]\nurl = {}\n\n", toml_str(url)));
        }
        for i in selected {
            let mut entry = vec![
                ("name".to_string(), format!("\"{}\"", i.name)),
                ("host".to_string(), format!("\"{}\"", i.ip)),
                ("ssh_port".to_string(), i.ssh_port.to_string()),
                ("port".to_string(), i.port.to_string()),
            ];
            if let Some(p) = &i.pool {
                entry.push(("pool".to_string(), format!("\"{p}\"")));
            }
            for (name, key, value) in &self.instance_overrides {
                if *name != i.name {
                    continue;
                }
                match entry.iter_mut().find(|(k, _)| k == key) {
                    Some(kv) => kv.1 = value.clone(),
                    None => entry.push((key.clone(), value.clone())),
                }
            }
            t.push_str("[[instances]]\n");
            for (k, v) in entry {
                t.push_str(&format!("{k} = {v}\n"));
            }
            t.push('\n');
        }
        t
    }

    /// Writes the inventory to `path` (creating its folder) and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, self.text()).unwrap();
        path.to_path_buf()
    }
}

// ---- HAProxy --------------------------------------------------------------------------

const HAPROXY_BACKEND: &str = "web";

/// HAProxy in front of the fleet: servers named like the instances, on
/// their 127.0.1.x addresses; fast `option httpchk GET /health` checks.
pub struct FleetHaproxy {
    pub port: u16,
    pub socket: PathBuf,
    /// The same runtime API on TCP, `127.0.0.1:PORT` (admin level).
    pub api_addr: String,
    pub backend: String,
    pub log: PathBuf,
    proc: Option<Proc>,
}

impl FleetHaproxy {
    fn placeholder() -> Self {
        Self {
            port: 0,
            socket: PathBuf::new(),
            api_addr: String::new(),
            backend: String::new(),
            log: PathBuf::new(),
            proc: None,
        }
    }

    /// `servers`: (name, ip:port, starts in maintenance); HAProxy checks
    /// them with `GET check_path`.
    fn start(dir: &Path, servers: &[(String, String, bool)], check_path: &str) -> Self {
        let haproxy = find_program("haproxy").expect("haproxy is installed (tools/setup)");
        let socket = dir.join("admin.sock");
        let log = dir.join("haproxy.log");
        // A port free now may be taken by a concurrent test before HAProxy
        // binds it: HAProxy then exits, and we try another.
        for _ in 0..5 {
            let port = free_port("127.0.0.1");
            let api_addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
            let mut cfg = format!(
                "# retries 0, no `option redispatch`, no connection reuse: a request\n\
                 # sent to an instance going away fails visibly instead of being retried.\n\
                 global\n\
                 \x20   stats socket {sock} mode 600 level admin\n\
                 \x20   stats socket ipv4@{api_addr} level admin\n\
                 \x20   maxconn 2000\n\
                 \x20   log stdout format short local0 info\n\
                 defaults\n\
                 \x20   mode http\n\
                 \x20   log global\n\
                 \x20   option httplog\n\
                 \x20   timeout connect 2s\n\
                 \x20   timeout client 30s\n\
                 \x20   timeout server 30s\n\
                 \x20   retries 0\n\
                 frontend fe\n\
                 \x20   bind 127.0.0.1:{port}\n\
                 \x20   default_backend {HAPROXY_BACKEND}\n\
                 backend {HAPROXY_BACKEND}\n\
                 \x20   balance roundrobin\n\
                 \x20   retries 0\n\
                 \x20   http-reuse never\n\
                 \x20   option httpchk GET {check_path}\n\
                 \x20   default-server check inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2\n",
                sock = socket.display(),
            );
            for (name, addr, maint) in servers {
                let disabled = if *maint { " disabled" } else { "" };
                cfg.push_str(&format!("    server {name} {addr}{disabled}\n"));
            }
            let cfg_path = dir.join("haproxy.cfg");
            fs::write(&cfg_path, &cfg).unwrap();
            let _ = fs::remove_file(&socket);
            let out = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let mut proc = Proc::spawn(
                "haproxy",
                Command::new(&haproxy)
                    .arg("-db")
                    .arg("-f")
                    .arg(&cfg_path)
                    .stdout(out.try_clone().unwrap())
                    .stderr(out),
            );
            let mut h = Self {
                port,
                socket: socket.clone(),
                api_addr,
                backend: HAPROXY_BACKEND.to_string(),
                log: log.clone(),
                proc: None,
            };
            // HAProxy answers on its socket once every listener is bound.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            while h.try_cmd("show info").is_err() {
                if let Ok(Some(_)) = proc.child.try_wait() {
                    exited = true;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not start:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            if exited {
                continue;
            }
            h.proc = Some(proc);
            for (name, _, maint) in servers {
                let want = if *maint { "MAINT" } else { "UP" };
                wait_until(
                    &format!("haproxy server {name} to be {want}"),
                    START_TIMEOUT,
                    || h.status(name) == want,
                );
            }
            return h;
        }
        panic!(
            "haproxy did not start in 5 attempts:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// One runtime-API command; the reply, trimmed.
    pub fn cmd(&self, line: &str) -> String {
        self.try_cmd(line)
            .unwrap_or_else(|e| panic!("haproxy admin socket, `{line}`: {e}"))
    }

    fn try_cmd(&self, line: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    }

    /// `show stat` of the backend: server name → field → value.
    pub fn stats(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let csv = self.cmd(&format!("show stat {} 4 -1", self.backend));
        let mut lines = csv.lines();
        let header: Vec<String> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("`show stat` is not CSV: {csv}"))
            .split(',')
            .map(str::to_string)
            .collect();
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let fields: BTreeMap<String, String> = header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_string))
                    .collect();
                (fields["svname"].clone(), fields)
            })
            .collect()
    }

    /// `show stat` field `field` (`status`, `hrsp_5xx`, `stot`, …) of `server`.
    pub fn stat(&self, server: &str, field: &str) -> String {
        let stats = self.stats();
        let row = stats
            .get(server)
            .unwrap_or_else(|| panic!("no server {server} in backend {}", self.backend));
        row.get(field)
            .unwrap_or_else(|| panic!("no field {field} in `show stat`"))
            .clone()
    }

    pub fn status(&self, server: &str) -> String {
        self.stat(server, "status")
    }

    /// Waits until `server`'s status is `want`.
    pub fn wait_status(&self, server: &str, want: &str, timeout: Duration) {
        wait_until(
            &format!("haproxy server {server} to be {want}"),
            timeout,
            || self.status(server) == want,
        );
    }

    /// A numeric `show stat` field.
    pub fn counter(&self, server: &str, field: &str) -> u64 {
        self.stat(server, field).parse().unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

// ---- nginx ----------------------------------------------------------------------------

/// nginx in front of the fleet with its own prefix; the upstream block in
/// `upstream.conf` (the include rollscript owns), `proxy_next_upstream off`.
pub struct FleetNginx {
    pub port: u16,
    pub upstream_file: PathBuf,
    pub test_command: String,
    pub reload_command: String,
    pub dir: PathBuf,
    proc: Proc,
}

impl FleetNginx {
    fn start(dir: &Path, servers: &[(String, String, bool)]) -> Self {
        let nginx = find_program("nginx").expect("nginx is installed (tools/setup)");
        let d = dir.display().to_string();
        let upstream_file = dir.join("upstream.conf");
        let mut up = String::from("upstream backend {\n");
        for (_, addr, down) in servers {
            let down = if *down { " down" } else { "" };
            up.push_str(&format!("    server {addr}{down};\n"));
        }
        up.push_str("}\n");
        fs::write(&upstream_file, up).unwrap();
        let base = format!(
            "{} -p {d}/ -c {d}/nginx.conf -e {d}/error.log",
            nginx.display()
        );
        for _ in 0..5 {
            let port = free_port("127.0.0.1");
            let conf = format!(
                "daemon off;\n\
                 worker_processes 1;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n\
                 \x20   access_log {d}/access.log;\n\
                 \x20   client_body_temp_path {d}/client_temp;\n\
                 \x20   proxy_temp_path {d}/proxy_temp;\n\
                 \x20   fastcgi_temp_path {d}/fastcgi_temp;\n\
                 \x20   uwsgi_temp_path {d}/uwsgi_temp;\n\
                 \x20   scgi_temp_path {d}/scgi_temp;\n\
                 \x20   include {d}/upstream.conf;\n\
                 \x20   server {{\n\
                 \x20       listen 127.0.0.1:{port};\n\
                 \x20       location / {{\n\
                 \x20           proxy_pass http://backend;\n\
                 \x20           # A request sent to a server going away fails: no retry hides it.\n\
                 \x20           proxy_next_upstream off;\n\
                 \x20           proxy_read_timeout 30s;\n\
                 \x20       }}\n\
                 \x20   }}\n\
                 }}\n"
            );
            fs::write(dir.join("nginx.conf"), conf).unwrap();
            let log = fs::File::create(dir.join("stderr.log")).unwrap();
            let mut proc = Proc::spawn(
                "nginx",
                Command::new(&nginx)
                    .args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
                    .args(["-e", &format!("{d}/error.log")])
                    .stdout(log.try_clone().unwrap())
                    .stderr(log),
            );
            // The master binds before it forks its worker: a worker (and a
            // listener) means the port is ours.
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut exited = false;
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(_)) = proc.child.try_wait() {
                    exited = true;
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not start:\n{}",
                    fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            if exited {
                continue;
            }
            let n = Self {
                port,
                upstream_file: upstream_file.clone(),
                test_command: format!("{base} -t"),
                reload_command: format!("{base} -s reload"),
                dir: dir.to_path_buf(),
                proc,
            };
            wait_until("nginx to proxy to the fleet", START_TIMEOUT, || {
                http_get(&format!("127.0.0.1:{port}"), "/").is_ok_and(|r| r.status == 200)
            });
            return n;
        }
        panic!("nginx did not start in 5 attempts");
    }

    pub fn master(&self) -> u32 {
        self.proc.pid()
    }

    pub fn upstream(&self) -> String {
        fs::read_to_string(&self.upstream_file).unwrap()
    }

    /// The upstream's servers: (address, marked down).
    pub fn servers(&self) -> Vec<(String, bool)> {
        self.upstream()
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter_map(|l| l.strip_prefix("server "))
            .map(|rest| {
                let words: Vec<&str> = rest.trim_end_matches(';').split_whitespace().collect();
                (words[0].to_string(), words.contains(&"down"))
            })
            .collect()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Marks the server at `addr` down in the upstream file, as an operator
    /// would, and reloads nginx (test, then reload).
    pub fn mark_down(&self, addr: &str) {
        let text = self.upstream();
        let line = format!("server {addr};");
        assert!(text.contains(&line), "no {line} in:\n{text}");
        fs::write(
            &self.upstream_file,
            text.replace(&line, &format!("server {addr} down;")),
        )
        .unwrap();
        for cmd in [&self.test_command, &self.reload_command] {
            let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

// ---- HTTP -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// One GET on a fresh connection to `addr` (`ip:port`), bounded by 10 s.
pub fn http_get(addr: &str, path: &str) -> Result<Response, String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    assert!(
        sock.ip().is_loopback(),
        "tests talk to loopback only: {addr}"
    );
    let mut conn = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let limit = Some(Duration::from_secs(10));
    conn.set_read_timeout(limit).map_err(|e| e.to_string())?;
    conn.set_write_timeout(limit).map_err(|e| e.to_string())?;
    let _ = conn.set_nodelay(true);
    conn.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rollscript-it\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let (status, body) = super::backend::parse_response(&raw)?;
    Ok(Response { status, body })
}

/// Polls `cond` every 20 ms until it holds, or panics naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- load -------------------------------------------------------------------------------

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    pub took: Duration,
    pub path: String,
    /// The version that answered, or why the request failed
    /// (`http 503: booting`, `read: Connection reset by peer`, …).
    pub outcome: Result<String, String>,
}

/// Steady traffic through the LB: `rate` requests a second, one request per
/// connection (TESTING.md: a reused connection an nginx reload closes would
/// be a failure that says nothing about the deploy), one in four a
/// `GET /slow?ms=200` so every drain has open sessions to wait for. A
/// request succeeds on 200 with a `version=` body. Bounded: stops after
/// `max` even if nobody calls [`Load::stop`], and on drop.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    dispatcher: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, rate: u32, max: Duration) -> Load {
        assert!(
            addr.ip().is_loopback(),
            "load goes to loopback only: {addr}"
        );
        assert!((1..=500).contains(&rate), "rate {rate} out of bounds");
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, st) = (stop.clone(), samples.clone());
        let dispatcher = std::thread::spawn(move || {
            let interval = Duration::from_secs(1) / rate;
            let mut workers = Vec::new();
            let mut sent: u32 = 0;
            while !s.load(Ordering::SeqCst) && started.elapsed() < max {
                let due = started + interval * sent;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep((due - now).min(Duration::from_millis(50)));
                    continue;
                }
                let path = if sent % 4 == 3 { "/slow?ms=200" } else { "/" };
                let st = st.clone();
                let at = started.elapsed();
                workers.push(std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let outcome = match http_get(&addr.to_string(), path) {
                        Ok(r) if r.status == 200 => match r.body.trim().strip_prefix("version=") {
                            Some(v) => Ok(v.to_string()),
                            None => Err(format!("unexpected body {:?}", r.body.trim())),
                        },
                        Ok(r) => Err(format!("http {}: {}", r.status, one_line(&r.body))),
                        Err(e) => Err(e),
                    };
                    st.lock().unwrap().push(Sample {
                        at,
                        took: t0.elapsed(),
                        path: path.to_string(),
                        outcome,
                    });
                }));
                workers.retain(|w| !w.is_finished());
                sent += 1;
            }
            workers
        });
        Load {
            started,
            stop,
            samples,
            dispatcher: Some(dispatcher),
        }
    }

    /// Time since the load started (to mark when a run began and ended).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops sending, waits for the requests in flight, returns every sample.
    pub fn stop(mut self) -> LoadReport {
        self.finish()
    }

    fn finish(&mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.dispatcher.take() {
            for w in d.join().unwrap_or_default() {
                let _ = w.join();
            }
        }
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        samples.sort_by_key(|s| s.at);
        LoadReport { samples }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A body on one line, at most 160 characters (HAProxy's and nginx's error
/// pages are several lines of HTML).
fn one_line(body: &str) -> String {
    let flat = body.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(160).collect()
}

/// What the load saw.
pub struct LoadReport {
    pub samples: Vec<Sample>,
}

impl LoadReport {
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    pub fn ok(&self) -> usize {
        self.samples.iter().filter(|s| s.outcome.is_ok()).count()
    }

    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome.is_err()).collect()
    }

    /// Successful answers per version.
    pub fn versions(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &self.samples {
            if let Ok(v) = &s.outcome {
                *m.entry(v.clone()).or_default() += 1;
            }
        }
        m
    }

    /// Successful answers per version among requests sent in `[from, to)`.
    pub fn versions_between(&self, from: Duration, to: Duration) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.at >= from && s.at < to) {
            if let Ok(v) = &s.outcome {
                *m.entry(v.clone()).or_default() += 1;
            }
        }
        m
    }

    /// Requests sent in `[from, to)`.
    pub fn sent_between(&self, from: Duration, to: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .count()
    }

    /// Failures by reason (the reason's first words, before any body).
    pub fn reasons(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.failures() {
            let r = s.outcome.as_ref().unwrap_err();
            let key = r.split(':').next().unwrap_or(r).to_string();
            *m.entry(key).or_default() += 1;
        }
        m
    }

    /// One line for assertion messages, with the first failures and when
    /// they were sent (to line up with rollscript's and the LB's logs).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} sent, {} ok, {} failed; versions {:?}; failures {:?}",
            self.sent(),
            self.ok(),
            self.failures().len(),
            self.versions(),
            self.reasons()
        );
        for f in self.failures().iter().take(10) {
            s.push_str(&format!(
                "\n  at {:.3}s {} (took {:.3}s): {}",
                f.at.as_secs_f64(),
                f.path,
                f.took.as_secs_f64(),
                f.outcome.as_ref().unwrap_err()
            ));
        }
        s
    }
}

// ---- rollscript --------------------------------------------------------------------------

/// A rollscript run in progress; killed (by PID) if dropped unfinished.
pub struct Running {
    pub args: Vec<String>,
    child: Option<Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    started: Instant,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    pub args: Vec<String>,
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Finished {
    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "rollscript {}\nexit {:?} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

impl Running {
    /// Starts the rollscript binary with `args` in the repository root.
    pub fn start(args: &[&str]) -> Running {
        let mut child = rollscript()
            .args(args)
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the rollscript binary runs");
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        Running {
            args: args.iter().map(|s| s.to_string()).collect(),
            child: Some(child),
            out: Some(out),
            err: Some(err),
            started: Instant::now(),
        }
    }

    /// Whether it has exited.
    pub fn done(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for the exit, at most `timeout` (then kills it and panics).
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = self.started + timeout;
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = self.err.take().unwrap().join().unwrap_or_default();
                panic!(
                    "rollscript {} did not finish within {timeout:?}; stderr:\n{stderr}",
                    self.args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Finished {
            args: std::mem::take(&mut self.args),
            code: status.code(),
            stdout: self.out.take().unwrap().join().unwrap_or_default(),
            stderr: self.err.take().unwrap().join().unwrap_or_default(),
            took: self.started.elapsed(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Runs rollscript with `args` to the end (at most 3 minutes).
pub fn run_rollscript(args: &[&str]) -> Finished {
    Running::start(args).wait(Duration::from_secs(180))
}
