//! The run journal: one JSON-lines file per run under `.rollscript/runs/`
//! (0600, in a 0700 folder), fsynced at every record, so a run killed at any
//! instant leaves a record of exactly which effects it started and which it
//! finished. With a shared state backend every record is also stored there
//! ([`crate::state::JournalMirror`]) before the effect.
//!
//! Durable or nothing: an intent that cannot be written and fsynced (and
//! mirrored) is an error, and the effects layer does not act: the run stops.
//! - The local file failed (a full disk): from then on the steps that only
//!   put back what an earlier record says is out (health, register, the
//!   in-service wait, weights reset) may go ahead unrecorded — recovery never
//!   relies on their records — and every other step is refused.
//! - The mirror failed (the database went away): it is dropped; the step
//!   whose intent it could not store is refused (and marked not done in the
//!   local file), and compensation goes on recorded in the local file alone.
//!
//! Any failed write — also of a result, after its effect — calls the run's
//! [`Journal::on_stop`] at once: the run stops at the next safe point, as on
//! a first Ctrl-C, and compensates.
//!
//! `rollscript recover` reads journals back to decide which instances a dead
//! run left out of service; `rollscript runs` lists and shows runs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::lock::{create_private_dir, sync_dir};
use crate::primitives::ActionError;
use crate::state::JournalMirror;

pub use crate::redact::redact;

/// One line of the journal.
// One run start per journal: boxing it would only complicate building one.
#[allow(clippy::large_enum_variant)]
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
        /// The inventory's fingerprint ([`crate::state::Identity`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        /// The inventory file, canonical.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inventory_path: Option<String>,
        /// The script, canonical: `recover` compiles it for its `on_compensate`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        script_path: Option<String>,
        /// The process's boot and start (see [`crate::lock::Holder`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        boot_id: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        proc_start: u64,
        /// With `lb.discover = true`: the fleet the run found, so `recover`
        /// knows a member that has left the target group since.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        instances: Vec<KnownInstance>,
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
    /// An operator's say in the run: `pause`, `resume`, `abort`, `promote`
    /// (from `rollscript …`, any machine) or the answer to an `approval`.
    Control {
        at: String,
        command: String,
        /// `user@host`.
        by: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
}

/// An instance as a run knew it (discovered ones are in no inventory file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KnownInstance {
    pub name: String,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl From<&crate::config::Instance> for KnownInstance {
    fn from(i: &crate::config::Instance) -> Self {
        Self {
            name: i.name.clone(),
            host: i.host.clone(),
            port: i.port,
            ssh_port: i.ssh_port,
            health_port: i.health_port,
            id: i.id.clone(),
            pool: i.pool.clone(),
            weight: i.weight,
        }
    }
}

