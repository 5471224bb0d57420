//! The run journal: one JSON-lines file per run under `.rollscript/runs/`,
//! flushed and fsynced at every record, so a run killed at any instant leaves
//! a record of exactly which effects it started and which it finished.
//!
//! `rollscript recover` reads it back to decide which instances a dead run
//! left out of service; `rollscript runs` lists and shows runs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::primitives::ActionError;

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    RunStart {
        run: String,
        at: String,
        script: String,
        script_sha256: String,
        inventory: String,
        inventory_sha256: String,
        user: String,
        host: String,
        pid: u32,
        args: Vec<String>,
    },
    /// Written before an effect acts.
    Intent {
        seq: u64,
        at: String,
        op: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        instance: Option<String>,
        text: String,
    },
    /// Written after it finished.
    Result {
        seq: u64,
        at: String,
        ok: bool,
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        error_kind: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        error: Option<String>,
        /// The effect failed but may have taken place (a load-balancer request
        /// sent, its answer lost): treated as done until the LB says otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unknown_outcome: bool,
    },
    /// An instance's fate after a failure, interruption or `recover`.
    Compensation {
        at: String,
        instance: String,
        restored: bool,
        detail: String,
        /// The rollback ran and succeeded: a later `recover` must not run it again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rolled_back: bool,
    },
    RunEnd {
        at: String,
        outcome: String,
        #[serde(default)]
        left_out: Vec<String>,
        #[serde(default)]
        failed: Vec<String>,
    },
}

pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `.rollscript/` beside the inventory: one state folder per inventory.
pub fn state_dir(inventory: &Path) -> PathBuf {
    let dir = inventory
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(".rollscript")
}

pub fn runs_dir(inventory: &Path) -> PathBuf {
    state_dir(inventory).join("runs")
}

/// An open journal of the current run.
pub struct Journal {
    pub run: String,
    pub path: PathBuf,
    file: Mutex<File>,
    seq: AtomicU64,
}

impl Journal {
    /// Creates `runs/<id>.jsonl` and writes the run-start record.
    pub fn create(inventory: &Path, start: impl FnOnce(&str) -> Record) -> std::io::Result<Self> {
        let dir = runs_dir(inventory);
        std::fs::create_dir_all(&dir)?;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let base = format!("{stamp}-{}", std::process::id());
        // Two runs from one process within a second (tests, `recover` then
        // `run`) get a suffix rather than sharing a journal.
        let mut n = 0;
        let (run, path, file) = loop {
            let run = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let path = dir.join(format!("{run}.jsonl"));
            match OpenOptions::new().create_new(true).append(true).open(&path) {
                Ok(file) => break (run, path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        };
        let j = Self {
            run: run.clone(),
            path,
            file: Mutex::new(file),
            seq: AtomicU64::new(0),
        };
        j.write(&start(&run))?;
        Ok(j)
    }

    /// Opens an existing journal to add records (`recover`).
    pub fn append(path: &Path) -> std::io::Result<Self> {
        let records = read(path)?;
        let last_seq = records
            .iter()
            .filter_map(|r| match r {
                Record::Intent { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let run = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            run,
            path: path.to_path_buf(),
            file: Mutex::new(file),
            seq: AtomicU64::new(last_seq),
        })
    }

    /// Appends `record` and makes it durable before returning: the record of
    /// an intent must exist before the effect can happen.
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_string(record).expect("records serialise");
        line.push('\n');
        let mut f = self.file.lock().unwrap();
        f.write_all(line.as_bytes())?;
        f.sync_data()
    }

    /// Records an intent; returns its sequence number for [`Self::result`].
    pub fn intent(&self, op: &str, instance: Option<&str>, text: &str) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.best_effort(&Record::Intent {
            seq,
            at: now(),
            op: op.to_string(),
            instance: instance.map(String::from),
            text: redact(text),
        });
        seq
    }

    pub fn result(&self, seq: u64, duration: std::time::Duration, err: Option<&ActionError>) {
        self.best_effort(&Record::Result {
            seq,
            at: now(),
            ok: err.is_none(),
            duration_ms: duration.as_millis() as u64,
            error_kind: err.map(|e| e.kind.as_str().to_string()),
            error: err.map(|e| redact(&e.to_string())),
            unknown_outcome: err.is_some_and(|e| e.unknown_outcome),
        });
    }

    /// A journal that cannot be written is loud but does not abort a deploy
    /// halfway (which would be worse); it is checked at creation.
    pub fn best_effort(&self, record: &Record) {
        if let Err(e) = self.write(record) {
            tracing::error!("cannot write journal {}: {e}", self.path.display());
        }
    }
}

/// Masks secrets that may appear in command lines or errors: passwords in
/// URLs (`postgres://user:secret@db`) and AWS keys.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // user:password@ inside a URL authority.
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    redact_aws_keys(&out)
}

