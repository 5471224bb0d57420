//! The inventory of a test fleet ([`super::fleet::Fleet::inventory`]), as
//! text to adjust and write: the fleet's own deploy, rollback, ssh keys and
//! LB, with setters for what a test changes (min_in_service, a wrapper as
//! `app.deploy`, a key in any section, a key of one instance).

use std::fs;
use std::path::{Path, PathBuf};

use super::fleet::AppInstance;
use super::sshd::toml_str;

/// Inventory text for a fleet; every path absolute, so it can be written
/// anywhere (two runs need two directories: the deploy lock and the
/// journal live beside the inventory).
#[derive(Clone)]
pub struct FleetInventory {
    pub(super) deploy: String,
    pub(super) rollback: String,
    pub(super) migrate: Option<String>,
    pub(super) database: Option<String>,
    pub(super) min_in_service: Option<usize>,
    pub(super) only: Option<Vec<String>>,
    pub(super) lb: String,
    /// Further load balancers (`kind`, `socket`, … lines): with any, every
    /// LB is written as an `[[lb]]` entry, `lb` overrides applied to each.
    pub(super) extra_lbs: Vec<String>,
    pub(super) pool_key: String,
    pub(super) ssh: String,
    pub(super) instances: Vec<AppInstance>,
    /// `(section, key, TOML value)` set over what the fleet would write.
    pub(super) overrides: Vec<(String, String, String)>,
    /// `(instance, key, TOML value)` set over its `[[instances]]` entry.
    pub(super) instance_overrides: Vec<(String, String, String)>,
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

    /// The `[lb]` keys that say which LB it is (default: the fleet's
    /// HAProxy or nginx), e.g. an ELBv2 target group in moto.
    pub fn lb_section(mut self, keys: &str) -> Self {
        self.lb = keys.to_string();
        self
    }

    /// `app.rollback` (default: the fleet's bin/rollback.sh).
    pub fn rollback(mut self, cmd: &str) -> Self {
        self.rollback = cmd.to_string();
        self
    }

    /// Sets `key = value` (`value` is TOML: `"\"x\""`, `"3"`) in `[section]`
    /// (`app`, `ssh`, `health`, `lb`), replacing what the fleet would write there.
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
        let health = "path = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nretries = 30\nhealthy_threshold = 2\n";
        t.push_str(&format!("[health]\n{}\n", self.section("health", health)));
        let min = self
            .min_in_service
            .unwrap_or_else(|| selected.len().saturating_sub(1).max(1));
        let common = format!(
            "drain_timeout = \"30s\"\nregister_timeout = \"30s\"\nmin_in_service = {min}\n"
        );
        if self.extra_lbs.is_empty() {
            let lb = format!("{}{common}", self.lb);
            t.push_str(&format!("[lb]\n{}\n", self.section("lb", &lb)));
        } else {
            // min_in_service bounds the fleet: the first entry only.
            let rest = "drain_timeout = \"30s\"\nregister_timeout = \"30s\"\n";
            for (i, body) in std::iter::once(&self.lb).chain(&self.extra_lbs).enumerate() {
                let lb = format!("{body}{}", if i == 0 { common.as_str() } else { rest });
                t.push_str(&format!("[[lb]]\n{}\n", self.section("lb", &lb)));
            }
        }
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
