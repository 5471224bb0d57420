//! A real local fleet for the fault-matrix tests (`faults.rs`): `n` instances
//! of `demo/app.py`, each "host" with its own sshd on a 127.0.1.x address
//! (the app bound to the same address), `demo/deploy.sh` and
//! `demo/rollback.sh` as `app.deploy`/`app.rollback`, and HAProxy in front
//! (runtime API on a unix socket at admin level, `retries 0`, no redispatch,
//! `option httpchk GET /health` every 200 ms).
//!
//! Built like `tools/demo` builds its fleet: each sshd passes the instance's
//! folder to `deploy.sh` with `SetEnv DEMO_INSTANCE_DIR=…`. Faults are
//! injected through a per-test deploy wrapper ([`FaultFleet::set_deploy`]),
//! control files the wrapper waits on ([`FaultFleet::touch`],
//! [`FaultFleet::wait_ctl`]), and by stopping an sshd or HAProxy mid-run.
//!
//! Everything runs on loopback and is stopped by PID when the fleet is
//! dropped, test passed or failed: HAProxy, each sshd and its per-connection
//! processes (which ends the ssh masters rollscript opened), then every
//! process still running from this fleet's folder (apps, wrappers).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::sshd::{keygen, next_ip};
use super::{find_program, free_port, repo, rollscript, Proc};

/// The Python the apps run on: Debian's own, not a pyenv shim (each shim
/// call costs a fraction of a second).
const PYTHON: &str = "/usr/bin/python3";

/// The HAProxy backend holding the fleet.
pub const BACKEND: &str = "faults";

/// One instance: an sshd and an app on the same 127.0.1.x address.
pub struct Node {
    pub name: String,
    pub ip: String,
    pub ssh_port: u16,
    /// The app's port (traffic and `/health`).
    pub port: u16,
    /// Its instance folder (`instance.env`, `VERSION`, `app.pid`, `app.log`).
    pub dir: PathBuf,
    sshd: Option<Proc>,
}

pub struct FaultFleet {
    pub dir: TempDir,
    pub nodes: Vec<Node>,
    /// HAProxy's runtime API (unix socket, admin level).
    pub socket: PathBuf,
    /// HAProxy's HTTP frontend on 127.0.0.1.
    pub lb_port: u16,
    /// The inventory rollscript runs against (`.rollscript/` lands beside it).
    pub inventory: PathBuf,
    hap_cfg: PathBuf,
    haproxy: Option<Proc>,
}

