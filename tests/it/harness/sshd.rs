//! Throwaway OpenSSH servers ("hosts") on 127.0.1.x for the ssh tests.
//!
//! A [`SshFleet`] owns a temp dir holding one client key, an ssh client
//! config that isolates the tests from the user's `~/.ssh/config` and agent,
//! and per host a host key, an `sshd_config` and sshd's log. Each sshd runs
//! in the foreground (`-D -e`) under [`Proc`], so it is stopped by PID when
//! the fleet is dropped, whether the test passed or failed. Tests run as
//! root; sshd authenticates the client key for root.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollscript::config::Inventory;
use tempfile::TempDir;

use super::{descendants, find_program, free_port, stop_pids, Proc};

/// One sshd.
pub struct SshHost {
    /// The instance name the inventory gives it (`h1`, `h2`, …).
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// `ssh-ed25519 AAAA…`, for known_hosts lines.
    pub host_key: String,
    pub log: PathBuf,
    proc: Proc,
}

impl SshHost {
    pub fn addr(&self) -> SocketAddr {
        format!("{}:{}", self.ip, self.port).parse().unwrap()
    }

    /// The known_hosts line for this host (`[ip]:port key`).
    pub fn known_hosts_line(&self) -> String {
        format!("[{}]:{} {}\n", self.ip, self.port, self.host_key)
    }

    /// TCP connections sshd has accepted so far (`LogLevel VERBOSE` logs
    /// one "Connection from" line for each).
    pub fn connections(&self) -> usize {
        self.log_text().matches("Connection from ").count()
    }

    /// sshd's log so far (listener and per-connection processes alike).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops this sshd and every process under it (its connections and the
    /// commands they run, which ends the ssh masters clients opened), by PID.
    pub fn stop(&mut self) {
        if matches!(self.proc.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let below = descendants(self.proc.pid());
        self.proc.stop();
        stop_pids(&below, Duration::from_secs(3));
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several sshd's sharing one client key.
pub struct SshFleet {
    pub dir: TempDir,
    /// The private key sshd accepts for root.
    pub client_key: PathBuf,
    /// A client config that keeps the user's own ssh settings out.
    pub ssh_config: PathBuf,
    /// known_hosts holding every host's key.
    pub known_hosts: PathBuf,
    pub hosts: Vec<SshHost>,
}

/// Hands out 127.0.1.x addresses so fleets of tests running side by side
/// never share one.
static NEXT_IP: AtomicU32 = AtomicU32::new(0);

pub fn next_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::SeqCst) % 250 + 1;
    format!("127.0.1.{n}")
}

/// `ssh-keygen` a passphrase-less ed25519 key at `path`; returns the public line.
pub fn keygen(path: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "rollscript-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs (install openssh-client)");
    assert!(st.success(), "ssh-keygen failed for {}", path.display());
    let public = fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

impl SshFleet {
    /// Starts `n` sshd's, named `h1`…`hN`, each on its own 127.0.1.x.
    pub fn start(n: usize) -> SshFleet {
        Self::start_with(n, "")
    }