fn redact_aws_keys(text: &str) -> String {
    // Access key ids: AKIA/ASIA + 16 upper-case alphanumerics.
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let is_key = i + 20 <= bytes.len()
            && (text[i..].starts_with("AKIA") || text[i..].starts_with("ASIA"))
            && bytes[i + 4..i + 20]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if is_key {
            out.push_str(&text[i..i + 4]);
            out.push_str("****************");
            i += 20;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    // Secret keys after an obvious name.
    for name in ["AWS_SECRET_ACCESS_KEY=", "aws_secret_access_key="] {
        if let Some(pos) = out.find(name) {
            let start = pos + name.len();
            let end = out[start..]
                .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
        }
    }
    out
}

/// Reads every record of a journal; a torn last line (power loss mid-write)
/// is ignored rather than fatal.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Every journal under `inventory`'s state folder, oldest first.
pub fn list(inventory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(runs_dir(inventory))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The journal of run `id` (or a unique prefix of it).
pub fn find(inventory: &Path, id: &str) -> Option<PathBuf> {
    let matches: Vec<PathBuf> = list(inventory)
        .into_iter()
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| s.starts_with(id))
        })
        .collect();
    if matches.len() == 1 {
        matches.into_iter().next()
    } else {
        None
    }
}

/// What a journal says about its run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub run: String,
    pub started: String,
    pub script: String,
    pub inventory: String,
    pub pid: u32,
    pub host: String,
    /// None while unfinished (running, or killed).
    pub outcome: Option<String>,
    /// Instances whose removal from the LB was started and not undone, in order.
    pub out_of_service: Vec<String>,
    /// Of those, the ones on which a command ran after removal (a deploy may
    /// be half done: compensation runs the rollback on them).
    pub touched: Vec<String>,
    /// Of those, the ones registered again whose return the LB had not yet
    /// confirmed (`wait_in_service`): compensation asks the LB first.
    pub registered: Vec<String>,
    pub failed: Vec<String>,
    pub left_out: Vec<String>,
    pub effects: usize,
    /// LB weights were changed (`shift_traffic`, `set_weight`) and neither
    /// reset nor settled by the run's end: a killed run's weights.
    pub weights_changed: bool,
}

