//! The one test fleet: `n` instances of `demo/app.py`, each "host" an sshd
//! on its own 127.0.1.x address with the app bound to the same address
//! ([`SshFleet`]), `demo/deploy.sh` / `demo/rollback.sh` as `app.deploy` /
//! `app.rollback`, and HAProxy or nginx in front ([`Haproxy`], [`Nginx`]).
//! Options: blue/green pools, an app variant, HAProxy's check path. Around
//! it: the inventory ([`FleetInventory`]), deploy faults (a wrapper with
//! control files, an sshd or HAProxy stopped mid-run, an app stopped), load
//! ([`Fleet::load`]), the LB sampler ([`Fleet::sampler`]), and rollscript
//! runs against the fleet's own inventory.
//!
//! Layout of the fleet's temp dir (what `deploy.sh` expects: it finds its
//! instance by the server address of the ssh connection among
//! `<dir>/*/instance.env`):
//!
//! ```text
//! bin/{app.py,deploy.sh,rollback.sh}   copied from demo/ (+ test wrappers)
//! ctl/                                  control files wrappers wait on
//! web-N/{instance.env,VERSION,app.pid,app.log}
//! lb/                                   haproxy.cfg + admin.sock, or nginx prefix
//! rollscript.toml                       the default inventory (`.rollscript/` beside it)
//! ```
//!
//! The load balancer never hides a careless rollout (TESTING.md): HAProxy
//! runs with `retries 0`, no `option redispatch`, `http-reuse never`; nginx
//! with `proxy_next_upstream off`. Every process is stopped by PID when the
//! fleet is dropped, whether the test passed or failed: wrappers are told to
//! give up, the LB and each sshd (with its connections and the commands
//! under them) by their handles, then every process whose command line
//! names this fleet's own temp dir (the apps, detached by deploy.sh).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::haproxy::{Haproxy, Server};
use super::http::get;
pub use super::inventory::FleetInventory;
use super::journal::{journals_beside, only_journal, Journal};
use super::load::Load;
use super::nginx::Nginx;
use super::run::{Finished, Running};
use super::sampler::{LbSampler, LbSource};
use super::sshd::{toml_str, SshFleet};
use super::{alive, free_port, pids_naming, repo, rollscript, stop_pids, wait_until};