    /// Like [`start`](Self::start), with `sshd_config` lines added to every host.
    pub fn start_with(n: usize, sshd_config: &str) -> SshFleet {
        let sshd =
            find_program("sshd").expect("sshd is installed (apt-get install openssh-server)");
        // Root-run sshd refuses to start without its privilege-separation dir.
        fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("rs-sshd-")
            .tempdir()
            .unwrap();
        let client_key = dir.path().join("client_key");
        let client_pub = keygen(&client_key);
        fs::write(
            dir.path().join("authorized_keys"),
            format!("{client_pub}\n"),
        )
        .unwrap();
        let ssh_config = dir.path().join("ssh_config");
        fs::write(
            &ssh_config,
            "# Written by the test harness: keeps the user's ~/.ssh/config and agent out.\n\
             Host *\n\
             \x20 IdentityAgent none\n\
             \x20 GlobalKnownHostsFile /dev/null\n\
             \x20 # The default sntrup761 key exchange doubles a loopback connect; tests are not about kex.\n\
             \x20 KexAlgorithms curve25519-sha256\n",
        )
        .unwrap();
        let hosts: Vec<SshHost> = (1..=n)
            .map(|i| start_host(&sshd, dir.path(), &format!("h{i}"), sshd_config))
            .collect();
        let known_hosts = dir.path().join("known_hosts");
        let lines: String = hosts.iter().map(SshHost::known_hosts_line).collect();
        fs::write(&known_hosts, lines).unwrap();
        SshFleet {
            dir,
            client_key,
            ssh_config,
            known_hosts,
            hosts,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An inventory for every host of the fleet, ready to adjust.
    pub fn inventory(&self) -> InventoryText {
        let mut ssh = BTreeMap::new();
        let q = |p: &Path| toml_str(&p.display().to_string());
        ssh.insert("user".into(), toml_str("root"));
        ssh.insert("identity".into(), q(&self.client_key));
        ssh.insert("known_hosts".into(), q(&self.known_hosts));
        ssh.insert("config".into(), q(&self.ssh_config));
        ssh.insert("connect_timeout".into(), toml_str("5s"));
        ssh.insert("command_timeout".into(), toml_str("60s"));
        InventoryText {
            ssh,
            instances: self
                .hosts
                .iter()
                .map(|h| {
                    format!(
                        "[[instances]]\nname = \"{}\"\nhost = \"{}\"\nssh_port = {}\n",
                        h.name, h.ip, h.port
                    )
                })
                .collect(),
            extra: String::new(),
        }
    }
}

fn start_host(sshd: &Path, root: &Path, name: &str, extra: &str) -> SshHost {
    let hdir = root.join(name);
    fs::create_dir_all(&hdir).unwrap();
    let host_key = keygen(&hdir.join("host_key"));
    let ip = next_ip();
    // A port free now may be taken before sshd binds it (tests run in
    // parallel): try again on another.
    for _ in 0..5 {
        let port = free_port(&ip);
        let config = hdir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress {ip}:{port}\n\
                 HostKey {hk}\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {root}/authorized_keys\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 # One \"Connection from\" line per TCP connection: tests count them.\n\
                 LogLevel VERBOSE\n\
                 # Root's ~/.bashrc runs `pyenv init` (~0.2 s a command); bash\n\
                 # skips its rc file for ssh commands when SHLVL says it is nested.\n\
                 SetEnv SHLVL=1\n\
                 {extra}\n",
                hk = hdir.join("host_key").display(),
                dir = hdir.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let log = hdir.join("sshd.log");
        let log_file = fs::File::create(&log).unwrap();
        let mut proc = Proc::spawn(
            &format!("sshd {name}"),
            Command::new(sshd)
                .arg("-f")
                .arg(&config)
                .args(["-D", "-e"])
                .stdout(Stdio::null())
                .stderr(log_file),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server listening on") {
                return SshHost {
                    name: name.to_string(),
                    ip: ip.clone(),
                    port,
                    host_key,
                    log,
                    proc,
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
                "sshd {name} did not listen on {ip}:{port} within 10s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    panic!("sshd {name}: no free port found on {ip}");
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// Inventory text for a fleet: `[ssh]` keys can be replaced or removed,
/// instances and sections added.
#[derive(Clone)]
pub struct InventoryText {
    /// Key → TOML value (already quoted where it is a string).
    pub ssh: BTreeMap<String, String>,
    pub instances: Vec<String>,
    pub extra: String,
}

impl InventoryText {
    /// Sets `[ssh] key = value`, `value` being TOML (`"\"1s\""`, `"3"`).
    pub fn ssh(mut self, key: &str, value: &str) -> Self {
        self.ssh.insert(key.into(), value.into());
        self
    }

    /// Sets `[ssh] key = "value"`.
    pub fn ssh_str(self, key: &str, value: &str) -> Self {
        self.ssh(key, &toml_str(value))
    }

    pub fn without_ssh(mut self, key: &str) -> Self {
        self.ssh.remove(key);
        self
    }

    /// Adds an instance (`ssh_port` as given).
    pub fn instance(mut self, name: &str, host: &str, ssh_port: u16) -> Self {
        self.instances.push(format!(
            "[[instances]]\nname = \"{name}\"\nhost = \"{host}\"\nssh_port = {ssh_port}\n"
        ));
        self
    }

    /// Keeps only the instances whose name is in `names`.
    pub fn only(mut self, names: &[&str]) -> Self {
        self.instances
            .retain(|i| names.iter().any(|n| i.contains(&format!("name = \"{n}\""))));
        self
    }

    /// Appends raw TOML (e.g. a `[health]` section).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    pub fn text(&self) -> String {
        let mut t = String::from("[app]\nname = \"ssh_it\"\ndeploy = \"true\"\n\n[ssh]\n");
        for (k, v) in &self.ssh {
            t.push_str(&format!("{k} = {v}\n"));
        }
        t.push_str("\n[lb]\nkind = \"none\"\n\n");
        t.push_str(&self.extra);
        t.push('\n');
        for i in &self.instances {
            t.push_str(i);
            t.push('\n');
        }
        t
    }

    /// Writes the inventory to `path` and returns the path.
    pub fn write(&self, path: &Path) -> PathBuf {
        fs::write(path, self.text()).unwrap();
        path.to_path_buf()
    }

    /// The validated inventory, as the CLI would load it.
    pub fn load(&self) -> Arc<Inventory> {
        let text = self.text();
        Arc::new(
            Inventory::parse(Path::new("/tmp/ssh-it.toml"), &text)
                .unwrap_or_else(|e| panic!("test inventory is invalid: {e}\n{text}")),
        )
    }
}
