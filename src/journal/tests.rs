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

#[test]
fn results_ride_on_the_next_fsync_and_parallel_writers_share_one() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("rollscript.toml");
    let run = new_run_id(&inv);
    let j = Journal::create(&inv, &run, &start(&run), None).unwrap();
    assert_eq!(j.fsyncs(), 1, "the run's start is durable");
    for _ in 0..10 {
        let seq = j.intent("ssh", Some("web-1"), "./deploy.sh").unwrap();
        j.result(seq, std::time::Duration::ZERO, None);
    }
    // One fsync per intent; the results are written, not synced.
    assert_eq!(j.fsyncs(), 11);
    assert_eq!(read(&j.path).unwrap().len(), 21);

    // 8 branches writing at once: every record lands whole, numbered once,
    // and no more fsyncs than intents (fewer when they overlap).
    let j = Arc::new(j);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let inst = format!("web-{t}");
                    let seq = j.intent("deregister", Some(&inst), "drain").unwrap();
                    j.result(seq, std::time::Duration::ZERO, None);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let records = read(&j.path).unwrap();
    assert_eq!(records.len(), 21 + 800);
    let mut seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Intent { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 410);
    assert!(j.fsyncs() <= 11 + 400, "{} fsyncs", j.fsyncs());
    // Every intent has its result after it.
    let s = summarise(&records);
    assert_eq!(s.out_of_service.len(), 8, "{s:?}");
}