/// Replays a journal. An intent without a result counts as done: a deregister
/// that may have happened must be treated as if it did.
pub fn summarise(records: &[Record]) -> Summary {
    use std::collections::{BTreeMap, BTreeSet};
    let mut s = Summary::default();
    let mut intents: BTreeMap<u64, (String, Option<String>)> = BTreeMap::new();
    let mut out: Vec<String> = Vec::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut results: BTreeMap<u64, bool> = BTreeMap::new();
    let mut never_started: BTreeSet<u64> = BTreeSet::new();
    let mut maybe_applied: BTreeSet<u64> = BTreeSet::new();
    let mut registered: BTreeSet<String> = BTreeSet::new();
    for r in records {
        if let Record::Result {
            seq,
            ok,
            error_kind,
            unknown_outcome,
            ..
        } = r
        {
            results.insert(*seq, *ok);
            if *unknown_outcome {
                maybe_applied.insert(*seq);
            }
            let not_run = crate::primitives::ErrorKind::ALL
                .iter()
                .any(|k| Some(k.as_str()) == error_kind.as_deref() && k.command_never_started());
            if not_run {
                never_started.insert(*seq);
            }
        }
    }
    for r in records {
        match r {
            Record::RunStart {
                run,
                at,
                script,
                inventory,
                pid,
                host,
                ..
            } => {
                s.run = run.clone();
                s.started = at.clone();
                s.script = script.clone();
                s.inventory = inventory.clone();
                s.pid = *pid;
                s.host = host.clone();
            }
            Record::Intent {
                seq, op, instance, ..
            } => {
                s.effects += 1;
                intents.insert(*seq, (op.clone(), instance.clone()));
                match op.as_str() {
                    "shift_traffic" => s.weights_changed = true,
                    "reset_weights" if results.get(seq) == Some(&true) => s.weights_changed = false,
                    _ => {}
                }
                let Some(inst) = instance else { continue };
                let ok = results.get(seq).copied();
                match op.as_str() {
                    // A deregister that may have happened counts as done.
                    "deregister"
                        if (ok != Some(false) || maybe_applied.contains(seq))
                            && !out.contains(inst) =>
                    {
                        out.push(inst.clone());
                        registered.remove(inst);
                    }
                    "register" if ok == Some(true) && out.contains(inst) => {
                        registered.insert(inst.clone());
                    }
                    // Back only once the LB confirmed it in service.
                    "wait_in_service" if ok == Some(true) && registered.contains(inst) => {
                        out.retain(|i| i != inst);
                        touched.remove(inst);
                        registered.remove(inst);
                    }
                    "ssh" if out.contains(inst) && !never_started.contains(seq) => {
                        touched.insert(inst.clone());
                    }
                    "set_weight" => s.weights_changed = true,
                    _ => {}
                }
                if ok == Some(false) {
                    failed.insert(inst.clone());
                }
            }
            Record::Compensation {
                instance,
                restored,
                rolled_back,
                ..
            } => {
                if *restored {
                    out.retain(|i| i != instance);
                    registered.remove(instance);
                }
                if *restored || *rolled_back {
                    touched.remove(instance);
                }
            }
            Record::RunEnd {
                outcome, left_out, ..
            } => {
                s.outcome = Some(outcome.clone());
                s.left_out = left_out.clone();
                // A run that ended reset its weights on failure, or kept
                // them on purpose.
                s.weights_changed = false;
            }
            Record::Result { .. } => {}
        }
    }
    s.touched = out
        .iter()
        .filter(|i| touched.contains(*i))
        .cloned()
        .collect();
    s.registered = out
        .iter()
        .filter(|i| registered.contains(*i))
        .cloned()
        .collect();
    s.out_of_service = out;
    s.failed = failed.into_iter().collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(seq: u64, op: &str, inst: &str) -> Record {
        Record::Intent {
            seq,
            at: String::new(),
            op: op.into(),
            instance: Some(inst.into()),
            text: String::new(),
        }
    }

    fn result(seq: u64, ok: bool) -> Record {
        Record::Result {
            seq,
            at: String::new(),
            ok,
            duration_ms: 0,
            error_kind: None,
            error: None,
            unknown_outcome: false,
        }
    }

    #[test]
    fn a_deregister_without_result_counts_as_out() {
        let s = summarise(&[
            intent(1, "deregister", "web-1"),
            result(1, true),
            intent(2, "ssh", "web-1"),
            result(2, true),
            intent(3, "register", "web-1"),
            result(3, true),
            intent(6, "wait_in_service", "web-1"),
            result(6, true),
            intent(4, "deregister", "web-2"),
            intent(5, "ssh", "web-2"),
        ]);
        assert_eq!(s.out_of_service, vec!["web-2"]);
        assert_eq!(s.touched, vec!["web-2"]);
        assert_eq!(s.outcome, None);
    }

    #[test]
    fn a_failed_deregister_left_it_in_and_a_failed_register_left_it_out() {
        let s = summarise(&[
            intent(1, "deregister", "web-1"),
            result(1, false),
            intent(2, "deregister", "web-2"),
            result(2, true),
            intent(3, "register", "web-2"),
            result(3, false),
        ]);
        assert_eq!(s.out_of_service, vec!["web-2"]);
        assert_eq!(s.touched, Vec::<String>::new());
        assert_eq!(s.failed, vec!["web-1", "web-2"]);
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact("psql postgres://deploy:hunter2@db:5432/app -c 'select 1'"),
            "psql postgres://deploy:***@db:5432/app -c 'select 1'"
        );
        assert_eq!(
            redact("key AKIAIOSFODNN7EXAMPLE used"),
            "key AKIA**************** used"
        );
        assert_eq!(
            redact("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG run"),
            "AWS_SECRET_ACCESS_KEY=*** run"
        );
        assert_eq!(
            redact("http://example.com/a:b@c"),
            "http://example.com/a:b@c"
        );
    }

    #[test]
    fn journal_round_trips_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("rollscript.toml");
        let j = Journal::create(&inv, |run| Record::RunStart {
            run: run.into(),
            at: now(),
            script: "s.rhai".into(),
            script_sha256: String::new(),
            inventory: "rollscript.toml".into(),
            inventory_sha256: String::new(),
            user: "u".into(),
            host: "h".into(),
            pid: 1,
            args: vec![],
        })
        .unwrap();
        let seq = j.intent("deregister", Some("web-1"), "haproxy be/web-1: drain");
        j.result(seq, std::time::Duration::from_millis(3), None);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"{\"type\":\"intent\",\"se")
            .unwrap();
        let records = read(&j.path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(summarise(&records).out_of_service, vec!["web-1"]);
        assert_eq!(find(&inv, &j.run[..10]).as_deref(), Some(j.path.as_path()));
    }
}