impl FaultFleet {
    /// Starts `n` instances (`web-1`…) on v1, HAProxy in front, and writes
    /// the inventory (`min_in_service = 1`, `app.deploy` = the plain
    /// `deploy.sh` until [`set_deploy`](Self::set_deploy)).
    pub fn start(n: usize) -> FaultFleet {
        let sshd =
            find_program("sshd").expect("sshd is installed (apt-get install openssh-server)");
        let haproxy_bin = find_program("haproxy").expect("haproxy is installed");
        assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing");
        fs::create_dir_all("/run/sshd").unwrap();
        // Short: the HAProxy socket and ssh paths must fit unix socket limits.
        let dir = tempfile::Builder::new().prefix("rsf").tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let bin = root.join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(root.join("ctl")).unwrap();
        for f in ["app.py", "deploy.sh", "rollback.sh"] {
            fs::copy(repo().join("demo").join(f), bin.join(f)).unwrap();
            chmod_x(&bin.join(f));
        }

        let client_pub = keygen(&root.join("id_ed25519"));
        fs::write(root.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
        fs::write(
            root.join("ssh_config"),
            "# Written by the fault-matrix harness: keeps the user's ~/.ssh/config and agent out.\n\
             Host *\n\
             \x20 IdentityAgent none\n\
             \x20 GlobalKnownHostsFile /dev/null\n\
             \x20 KexAlgorithms curve25519-sha256\n\
             \x20 LogLevel ERROR\n",
        )
        .unwrap();

        let mut fleet = FaultFleet {
            socket: root.join("haproxy.sock"),
            lb_port: 0,
            inventory: root.join("rollscript.toml"),
            hap_cfg: root.join("haproxy.cfg"),
            haproxy: None,
            nodes: Vec::new(),
            dir,
        };
        let mut known_hosts = String::new();
        for i in 1..=n {
            let node = start_node(&sshd, &root, &format!("web-{i}"));
            let key = fs::read_to_string(node.dir.join("ssh_host_ed25519_key.pub")).unwrap();
            let key: Vec<&str> = key.split_whitespace().take(2).collect();
            known_hosts.push_str(&format!(
                "[{}]:{} {}\n",
                node.ip,
                node.ssh_port,
                key.join(" ")
            ));
            fleet.nodes.push(node);
        }
        fs::write(root.join("known_hosts"), known_hosts).unwrap();

        // v1 everywhere, started by the same deploy.sh the runs use.
        for node in &mut fleet.nodes {
            start_app(node, &root);
        }
        for node in &fleet.nodes {
            let url = node.addr();
            wait_until(
                &format!("{} healthy", node.name),
                Duration::from_secs(15),
                || http_get(url, "/health").is_ok_and(|(s, _)| s == 200),
            );
        }

        fleet.write_haproxy_cfg();
        let check = Command::new(&haproxy_bin)
            .args(["-c", "-q", "-f"])
            .arg(&fleet.hap_cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy rejected its config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        fleet.start_haproxy();
        fleet.set_deploy("exec \"$bin/deploy.sh\" \"$@\"");
        fleet.write_inventory(1);
        fleet
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
    }

    /// Writes the inventory, with `lb.min_in_service = min_in_service`.
    pub fn write_inventory(&self, min_in_service: u32) {
        let root = self.root().display().to_string();
        let mut t = format!(
            "# Written by the fault-matrix harness.\n\
             [app]\n\
             name = \"faults\"\n\
             deploy = \"{root}/bin/deploy-test.sh\"\n\
             rollback = \"{root}/bin/rollback.sh\"\n\
             \n\
             [ssh]\n\
             user = \"root\"\n\
             identity = \"{root}/id_ed25519\"\n\
             known_hosts = \"{root}/known_hosts\"\n\
             config = \"{root}/ssh_config\"\n\
             connect_timeout = \"5s\"\n\
             command_timeout = \"90s\"\n\
             \n\
             [health]\n\
             path = \"/health\"\n\
             interval = \"100ms\"\n\
             timeout = \"1s\"\n\
             retries = 20\n\
             healthy_threshold = 2\n\
             \n\
             [lb]\n\
             kind = \"haproxy\"\n\
             socket = \"{sock}\"\n\
             backend = \"{BACKEND}\"\n\
             drain_timeout = \"30s\"\n\
             min_in_service = {min_in_service}\n",
            sock = self.socket.display(),
        );
        for n in &self.nodes {
            t.push_str(&format!(
                "\n[[instances]]\nname = \"{}\"\nhost = \"{}\"\nssh_port = {}\nport = {}\n",
                n.name, n.ip, n.ssh_port, n.port
            ));
        }
        fs::write(&self.inventory, t).unwrap();
    }

    /// Sets `app.deploy` to a wrapper running `body` (bash) on the instance.
    /// In `body`: `$bin` (the folder holding `deploy.sh`), `$NAME` (the
    /// instance), `$1` (the version), `mark FILE` (creates a control file)
    /// and `wait_for FILE` (waits for one, up to 60 s; exits 1 when the
    /// fleet is being torn down).
    pub fn set_deploy(&self, body: &str) {
        let path = self.root().join("bin/deploy-test.sh");
        fs::write(
            &path,
            format!(
                "#!/usr/bin/env bash\n\
                 # A test's deploy wrapper (written by the fault-matrix harness).\n\
                 set -euo pipefail\n\
                 bin=$(cd \"$(dirname \"${{BASH_SOURCE[0]}}\")\" && pwd)\n\
                 ctl=$(dirname \"$bin\")/ctl\n\
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
    }

    /// Creates control file `name` (what a wrapper's `wait_for` waits on).
    pub fn touch(&self, name: &str) {
        fs::write(self.root().join("ctl").join(name), "").unwrap();
    }

    /// Waits until control file `name` exists (a wrapper's `mark`).
    pub fn wait_ctl(&self, name: &str, timeout: Duration) {
        let p = self.root().join("ctl").join(name);
        wait_until(&format!("control file {name}"), timeout, || p.exists());
    }

    // ---- rollscript --------------------------------------------------------

    /// `rollscript ARGS… -i INVENTORY`, from the repository root.
    pub fn rollscript(&self, args: &[&str]) -> Command {
        let mut c = rollscript();
        c.current_dir(repo())
            .args(args)
            .arg("-i")
            .arg(&self.inventory);
        c
    }

    /// `rollscript run scripts/rolling.rhai -i INV --yes --var version=v2` + `extra`.
    pub fn run_cmd(&self, extra: &[&str]) -> Command {
        let mut c = self.rollscript(&[
            "run",
            "scripts/rolling.rhai",
            "--yes",
            "--var",
            "version=v2",
        ]);
        c.args(extra);
        c
    }

    /// Starts `cmd` in the background, output to files; stopped on drop.
    pub fn spawn(&self, label: &str, mut cmd: Command) -> Running {
        let out = self.root().join(format!("{label}.stdout"));
        let err = self.root().join(format!("{label}.stderr"));
        cmd.stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap());
        Running {
            proc: Proc::spawn(label, &mut cmd),
            out,
            err,
        }
    }

    /// Runs `cmd` to its end (at most `timeout`).
    pub fn exec(&self, label: &str, cmd: Command, timeout: Duration) -> Finished {
        self.spawn(label, cmd).wait(timeout)
    }

    // ---- journal and lock ----------------------------------------------------

    /// Every run journal, oldest first.
    pub fn journals(&self) -> Vec<PathBuf> {
        let dir = self.root().join(".rollscript/runs");
        let mut v: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
        v.sort();
        v
    }

    /// The records of the only run journal (asserts there is exactly one).
    pub fn journal(&self) -> Journal {
        let j = self.journals();
        assert_eq!(j.len(), 1, "expected one run journal, found {j:?}");
        Journal::read(&j[0])
    }

    /// The inventory's lock file: `.rollscript/locks/<app>-<fingerprint>.lock`
    /// (the only one there; a path that does not exist when there is none).
    pub fn lock_path(&self) -> PathBuf {
        let dir = self.root().join(".rollscript/locks");
        fs::read_dir(&dir)
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "lock"))
            })
            .unwrap_or_else(|| dir.join("none.lock"))
    }

    // ---- HAProxy --------------------------------------------------------------

    /// Writes haproxy.cfg with the frontend on a port free now.
    fn write_haproxy_cfg(&mut self) {
        self.lb_port = free_port("127.0.0.1");
        let mut cfg = format!(
            "# Written by the fault-matrix harness. retries 0 and no redispatch:\n\
             # a request sent to an instance going away fails visibly.\n\
             global\n\
             \x20   stats socket {sock} mode 600 level admin\n\
             \x20   maxconn 2000\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   retries 0\n\
             frontend web\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   default_backend {BACKEND}\n\
             backend {BACKEND}\n\
             \x20   balance roundrobin\n\
             \x20   retries 0\n\
             \x20   http-reuse never\n\
             \x20   option httpchk GET /health\n\
             \x20   default-server check inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1\n",
            sock = self.socket.display(),
            port = self.lb_port,
        );
        for node in &self.nodes {
            cfg.push_str(&format!(
                "    server {} {}:{}\n",
                node.name, node.ip, node.port
            ));
        }
        fs::write(&self.hap_cfg, cfg).unwrap();
    }

    /// Starts HAProxy on its config (again, after [`stop_haproxy`](Self::stop_haproxy)),
    /// and waits until every server whose app is healthy is UP.
    pub fn start_haproxy(&mut self) {
        // The frontend port, free when picked, may have been taken since
        // (tests run side by side): move to another.
        for _ in 0..5 {
            if self.try_start_haproxy() {
                return;
            }
            self.write_haproxy_cfg();
        }
        panic!(
            "haproxy could not bind a frontend port:\n{}",
            self.haproxy_log()
        );
    }

    /// False when HAProxy exited because its frontend port was taken.
    fn try_start_haproxy(&mut self) -> bool {
        let haproxy = find_program("haproxy").unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("haproxy.log"))
            .unwrap();
        let proc = Proc::spawn(
            "haproxy",
            Command::new(haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&self.hap_cfg)
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        self.haproxy = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_hap("show info").is_err() {
            if let Some(p) = self.haproxy.as_mut() {
                if let Ok(Some(st)) = p.child.try_wait() {
                    let log = self.haproxy_log();
                    if log.contains("cannot bind socket") {
                        self.haproxy = None;
                        return false;
                    }
                    panic!("haproxy exited at start ({st}):\n{log}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "haproxy's socket did not answer:\n{}",
                self.haproxy_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for n in &self.nodes {
            if http_get(n.addr(), "/health").is_ok_and(|(s, _)| s == 200) {
                self.wait_status(&n.name, "UP", Duration::from_secs(10));
            }
        }
        true
    }

    /// Stops HAProxy (SIGTERM, by PID): its runtime API goes away.
    pub fn stop_haproxy(&mut self) {
        if let Some(mut p) = self.haproxy.take() {
            p.stop();
        }
    }

    pub fn haproxy_log(&self) -> String {
        fs::read_to_string(self.root().join("haproxy.log")).unwrap_or_default()
    }

    pub fn try_hap(&self, line: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    }

    /// `show stat` of the backend's servers: server → field → value.
    pub fn show_stat(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let csv = self
            .try_hap(&format!("show stat {BACKEND} 4 -1"))
            .unwrap_or_else(|e| panic!("haproxy socket: {e}"));
        let mut lines = csv.lines();
        let header: Vec<String> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("not CSV: {csv}"))
            .split(',')
            .map(String::from)
            .collect();
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let row: BTreeMap<String, String> = header
                    .iter()
                    .zip(f.iter())
                    .map(|(h, v)| (h.clone(), v.to_string()))
                    .collect();
                (f.get(1).unwrap_or(&"").to_string(), row)
            })
            .collect()
    }

    /// Each server's `show stat` status (`UP`, `MAINT`, `DRAIN`, `DOWN`, …).
    pub fn statuses(&self) -> BTreeMap<String, String> {
        self.show_stat()
            .into_iter()
            .map(|(s, row)| (s, row.get("status").cloned().unwrap_or_default()))
            .collect()
    }

    pub fn status(&self, server: &str) -> String {
        self.statuses().remove(server).unwrap_or_default()
    }

    /// `scur`: sessions open on `server` now.
    pub fn sessions(&self, server: &str) -> u64 {
        self.show_stat()
            .get(server)
            .and_then(|r| r.get("scur"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn wait_status(&self, server: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.status(server);
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy server {server} is {now}, not {want}, after {timeout:?}: {:?}",
                self.statuses()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // ---- the apps ----------------------------------------------------------

    /// The version `name` serves (`GET /`), or the error. An app still
    /// booting (503 "booting" for its first moments) is asked again, up to 5 s.
    pub fn version(&self, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = match http_get(self.node(name).addr(), "/") {
                Ok((200, body)) => body.trim().trim_start_matches("version=").to_string(),
                Ok((s, body)) => format!("HTTP {s} {}", body.trim()),
                Err(e) => format!("error: {e}"),
            };
            if seen != "HTTP 503 booting" || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every instance's served version.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), self.version(&n.name)))
            .collect()
    }

    // ---- faults --------------------------------------------------------------

    /// Stops `name`'s sshd (and its connections): it refuses ssh from now on.
    pub fn stop_sshd(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no instance {name}"));
        stop_sshd(node);
    }

    /// A load of one request per connection through HAProxy; see [`Load`].
    pub fn load(&self) -> Load {
        Load::start(self.lb_port)
    }
}

impl Drop for FaultFleet {
    fn drop(&mut self) {
        // Wrappers waiting on a control file give up.
        let _ = fs::write(self.root().join("ctl/abort"), "");
        self.stop_haproxy();
        for n in &mut self.nodes {
            stop_sshd(n);
        }
        // What is left from this fleet's folder: the apps (detached by
        // deploy.sh), wrappers, ssh masters of a killed rollscript.
        std::thread::sleep(Duration::from_millis(100));
        let mark = self.root().display().to_string();
        let ours = || pids_where(|_, cmdline| cmdline.contains(&mark));
        stop_pids(&ours());
    }
}

fn chmod_x(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn start_node(sshd: &Path, root: &Path, name: &str) -> Node {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    keygen(&dir.join("ssh_host_ed25519_key"));
    let ip = next_ip();
    // A port free now may be taken before sshd binds it (tests run side by
    // side): try another.
    for _ in 0..5 {
        let ssh_port = free_port(&ip);
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress {ip}:{ssh_port}\n\
                 HostKey {d}/ssh_host_ed25519_key\n\
                 PidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {r}/authorized_keys\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 KexAlgorithms curve25519-sha256\n\
                 PrintMotd no\n\
                 LogLevel VERBOSE\n\
                 # deploy.sh learns its instance; SHLVL=1 keeps bash from reading ~/.bashrc.\n\
                 SetEnv DEMO_INSTANCE_DIR={d} SHLVL=1\n",
                d = dir.display(),
                r = root.display(),
            ),
        )
        .unwrap();
        let log = dir.join("sshd.log");
        let mut proc = Proc::spawn(
            &format!("sshd {name}"),
            Command::new(sshd)
                .arg("-f")
                .arg(&config)
                .args(["-D", "-e"])
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server listening on") {
                return Node {
                    name: name.to_string(),
                    ip,
                    ssh_port,
                    port: 0,
                    dir,
                    sshd: Some(proc),
                };
            }
            if let Ok(Some(_)) = proc.child.try_wait() {
                if text.contains("Address already in use") {
                    break;
                }
                panic!("sshd {name} exited at start:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "sshd {name} did not listen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    panic!("sshd {name}: no free port on {ip}");
}

/// Writes `node`'s instance.env and starts its app on v1 with deploy.sh, on
/// a port of its address picked now (another one if that was taken meanwhile).
fn start_app(node: &mut Node, root: &Path) {
    let mut last = String::new();
    for _ in 0..5 {
        let port = loop {
            let p = free_port(&node.ip);
            if p != node.ssh_port {
                break p;
            }
        };
        fs::write(
            node.dir.join("instance.env"),
            format!(
                "NAME={}\nADDR={}\nPORT={port}\nPYTHON={PYTHON}\nAPP={}\nBOOT_DELAY=0.3\n",
                node.name,
                node.ip,
                root.join("bin/app.py").display()
            ),
        )
        .unwrap();
        let out = Command::new(root.join("bin/deploy.sh"))
            .arg("v1")
            .env("DEMO_INSTANCE_DIR", &node.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            node.port = port;
            return;
        }
        let log = fs::read_to_string(node.dir.join("app.log")).unwrap_or_default();
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
            let _ = fs::remove_file(node.dir.join(f));
        }
    }
    panic!("starting {} on v1 failed: {last}", node.name);
}

impl Node {
    pub fn addr(&self) -> SocketAddr {
        format!("{}:{}", self.ip, self.port).parse().unwrap()
    }
}

/// Stops a node's sshd and every process under it (its connections and the
/// commands they run), by PID.
fn stop_sshd(node: &mut Node) {
    let Some(mut proc) = node.sshd.take() else {
        return;
    };
    let below = descendants(proc.pid() as i32);
    proc.stop();
    stop_pids(&below);
}

/// Live (non-zombie) processes matching `pred(pid, cmdline)`.
fn pids_where(pred: impl Fn(i32, &str) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if pred(pid, &cmdline) {
            out.push(pid);
        }
    }
    out
}

/// (state, parent pid) from /proc/PID/stat.
fn stat_of(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((state, ppid))
}

fn alive(pid: i32) -> bool {
    stat_of(pid).is_some_and(|(s, _)| s != 'Z' && s != 'X')
}

/// Every live process below `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let all = pids_where(|_, _| true);
    let parent: BTreeMap<i32, i32> = all
        .iter()
        .filter_map(|p| stat_of(*p).map(|(_, pp)| (*p, pp)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, pp) in &parent {
            if *pp == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// SIGTERM to each, up to 3 s for all to go, then SIGKILL.
fn stop_pids(pids: &[i32]) {
    if pids.is_empty() {
        return;
    }
    for p in pids {
        // SAFETY: kill(2) on processes this fleet started.
        unsafe {
            libc::kill(*p, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids {
        if alive(*p) {
            // SAFETY: as above.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
    }
}

/// Polls `cond` every 20 ms until it holds, or panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One GET on a fresh connection: (status, body), or the error as text.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let _ = conn.set_nodelay(true);
    conn.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("write: {e}"))?;
    let _ = conn.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    super::backend::parse_response(&raw)
}

// ---- a rollscript process ------------------------------------------------------

/// A rollscript started in the background; SIGTERM then SIGKILL on drop.
pub struct Running {
    pub proc: Proc,
    pub out: PathBuf,
    pub err: PathBuf,
}

/// A process that ended: its exit code (None if killed by a signal) and output.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits for the end (at most `timeout`, then panics with its output).
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.proc.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}; stderr so far:\n{}",
                self.proc.name,
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Finished {
            status,
            code: status.code(),
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }
}

// ---- the journal ----------------------------------------------------------------

/// A run journal's records, as JSON (the file format, not rollscript's types).
pub struct Journal {
    pub path: PathBuf,
    pub records: Vec<serde_json::Value>,
}

impl Journal {
    pub fn read(path: &Path) -> Journal {
        let text = fs::read_to_string(path).unwrap();
        let records = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad journal line {l:?}: {e}"))
            })
            .collect();
        Journal {
            path: path.to_path_buf(),
            records,
        }
    }

    /// The run id (the file stem).
    pub fn run(&self) -> String {
        self.path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    pub fn of_type(&self, ty: &str) -> Vec<&serde_json::Value> {
        self.records.iter().filter(|r| r["type"] == ty).collect()
    }

    /// The ops of the intents about `instance`, in order.
    pub fn ops(&self, instance: &str) -> Vec<String> {
        self.of_type("intent")
            .into_iter()
            .filter(|r| r["instance"] == instance)
            .map(|r| r["op"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The result record of the intent numbered `seq`.
    pub fn result_of(&self, seq: u64) -> Option<&serde_json::Value> {
        self.records
            .iter()
            .find(|r| r["type"] == "result" && r["seq"] == seq)
    }

    /// (op, ok) of every intent about `instance`; ok is None without a result.
    pub fn steps(&self, instance: &str) -> Vec<(String, Option<bool>)> {
        self.of_type("intent")
            .into_iter()
            .filter(|r| r["instance"] == instance)
            .map(|r| {
                let ok = r["seq"]
                    .as_u64()
                    .and_then(|s| self.result_of(s))
                    .and_then(|res| res["ok"].as_bool());
                (r["op"].as_str().unwrap_or_default().to_string(), ok)
            })
            .collect()
    }

    /// The compensation records: (instance, restored, detail).
    pub fn compensations(&self) -> Vec<(String, bool, String)> {
        self.of_type("compensation")
            .into_iter()
            .map(|r| {
                (
                    r["instance"].as_str().unwrap_or_default().to_string(),
                    r["restored"].as_bool().unwrap_or(false),
                    r["detail"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The run_end records (a recovered run has two: the run's and recover's).
    pub fn ends(&self) -> Vec<&serde_json::Value> {
        self.of_type("run_end")
    }

    pub fn dump(&self) -> String {
        self.records
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Names in a JSON array.
pub fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---- load ------------------------------------------------------------------------

/// What a [`Load`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    /// Why requests failed (status or error) → count.
    pub errors: BTreeMap<String, u64>,
    /// Versions served → count.
    pub versions: BTreeMap<String, u64>,
}

/// Steady traffic through HAProxy: two clients, each one request per
/// connection every ~10 ms, one in four a `GET /slow?ms=200` (so drains have
/// something to wait for). Bounded: it stops on [`Load::stop`] or after
/// 3 minutes, whichever comes first. A request fails on any transport error
/// or a status other than 200.
pub struct Load {
    stop: Arc<AtomicBool>,
    result: Arc<Mutex<LoadResult>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(lb_port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(LoadResult::default()));
        let addr: SocketAddr = format!("127.0.0.1:{lb_port}").parse().unwrap();
        let threads = (0..2)
            .map(|t| {
                let stop = stop.clone();
                let result = result.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(180);
                    let mut i: u64 = t;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        let path = if i % 4 == 3 { "/slow?ms=200" } else { "/" };
                        i += 1;
                        let r = http_get(addr, path);
                        let mut res = result.lock().unwrap();
                        match r {
                            Ok((200, body)) => {
                                res.ok += 1;
                                let v = body.trim().trim_start_matches("version=").to_string();
                                *res.versions.entry(v).or_default() += 1;
                            }
                            Ok((s, body)) => {
                                res.failed += 1;
                                *res.errors
                                    .entry(format!("HTTP {s} {}", body.trim()))
                                    .or_default() += 1;
                            }
                            Err(e) => {
                                res.failed += 1;
                                *res.errors.entry(e).or_default() += 1;
                            }
                        }
                        drop(res);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Load {
            stop,
            result,
            threads,
        }
    }

    /// Requests answered so far.
    pub fn so_far(&self) -> LoadResult {
        self.result.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> LoadResult {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.result.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
