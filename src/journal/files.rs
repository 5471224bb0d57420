//! Where journals live and how they are read back.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Record;

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