impl From<KnownInstance> for crate::config::Instance {
    fn from(k: KnownInstance) -> Self {
        Self {
            name: k.name,
            host: k.host,
            port: k.port,
            ssh_port: k.ssh_port,
            health_port: k.health_port,
            id: k.id,
            pool: k.pool,
            weight: k.weight,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `.rollscript/` beside the inventory: the local state of the inventories
/// in that folder.
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

/// Run ids handed out by this process (two runs within a second: tests,
/// `recover` then `run`).
static ISSUED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A new run id, `<UTC time>-<pid>`, unique in `runs_dir` and this process.
pub fn new_run_id(inventory: &Path) -> String {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let base = format!("{stamp}-{}", std::process::id());
    let dir = runs_dir(inventory);
    let mut issued = ISSUED.lock().unwrap();
    let mut n = 0;
    loop {
        let run = if n == 0 {
            base.clone()
        } else {
            format!("{base}.{n}")
        };
        if !issued.contains(&run) && !dir.join(format!("{run}.jsonl")).exists() {
            issued.push(run.clone());
            return run;
        }
        n += 1;
    }
}

/// The run id of a journal file (its stem).
pub fn run_id_of(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// The steps that only put back what an earlier record says is out.
fn restores(op: &str) -> bool {
    matches!(
        op,
        "health" | "register" | "wait_in_service" | "reset_weights"
    )
}

struct Inner {
    file: File,
    /// Records written (the next line number of the mirror).
    lines: u64,
}

/// An open journal of the current run.
pub struct Journal {
    pub run: String,
    pub path: PathBuf,
    inner: Mutex<Inner>,
    seq: AtomicU64,
    mirror: Mutex<Option<Arc<dyn JournalMirror>>>,
    /// Why the mirror was dropped.
    mirror_lost: Mutex<Option<String>>,
    /// Why the run is stopping, once a write failed.
    stop: Mutex<Option<Stop>>,
    on_stop: Mutex<Option<StopFn>>,
}

type StopFn = Box<dyn Fn(String) + Send + Sync>;

struct Stop {
    why: String,
    /// The local file failed (not only the mirror).
    local: bool,
}

/// Which copy a write failed on.
enum Failed {
    Local(String),
    Mirror(String),
}

impl Journal {
    /// Creates `runs/<run>.jsonl` (and its folders, 0700) and writes the
    /// run-start record, locally and to `mirror`.
    pub fn create(
        inventory: &Path,
        run: &str,
        start: &Record,
        mirror: Option<Arc<dyn JournalMirror>>,
    ) -> std::io::Result<Self> {
        let dir = runs_dir(inventory);
        create_private_dir(&dir)?;
        let path = dir.join(format!("{run}.jsonl"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        sync_dir(&dir)?;
        let j = Self::open(run, path, file, 0, 0, mirror);
        j.write(start)?;
        Ok(j)
    }

    /// Opens an existing journal to add records (`recover`). The mirror
    /// first gets the records it lacks (written while it was unreachable).
    pub fn append(path: &Path, mirror: Option<Arc<dyn JournalMirror>>) -> std::io::Result<Self> {
        let lines = read_lines(path)?;
        let records = parse_lines(lines.iter().map(String::as_str));
        let last_seq = records
            .iter()
            .filter_map(|r| match r {
                Record::Intent { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let run = run_id_of(path);
        if let Some(m) = &mirror {
            let have = m.count(&run).map_err(std::io::Error::other)?;
            for (n, line) in lines.iter().enumerate().skip(have as usize) {
                m.append(&run, n as u64, line)
                    .map_err(std::io::Error::other)?;
            }
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self::open(
            &run,
            path.to_path_buf(),
            file,
            lines.len() as u64,
            last_seq,
            mirror,
        ))
    }

    /// Makes `lines` (a run stored elsewhere) this machine's local journal
    /// of `run`, unless the local one already has as many, and opens it.
    pub fn adopt(
        inventory: &Path,
        run: &str,
        lines: &[String],
        mirror: Option<Arc<dyn JournalMirror>>,
    ) -> std::io::Result<Self> {
        let dir = runs_dir(inventory);
        create_private_dir(&dir)?;
        let path = dir.join(format!("{run}.jsonl"));
        let have = read_lines(&path).map(|l| l.len()).unwrap_or(0);
        if have < lines.len() {
            let tmp = dir.join(format!(".{run}.jsonl.{}", std::process::id()));
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            for l in lines {
                f.write_all(l.as_bytes())?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&dir)?;
        }
        Self::append(&path, mirror)
    }

    fn open(
        run: &str,
        path: PathBuf,
        file: File,
        lines: u64,
        seq: u64,
        mirror: Option<Arc<dyn JournalMirror>>,
    ) -> Self {
        Self {
            run: run.to_string(),
            path,
            inner: Mutex::new(Inner { file, lines }),
            seq: AtomicU64::new(seq),
            mirror: Mutex::new(mirror),
            mirror_lost: Mutex::new(None),
            stop: Mutex::new(None),
            on_stop: Mutex::new(None),
        }
    }

    /// A journal appending to `path` as it is (tests: `/dev/full`).
    #[cfg(test)]
    pub(crate) fn writing_to(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self::open("test", path.to_path_buf(), file, 1, 0, None))
    }

    /// Calls `f` (once) when a write first fails: the run must stop.
    pub fn on_stop(&self, f: StopFn) {
        *self.on_stop.lock().unwrap() = Some(f);
    }

    /// Appends `record` and makes it durable before returning — fsynced
    /// locally, then stored by the mirror: the record of an intent must
    /// exist before the effect can happen.
    pub fn write(&self, record: &Record) -> std::io::Result<()> {
        self.write_both(record)
            .map_err(|f| std::io::Error::other(self.note_stop(&f)))
    }

    fn write_both(&self, record: &Record) -> Result<(), Failed> {
        let line = serde_json::to_string(record).expect("records serialise");
        // One writer at a time end to end, so the mirror's line numbers are
        // the file's.
        let mut inner = self.inner.lock().unwrap();
        let local = inner
            .file
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| inner.file.sync_data());
        local.map_err(|e| Failed::Local(io_text(&e)))?;
        let n = inner.lines;
        inner.lines += 1;
        let mirror = self.mirror.lock().unwrap().clone();
        if let Some(m) = mirror {
            if let Err(e) = m.append(&self.run, n, &line) {
                let why = format!("shared state lost: {}: {e}", m.describe());
                *self.mirror.lock().unwrap() = None;
                *self.mirror_lost.lock().unwrap() = Some(why.clone());
                return Err(Failed::Mirror(why));
            }
        }
        Ok(())
    }

    /// Records why the run must stop (the first reason wins; a local failure
    /// after a mirror one makes the stop local), telling the run the first
    /// time. Returns the failure's text.
    fn note_stop(&self, f: &Failed) -> String {
        let (why, local) = match f {
            Failed::Local(w) => (w.clone(), true),
            Failed::Mirror(w) => (w.clone(), false),
        };
        let first = {
            let mut stop = self.stop.lock().unwrap();
            let first = stop.is_none();
            let s = stop.get_or_insert_with(|| Stop {
                why: why.clone(),
                local,
            });
            s.local |= local;
            first
        };
        if first {
            if let Some(f) = &*self.on_stop.lock().unwrap() {
                f(why.clone());
            }
        }
        why
    }

    /// Records an intent; returns its sequence number for [`Self::result`].
    /// An error means the effect must not happen (see the module doc).
    pub fn intent(&self, op: &str, instance: Option<&str>, text: &str) -> std::io::Result<u64> {
        let refuse = |why: &str| std::io::Error::other(why.to_string());
        if let Some(s) = &*self.stop.lock().unwrap() {
            if s.local && !restores(op) {
                return Err(refuse(&s.why));
            }
        }
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let record = Record::Intent {
            seq,
            at: now(),
            op: op.to_string(),
            instance: instance.map(String::from),
            text: redact(text),
        };
        match self.write_both(&record) {
            Ok(()) => Ok(seq),
            Err(f @ Failed::Mirror(_)) => {
                // Durable here, done nowhere: the local file says so.
                let why = self.note_stop(&f);
                self.best_effort(&Record::Result {
                    seq,
                    at: now(),
                    ok: false,
                    duration_ms: 0,
                    error_kind: Some("cancelled".into()),
                    error: Some(format!("not done: {why}")),
                    unknown_outcome: false,
                });
                Err(refuse(&why))
            }
            Err(f @ Failed::Local(_)) => {
                let stopping = self.stop.lock().unwrap().is_some();
                let why = self.note_stop(&f);
                if stopping && restores(op) {
                    tracing::error!(
                        "cannot write journal {}: {why} — {op} goes ahead unrecorded: it only puts back what the journal says is out",
                        self.path.display()
                    );
                    Ok(seq)
                } else {
                    Err(refuse(&why))
                }
            }
        }
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

    /// For records that follow an effect (results, compensation, the run's
    /// end): a failure is loud but cannot un-happen the effect.
    pub fn best_effort(&self, record: &Record) {
        if let Err(e) = self.write(record) {
            tracing::error!(
                "cannot write journal {}: {}",
                self.path.display(),
                io_text(&e)
            );
        }
    }

    /// Why the run stopped (or must): a record could not be written.
    pub fn stopped(&self) -> Option<String> {
        self.stop.lock().unwrap().as_ref().map(|s| s.why.clone())
    }

    /// Why the shared copy was dropped, if it was.
    pub fn mirror_lost(&self) -> Option<String> {
        self.mirror_lost.lock().unwrap().clone()
    }
}

/// An io error without Rust's "(os error 28)" suffix:
/// `No space left on device`.
pub fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Reads every record of a journal; a torn last line (power loss mid-write)
/// is ignored rather than fatal.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    Ok(parse_lines(read_lines(path)?.iter().map(String::as_str)))
}

/// The non-blank lines of a journal, as written.
pub fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    let f = File::open(path)?;
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            out.push(line);
        }
    }
    Ok(out)
}

/// Records of journal lines; lines that are no record (torn) are skipped.
pub fn parse_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Record> {
    lines
        .into_iter()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .collect()
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

/// What a journal says about its run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub run: String,
    pub started: String,
    pub script: String,
    pub inventory: String,
    pub pid: u32,
    pub host: String,
    pub user: String,
    pub args: Vec<String>,
    pub script_sha256: String,
    pub inventory_sha256: String,
    pub identity: Option<String>,
    pub inventory_path: Option<String>,
    pub script_path: Option<String>,
    pub boot_id: String,
    pub proc_start: u64,
    /// The fleet a discovering run found.
    pub instances: Vec<KnownInstance>,
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
                script_sha256,
                inventory,
                inventory_sha256,
                user,
                host,
                pid,
                args,
                identity,
                inventory_path,
                script_path,
                boot_id,
                proc_start,
                instances,
            } => {
                s.instances = instances.clone();
                s.run = run.clone();
                s.started = at.clone();
                s.script = script.clone();
                s.script_sha256 = script_sha256.clone();
                s.inventory = inventory.clone();
                s.inventory_sha256 = inventory_sha256.clone();
                s.user = user.clone();
                s.pid = *pid;
                s.host = host.clone();
                s.args = args.clone();
                s.identity = identity.clone();
                s.inventory_path = inventory_path.clone();
                s.script_path = script_path.clone();
                s.boot_id = boot_id.clone();
                s.proc_start = *proc_start;
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
            Record::Result { .. } | Record::Control { .. } => {}
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

    fn start(run: &str) -> Record {
        Record::RunStart {
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
            identity: None,
            inventory_path: None,
            script_path: None,
            boot_id: String::new(),
            proc_start: 0,
            instances: vec![],
        }
    }

    #[test]
    fn journal_round_trips_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("rollscript.toml");
        let run = new_run_id(&inv);
        let j = Journal::create(&inv, &run, &start(&run), None).unwrap();
        let seq = j
            .intent("deregister", Some("web-1"), "haproxy be/web-1: drain")
            .unwrap();
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
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&j.path), 0o600);
        assert_eq!(mode(&runs_dir(&inv)), 0o700);
        assert_eq!(mode(&state_dir(&inv)), 0o700);
        assert_ne!(new_run_id(&inv), run, "ids are unique within a process");
    }

    /// A journal whose file is /dev/full: every write fails with ENOSPC.
    fn full_journal() -> Journal {
        Journal::writing_to(Path::new("/dev/full")).unwrap()
    }

    #[test]
    fn an_intent_that_cannot_be_written_is_an_error_and_then_only_restoring_steps_go_ahead() {
        let j = full_journal();
        let e = j.intent("deregister", Some("web-1"), "drain").unwrap_err();
        assert_eq!(io_text(&e), "No space left on device");
        assert_eq!(j.stopped().as_deref(), Some("No space left on device"));
        // Stopping: putting back goes ahead unrecorded, nothing else does.
        assert!(j.intent("health", Some("web-1"), "GET").is_ok());
        assert!(j.intent("register", Some("web-1"), "ready").is_ok());
        assert!(j.intent("ssh", Some("web-1"), "./rollback.sh").is_err());
        // Before any intent failed, even a restoring step needs its record.
        let j = full_journal();
        assert!(j.intent("register", Some("web-1"), "ready").is_err());
    }

    struct Mirror {
        lines: Mutex<Vec<(String, u64, String)>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl JournalMirror for Mirror {
        fn describe(&self) -> String {
            "postgres://db/rs".into()
        }
        fn count(&self, run: &str) -> Result<u64, String> {
            Ok(self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.0 == run)
                .count() as u64)
        }
        fn append(&self, run: &str, line: u64, text: &str) -> Result<(), String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("connection closed".into());
            }
            self.lines
                .lock()
                .unwrap()
                .push((run.into(), line, text.into()));
            Ok(())
        }
    }

    #[test]
    fn a_mirror_gets_every_line_and_once_lost_the_run_stops_and_goes_on_locally() {
        let dir = tempfile::tempdir().unwrap();
        let inv = dir.path().join("rollscript.toml");
        let m = Arc::new(Mirror {
            lines: Mutex::new(Vec::new()),
            fail: false.into(),
        });
        let run = new_run_id(&inv);
        let j = Journal::create(&inv, &run, &start(&run), Some(m.clone())).unwrap();
        let seq = j.intent("deregister", Some("web-1"), "drain").unwrap();
        j.result(seq, std::time::Duration::ZERO, None);
        let local = read_lines(&j.path).unwrap();
        let mirrored: Vec<String> = m
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.2.clone())
            .collect();
        assert_eq!(mirrored, local);
        assert_eq!(
            m.lines
                .lock()
                .unwrap()
                .iter()
                .map(|l| l.1)
                .collect::<Vec<_>>(),
            [0, 1, 2]
        );

        m.fail.store(true, Ordering::SeqCst);
        let e = j.intent("ssh", Some("web-1"), "./deploy.sh").unwrap_err();
        assert_eq!(
            e.to_string(),
            "shared state lost: postgres://db/rs: connection closed"
        );
        assert_eq!(j.mirror_lost(), Some(e.to_string()));
        // The refused intent is written locally with a "not done" result:
        // recovery does not count it as done.
        let records = read(&j.path).unwrap();
        assert!(
            matches!(&records[4], Record::Result { seq: 2, ok: false, error: Some(e), .. } if e.starts_with("not done: shared state lost")),
            "{records:?}"
        );
        // Compensation goes on, recorded locally only.
        assert!(j.intent("ssh", Some("web-1"), "./rollback.sh").is_ok());
        assert_eq!(read_lines(&j.path).unwrap().len(), 6);
        assert_eq!(m.count(&run).unwrap(), 3);

        // Reopened with the mirror back: it first gets what it missed.
        m.fail.store(false, Ordering::SeqCst);
        drop(j);
        let j = Journal::append(
            &runs_dir(&inv).join(format!("{run}.jsonl")),
            Some(m.clone()),
        )
        .unwrap();
        assert_eq!(m.count(&run).unwrap(), 6);
        assert_eq!(j.intent("health", Some("web-1"), "GET").unwrap(), 4);
        assert_eq!(m.count(&run).unwrap(), 7);
    }
}
