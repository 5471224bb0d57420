//! The run journal: one JSON-lines file per run under `.rollscript/runs/`
//! (0600, in a 0700 folder). Every record is written (`write(2)`) before the
//! call returns, so a run killed at any instant leaves a record of exactly
//! which effects it started and which it finished. Every record but an
//! effect's result is also fsynced before it returns: an intent is durable
//! before its effect, even across a power loss. A result rides on the next
//! fsync (the next intent's, or the run's end): lost with the machine, it
//! leaves an intent without a result, which `recover` already reads as
//! "may have happened" and puts back — so results cost no fsync of their
//! own. Branches of a `parallel` batch that write at once share one fsync
//! (group commit): a writer whose line an fsync already covers returns
//! without another. With a shared state backend every record is also stored
//! there ([`crate::state::JournalMirror`]) before the effect.
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

mod files;
mod record;
mod summary;
#[cfg(test)]
mod tests;

pub use files::*;
pub use record::*;
pub use summary::*;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::lock::{create_private_dir, sync_dir};
use crate::primitives::ActionError;
use crate::state::JournalMirror;

pub use crate::redact::redact;

/// The steps that only put back what an earlier record says is out.
fn restores(op: &str) -> bool {
    matches!(
        op,
        "health" | "register" | "wait_in_service" | "reset_weights"
    )
}

struct Inner {
    /// Records written (the next line number of the mirror).
    lines: u64,
}

/// How far the file is durable (group commit).
struct Synced {
    /// Records covered by the last successful fsync.
    upto: u64,
    /// An fsync failed: nothing written after it is known durable, ever.
    failed: Option<String>,
}

/// An open journal of the current run.
pub struct Journal {
    pub run: String,
    pub path: PathBuf,
    file: File,
    inner: Mutex<Inner>,
    /// `inner.lines`, readable without its lock (by [`Self::sync_upto`]).
    written: AtomicU64,
    synced: Mutex<Synced>,
    /// fsyncs done (tests check the group commit with it).
    fsyncs: AtomicU64,
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
            file,
            inner: Mutex::new(Inner { lines }),
            written: AtomicU64::new(lines),
            synced: Mutex::new(Synced {
                upto: lines,
                failed: None,
            }),
            fsyncs: AtomicU64::new(0),
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
        self.write_both(record, true)
            .map_err(|f| std::io::Error::other(self.note_stop(&f)))
    }

    fn write_both(&self, record: &Record, durable: bool) -> Result<(), Failed> {
        let line = serde_json::to_string(record).expect("records serialise") + "\n";
        let mirror = self.mirror.lock().unwrap().clone();
        // One writer at a time end to end, so the line numbers are the file's.
        let mut inner = self.inner.lock().unwrap();
        (&self.file)
            .write_all(line.as_bytes())
            .map_err(|e| Failed::Local(io_text(&e)))?;
        let n = inner.lines;
        inner.lines += 1;
        self.written.store(inner.lines, Ordering::SeqCst);
        let Some(m) = mirror else {
            drop(inner);
            return if durable {
                self.sync_upto(n + 1)
            } else {
                Ok(())
            };
        };
        // With a mirror everything stays in order under the one lock: the
        // local copy durable first, then the shared one.
        if durable {
            self.sync_upto(n + 1)?;
        }
        if let Err(e) = m.append(&self.run, n, line.trim_end()) {
            let why = format!("shared state lost: {}: {e}", m.describe());
            *self.mirror.lock().unwrap() = None;
            *self.mirror_lost.lock().unwrap() = Some(why.clone());
            return Err(Failed::Mirror(why));
        }
        Ok(())
    }

    /// Makes the first `records` lines durable: one fsync covers every line
    /// written before it started, so writers that arrive while one runs
    /// find their line covered and return without their own.
    fn sync_upto(&self, records: u64) -> Result<(), Failed> {
        let mut s = self.synced.lock().unwrap();
        if let Some(why) = &s.failed {
            return Err(Failed::Local(why.clone()));
        }
        if s.upto >= records {
            return Ok(());
        }
        // Every line written so far: this fsync covers them all.
        let written = self.written.load(Ordering::SeqCst).max(records);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        match self.file.sync_data() {
            Ok(()) => {
                s.upto = written;
                Ok(())
            }
            Err(e) => {
                let why = io_text(&e);
                s.failed = Some(why.clone());
                Err(Failed::Local(why))
            }
        }
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
        match self.write_both(&record, true) {
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

    /// Records an effect's result: written at once, durable with the next
    /// fsync (see the module doc for why that is enough).
    pub fn result(&self, seq: u64, duration: std::time::Duration, err: Option<&ActionError>) {
        let record = Record::Result {
            seq,
            at: now(),
            ok: err.is_none(),
            duration_ms: duration.as_millis() as u64,
            error_kind: err.map(|e| e.kind.as_str().to_string()),
            error: err.map(|e| redact(&e.to_string())),
            unknown_outcome: err.is_some_and(|e| e.unknown_outcome),
        };
        if let Err(f) = self.write_both(&record, false) {
            let why = self.note_stop(&f);
            tracing::error!("cannot write journal {}: {why}", self.path.display());
        }
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

    #[cfg(test)]
    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
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
