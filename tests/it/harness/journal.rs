//! A run journal as JSON (the file format, not rollscript's own types), and
//! where journals are: `.rollscript/runs/*.jsonl` beside the inventory.

use std::fs;
use std::path::{Path, PathBuf};

/// Every run journal beside `inventory`, oldest first.
pub fn journals_beside(inventory: &Path) -> Vec<PathBuf> {
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

/// The records of the only run journal beside `inventory` (asserts there
/// is exactly one).
pub fn only_journal(inventory: &Path) -> Journal {
    let j = journals_beside(inventory);
    assert_eq!(j.len(), 1, "expected one run journal, found {j:?}");
    Journal::read(&j[0])
}

/// A run journal's records.
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