/// How long the fleet may take to come up (apps booted, LB checks passed).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The Python the apps run on: Debian's own, not a pyenv shim (each shim
/// call costs a fraction of a second).
const PYTHON: &str = "/usr/bin/python3";
/// The HAProxy backend (and nginx upstream) holding the fleet.
pub const BACKEND: &str = "web";
/// [`Fleet::load`]: requests a second, and the bound on how long it runs.
const LOAD_RATE: u32 = 50;
const LOAD_MAX: Duration = Duration::from_secs(180);

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
    /// A second HAProxy (`lb2/`) in front of the same servers: an HAProxy
    /// pair, written to the inventory as two `[[lb]]` entries.
    pub haproxy_pair: bool,
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
            haproxy_pair: false,
        }
    }

    /// Two HAProxy processes in front of the fleet (HAProxy only).
    pub fn haproxy_pair(mut self) -> Self {
        assert_eq!(
            self.lb,
            LbKind::Haproxy,
            "a pair of HAProxy needs LbKind::Haproxy"
        );
        self.haproxy_pair = true;
        self
    }

    /// `blue` instances in pool "blue" (live) and `green` in pool "green"
    /// (idle: out of rotation at start).
    pub fn blue_green(lb: LbKind, blue: usize, green: usize) -> Self {
        let mut pools = vec![Some("blue".to_string()); blue];
        pools.extend(vec![Some("green".to_string()); green]);
        Self {
            pools,
            idle_pool: Some("green".into()),
            ..Self::new(lb, 0)
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
    /// The app's port (traffic and `/health`).
    pub port: u16,
    pub ssh_port: u16,
    pub pool: Option<String>,
    /// `<fleet>/web-N`: instance.env, VERSION, PREVIOUS_VERSION, app.pid, app.log.
    pub dir: PathBuf,
}

impl AppInstance {
    /// `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// The load balancer in front of the fleet.
pub enum Lb {
    Haproxy(Haproxy),
    Nginx(Nginx),
}

pub struct Fleet {
    pub spec: FleetSpec,
    pub instances: Vec<AppInstance>,
    /// None only while the fleet starts (apps first, then the LB).
    lb: Option<Lb>,
    /// The second HAProxy of [`FleetSpec::haproxy_pair`].
    lb2: Option<Haproxy>,
    pub ssh: SshFleet,
    /// Last: removed after the processes above are stopped.
    pub dir: TempDir,
}

impl Fleet {
    fn start(spec: FleetSpec) -> Fleet {
        assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing");
        let n = spec.pools.len();
        let ssh = SshFleet::start(n);
        // Short: HAProxy's socket path must fit the unix socket limit.
        let dir = tempfile::Builder::new().prefix("rsf").tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bin = root.join("bin");
        for d in ["bin", "ctl", "lb"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["app.py", "deploy.sh", "rollback.sh"] {
            fs::copy(repo().join("demo").join(f), bin.join(f)).unwrap();
            chmod_x(&bin.join(f));
        }
        let app = match &spec.app_variant {
            None => bin.join("app.py"),
            Some(src) => {
                let p = bin.join("app_variant.py");
                let src = src.replace("REAL_APP", &bin.join("app.py").display().to_string());
                fs::write(&p, src).unwrap();
                chmod_x(&p);
                p
            }
        };
        let instances: Vec<AppInstance> = ssh
            .hosts
            .iter()
            .zip(&spec.pools)
            .enumerate()
            .map(|(i, (host, pool))| {
                let name = format!("web-{}", i + 1);
                let idir = root.join(&name);
                fs::create_dir_all(&idir).unwrap();
                AppInstance {
                    name,
                    ip: host.ip.clone(),
                    port: 0,
                    ssh_port: host.port,
                    pool: pool.clone(),
                    dir: idir,
                }
            })
            .collect();
        // The fleet is half-built from here: a Fleet owns it (the LB comes
        // last), so a failure below still stops every app started so far.
        let mut fleet = Fleet {
            lb: None,
            lb2: None,
            spec,
            instances,
            ssh,
            dir,
        };
        // v1 everywhere, started by the same deploy.sh rollscript will run.
        for inst in &mut fleet.instances {
            start_app(inst, &app);
        }
        for inst in &fleet.instances {
            wait_until(&format!("{} healthy", inst.name), START_TIMEOUT, || {
                get(inst.addr(), "/health").is_ok_and(|(s, _)| s == 200)
            });
        }
        let idle = |i: &AppInstance| {
            fleet.spec.idle_pool.is_some() && i.pool.as_deref() == fleet.spec.idle_pool.as_deref()
        };
        let lb_dir = root.join("lb");
        fleet.lb = Some(match fleet.spec.lb {
            LbKind::Haproxy => {
                let servers: Vec<Server> = fleet
                    .instances
                    .iter()
                    .map(|i| Server {
                        disabled: idle(i),
                        ..Server::new(&i.name, &i.addr())
                    })
                    .collect();
                let h = Haproxy::start_in(&lb_dir, BACKEND, &servers, &fleet.spec.haproxy_check);
                for s in servers.iter().filter(|s| s.disabled) {
                    h.wait_status(&s.name, "MAINT");
                }
                if fleet.spec.haproxy_pair {
                    let dir2 = root.join("lb2");
                    fs::create_dir_all(&dir2).unwrap();
                    let h2 = Haproxy::start_in(&dir2, BACKEND, &servers, &fleet.spec.haproxy_check);
                    for s in &servers {
                        h2.wait_status(&s.name, if s.disabled { "MAINT" } else { "UP" });
                    }
                    fleet.lb2 = Some(h2);
                }
                Lb::Haproxy(h)
            }
            LbKind::Nginx => {
                let servers: Vec<(String, bool)> = fleet
                    .instances
                    .iter()
                    .map(|i| (i.addr(), idle(i)))
                    .collect();
                let n = Nginx::start_in(&lb_dir, &servers);
                wait_until("nginx to proxy to the fleet", START_TIMEOUT, || {
                    get(n.port, "/").is_ok_and(|(s, _)| s == 200)
                });
                Lb::Nginx(n)
            }
        });
        fleet
    }

    /// The load balancer in front of the fleet.
    pub fn lb(&self) -> &Lb {
        self.lb.as_ref().expect("the fleet's LB is started")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
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

    // ---- the load balancer ---------------------------------------------------------

    /// The address clients use: the load balancer's frontend.
    pub fn lb_addr(&self) -> SocketAddr {
        let port = match self.lb() {
            Lb::Haproxy(h) => h.port,
            Lb::Nginx(n) => n.port,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn haproxy(&self) -> &Haproxy {
        match self.lb() {
            Lb::Haproxy(h) => h,
            Lb::Nginx(_) => panic!("this fleet runs nginx, not HAProxy"),
        }
    }

    /// The second HAProxy of a [`FleetSpec::haproxy_pair`] fleet.
    pub fn haproxy2(&self) -> &Haproxy {
        self.lb2.as_ref().expect("this fleet has no second HAProxy")
    }

    /// Steady traffic through the second HAProxy, like [`Self::load`].
    pub fn load2(&self) -> Load {
        let port = self.haproxy2().port;
        Load::start(
            SocketAddr::from(([127, 0, 0, 1], port)),
            LOAD_RATE,
            LOAD_MAX,
        )
    }

    pub fn nginx(&self) -> &Nginx {
        match self.lb() {
            Lb::Nginx(n) => n,
            Lb::Haproxy(_) => panic!("this fleet runs HAProxy, not nginx"),
        }
    }

    /// The LB's log: HAProxy's output, or nginx's error.log.
    pub fn lb_log(&self) -> String {
        match self.lb() {
            Lb::Haproxy(h) => h.log(),
            Lb::Nginx(n) => n.error_log(),
        }
    }

    /// Stops HAProxy (SIGTERM, by PID): its runtime API goes away.
    pub fn stop_haproxy(&mut self) {
        match self.lb.as_mut() {
            Some(Lb::Haproxy(h)) => h.stop(),
            _ => panic!("this fleet runs nginx, not HAProxy"),
        }
    }

    /// Starts HAProxy again on the same config and socket (it remembers no
    /// maint: every healthy server comes UP).
    pub fn start_haproxy(&mut self) {
        match self.lb.as_mut() {
            Some(Lb::Haproxy(h)) => h.restart(),
            _ => panic!("this fleet runs nginx, not HAProxy"),
        }
    }

    /// Every instance's state in the LB: HAProxy's `show stat` status
    /// (`UP`, `MAINT`, `DRAIN`, …), nginx's `up` / `down` from the upstream file.
    pub fn lb_states(&self) -> Vec<(String, String)> {
        match self.lb() {
            Lb::Haproxy(h) => {
                let statuses = h.statuses();
                self.instances
                    .iter()
                    .map(|i| {
                        let s = statuses.get(&i.name).map_or("missing", String::as_str);
                        (i.name.clone(), s.to_string())
                    })
                    .collect()
            }
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
        match self.lb() {
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
                        let w = upstream_weight(&text, &i.addr()).unwrap_or_else(|| {
                            panic!("no server {} in the upstream file:\n{text}", i.addr())
                        });
                        (i.name.clone(), w)
                    })
                    .collect()
            }
        }
    }

    /// Where an [`LbSampler`] reads this fleet's LB (both of a pair: a
    /// server counts in service only when it is on both).
    pub fn lb_source(&self) -> LbSource {
        if let Some(h2) = &self.lb2 {
            let h = self.haproxy();
            return LbSource::All(vec![
                LbSource::Haproxy {
                    socket: h.socket.clone(),
                    backend: h.backend.clone(),
                },
                LbSource::Haproxy {
                    socket: h2.socket.clone(),
                    backend: h2.backend.clone(),
                },
            ]);
        }
        match self.lb() {
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

    /// Steady traffic through the LB (50 requests a second, one per
    /// connection, for at most 3 minutes); see [`Load`].
    pub fn load(&self) -> Load {
        Load::start(self.lb_addr(), LOAD_RATE, LOAD_MAX)
    }

    // ---- the apps ----------------------------------------------------------------------

    /// The version `name` serves, asked directly (GET / on the app, not
    /// through the LB); the status and body when it does not answer 200. An
    /// app still booting (503 "booting" for its first moments) is asked
    /// again, up to 5 s.
    pub fn version(&self, name: &str) -> String {
        let inst = self.instance(name);
        let mut seen = String::new();
        wait_until(
            &format!("{name} to finish booting"),
            Duration::from_secs(5),
            || {
                seen = match get(inst.addr(), "/") {
                    Ok((200, body)) => body
                        .trim()
                        .strip_prefix("version=")
                        .unwrap_or(body.trim())
                        .to_string(),
                    Ok((s, body)) => format!("HTTP {s} {}", body.trim()),
                    Err(e) => format!("unreachable: {e}"),
                };
                seen != "HTTP 503 booting"
            },
        );
        seen
    }

    /// Every instance's version: `[(name, version)]`.
    pub fn versions(&self) -> Vec<(String, String)> {
        self.instances
            .iter()
            .map(|i| (i.name.clone(), self.version(&i.name)))
            .collect()
    }

    /// The PID in `name`'s app.pid (the running app process).
    pub fn app_pid(&self, name: &str) -> Option<u32> {
        fs::read_to_string(self.instance(name).dir.join("app.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
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

    // ---- faults ------------------------------------------------------------------------

    /// Writes `bin/FILE`, a bash wrapper running `body` on the instance. In
    /// `body`: `$bin` (the folder holding deploy.sh), `$NAME` (the
    /// instance), `"$@"` (the arguments), `mark FILE` (creates a control
    /// file) and `wait_for FILE` (waits for one, up to 60 s; exits 1 when
    /// the fleet is being torn down). Returns its path.
    pub fn wrapper(&self, file: &str, body: &str) -> String {
        let path = self.bin(file);
        fs::write(
            &path,
            format!(
                "#!/usr/bin/env bash\n\
                 # A test's wrapper (written by tests/it/harness/fleet.rs).\n\
                 set -euo pipefail\n\
                 bin=$(cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\" && pwd)\n\
                 root=$(dirname \"$bin\")\n\
                 ctl=$root/ctl\n\
                 # The instance: the one whose address this ssh connection came in on.\n\
                 addr=$(set -- ${{SSH_CONNECTION:-}}; echo \"${{3:-}}\")\n\
                 for f in \"$root\"/*/instance.env; do\n\
                 \x20   grep -qx \"ADDR=$addr\" \"$f\" && DEMO_INSTANCE_DIR=$(dirname \"$f\")\n\
                 done\n\
                 export DEMO_INSTANCE_DIR\n\
                 . \"$DEMO_INSTANCE_DIR/instance.env\"\n\
                 mark() {{ : >\"$ctl/$1\"; }}\n\
                 wait_for() {{\n\
                 \x20   local i\n\
                 \x20   for ((i = 0; i < 1200; i++)); do\n\
                 \x20       [ -e \"$ctl/abort\" ] && {{ echo \"$NAME: fleet torn down\" >&2; exit 1; }}\n\
                 \x20       [ -e \"$ctl/$1\" ] && return 0\n\
                 \x20       sleep 0.05\n\
                 \x20   done\n\
                 \x20   echo \"$NAME: $1 never came\" >&2\n\
                 \x20   exit 1\n\
                 }}\n\
                 {body}\n"
            ),
        )
        .unwrap();
        chmod_x(&path);
        path.display().to_string()
    }

    /// [`Self::wrapper`] as `bin/deploy-test.sh`, what [`Self::test_deploy`] names.
    pub fn set_deploy(&self, body: &str) -> String {
        self.wrapper("deploy-test.sh", body)
    }

    /// The path of the wrapper [`Self::set_deploy`] writes.
    pub fn test_deploy(&self) -> String {
        self.bin("deploy-test.sh").display().to_string()
    }

    /// Creates control file `name` (what a wrapper's `wait_for` waits on).
    pub fn touch(&self, name: &str) {
        fs::write(self.path("ctl").join(name), "").unwrap();
    }

    /// Waits until control file `name` exists (a wrapper's `mark`).
    pub fn wait_ctl(&self, name: &str, timeout: Duration) {
        let p = self.path("ctl").join(name);
        wait_until(&format!("control file {name}"), timeout, || p.exists());
    }

    /// Stops `name`'s sshd (and its connections): it refuses ssh from now on.
    pub fn stop_sshd(&mut self, name: &str) {
        let i = self
            .instances
            .iter()
            .position(|x| x.name == name)
            .unwrap_or_else(|| panic!("no instance {name}"));
        self.ssh.hosts[i].stop();
    }

    // ---- the inventory and rollscript runs against it ---------------------------------

    /// An inventory for this fleet (every instance), to adjust and write.
    pub fn inventory(&self) -> FleetInventory {
        FleetInventory {
            deploy: self.bin("deploy.sh").display().to_string(),
            rollback: self.bin("rollback.sh").display().to_string(),
            migrate: None,
            database: None,
            min_in_service: None,
            only: None,
            lb: match self.lb() {
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
            extra_lbs: self
                .lb2
                .iter()
                .map(|h| {
                    format!(
                        "kind = \"haproxy\"\nsocket = {}\nbackend = \"{}\"\n",
                        toml_str(&h.socket.display().to_string()),
                        h.backend
                    )
                })
                .collect(),
            pool_key: match self.spec.lb {
                LbKind::Haproxy => format!("backend = \"{BACKEND}\""),
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

    /// The default inventory: `rollscript.toml` in the fleet's folder.
    pub fn inventory_path(&self) -> PathBuf {
        self.path("rollscript.toml")
    }

    /// `rollscript ARGS… -i INVENTORY` (the default one), from the repository root.
    pub fn rollscript(&self, args: &[&str]) -> Command {
        let mut c = rollscript();
        c.current_dir(repo())
            .args(args)
            .arg("-i")
            .arg(self.inventory_path());
        c
    }

    /// Starts `cmd` in the background, output to files in the fleet's
    /// folder; stopped on drop.
    pub fn spawn(&self, label: &str, cmd: Command) -> Running {
        Running::spawn(cmd, self.root(), label)
    }

    /// Runs `cmd` to its end (at most `timeout`).
    pub fn exec(&self, label: &str, cmd: Command, timeout: Duration) -> Finished {
        self.spawn(label, cmd).wait(timeout)
    }

    /// Every run journal of the default inventory, oldest first.
    pub fn journals(&self) -> Vec<PathBuf> {
        journals_beside(&self.inventory_path())
    }

    /// The records of the default inventory's only run journal.
    pub fn journal(&self) -> Journal {
        only_journal(&self.inventory_path())
    }

    /// The deploy lock of the default inventory.
    /// The deploy lock of the fleet's inventory: one file per inventory
    /// identity under `.rollscript/locks/` (`none.lock` when there is none).
    pub fn lock_path(&self) -> PathBuf {
        let dir = self.path(".rollscript/locks");
        fs::read_dir(&dir)
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "lock"))
            })
            .unwrap_or_else(|| dir.join("none.lock"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Wrappers waiting on a control file give up.
        let _ = fs::write(self.path("ctl").join("abort"), "");
        if let Some(Lb::Haproxy(h)) = self.lb.as_mut() {
            h.stop();
        }
        if let Some(h) = self.lb2.as_mut() {
            h.stop();
        }
        for host in &mut self.ssh.hosts {
            host.stop();
        }
        // What is left from this fleet's folder: the apps (detached by
        // deploy.sh), wrappers, ssh masters of a killed rollscript.
        let mine = format!("{}/", self.root().display());
        stop_pids(&pids_naming(&mine), Duration::from_secs(5));
    }
}

fn chmod_x(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The `weight=` of the server at `addr` in an nginx upstream file's text
/// (1, nginx's default, when absent); None without such a server.
pub fn upstream_weight(text: &str, addr: &str) -> Option<u32> {
    let line = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find(|l| {
            l.strip_prefix("server ")
                .and_then(|r| r.split_whitespace().next())
                .map(|a| a.trim_end_matches(';'))
                == Some(addr)
        })?;
    Some(
        line.trim_end_matches(';')
            .split_whitespace()
            .find_map(|w| w.strip_prefix("weight="))
            .map_or(1, |w| w.parse().unwrap()),
    )
}

/// Writes `inst`'s instance.env and starts its app on v1 with deploy.sh, on
/// a port of its address picked now (another one if that was taken meanwhile).
fn start_app(inst: &mut AppInstance, app: &Path) {
    let deploy = app.parent().unwrap().join("deploy.sh");
    let mut last = String::new();
    for _ in 0..5 {
        let port = loop {
            let p = free_port(&inst.ip);
            if p != inst.ssh_port {
                break p;
            }
        };
        fs::write(
            inst.dir.join("instance.env"),
            format!(
                "NAME={}\nADDR={}\nPORT={port}\nPYTHON={PYTHON}\nAPP={}\nBOOT_DELAY=0.5\n",
                inst.name,
                inst.ip,
                app.display()
            ),
        )
        .unwrap();
        let out = Command::new(&deploy)
            .arg("v1")
            .env("DEMO_INSTANCE_DIR", &inst.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            inst.port = port;
            return;
        }
        let log = fs::read_to_string(inst.dir.join("app.log")).unwrap_or_default();
        last = format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}--- app.log\n{log}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !log.contains("cannot listen") {
            break;
        }
        // The version files are written before the start: start afresh.
        for f in ["VERSION", "PREVIOUS_VERSION", "app.log"] {
            let _ = fs::remove_file(inst.dir.join(f));
        }
    }
    panic!("starting {} on v1 failed: {last}", inst.name);
}
