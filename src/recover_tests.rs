//! `recover`, `unlock` and the durable-or-nothing rule against in-memory
//! fakes: the dead run's `on_compensate` step, a pid reused after a reboot,
//! a live holder and `--force`, a step whose intent cannot be written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use crate::config::Inventory;
use crate::journal::{self, Record};
use crate::lock::{self, Holder};
use crate::primitives::MemberState;
use crate::providers::fake::Fakes;

/// The LB as the dead runs below left it: web-2 deregistered.
fn fakes_after_the_dead_run() -> Fakes {
    let fakes = Fakes::new();
    fakes.lb.park("web-2", MemberState::OutOfService);
    fakes
}
use crate::recover::{recover_with, unlock, RecoverOptions};
use crate::run::Outcome;
use crate::state::{self, LockStatus};

const INVENTORY: &str = r#"
[app]
name = "demo"
deploy = "./deploy.sh"
rollback = "./rollback.sh"
[health]
port = 4000
[lb]
kind = "none"
[[instances]]
name = "web-1"
host = "127.0.0.1"
[[instances]]
name = "web-2"
host = "127.0.0.2"
"#;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rollscript.toml"), INVENTORY).unwrap();
        Self { dir }
    }

    fn inventory(&self) -> PathBuf {
        self.dir.path().join("rollscript.toml")
    }

    fn backend(&self) -> Arc<dyn state::StateBackend> {
        state::open(&Inventory::load(&self.inventory()).unwrap()).unwrap()
    }

    /// A run that deregistered web-2 and started a command on it, then
    /// died; `edit` adjusts its start record.
    fn dead_run(&self, id: &str, edit: impl FnOnce(&mut Record)) {
        let inv = Inventory::load(&self.inventory()).unwrap();
        let identity = state::Identity::of(&inv);
        let me = Holder::me(None);
        let mut start = Record::RunStart {
            run: id.into(),
            at: journal::now(),
            script: "scripts/rolling.rhai".into(),
            script_sha256: String::new(),
            inventory: self.inventory().display().to_string(),
            inventory_sha256: inv.hash.clone(),
            user: "ops".into(),
            host: me.host,
            pid: 4_000_000,
            args: vec![],
            identity: Some(identity.fingerprint),
            inventory_path: Some(identity.path.display().to_string()),
            script_path: None,
            boot_id: me.boot_id,
            proc_start: 0,
            instances: vec![],
        };
        edit(&mut start);
        let lines = [
            serde_json::to_string(&start).unwrap(),
            r#"{"type":"intent","seq":1,"at":"","op":"deregister","instance":"web-2","text":""}"#
                .into(),
            r#"{"type":"result","seq":1,"at":"","ok":true,"duration_ms":1}"#.into(),
            r#"{"type":"intent","seq":2,"at":"","op":"ssh","instance":"web-2","text":""}"#.into(),
        ];
        let dir = journal::runs_dir(&self.inventory());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{id}.jsonl")), lines.join("\n") + "\n").unwrap();
    }

    fn recover(&self, fakes: &Fakes, opts: RecoverOptions) -> Outcome {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let p = fakes.providers();
        rt.block_on(recover_with(&self.inventory(), &opts, move |_| p.clone()))
            .unwrap_or_else(|f| f.outcome)
    }

    /// A script setting an `on_compensate` step, and its sha256.
    fn script(&self, text: &str) -> (PathBuf, String) {
        let path = self.dir.path().join("deploy.rhai");
        std::fs::write(&path, text).unwrap();
        (path, hex::encode(sha2::Sha256::digest(text.as_bytes())))
    }
}

const WITH_HOOK: &str = "on_compensate(|inst| { ssh(inst, \"./undo.sh\"); health(inst); });\n\
                         for i in instances() { deregister(i); wait_drained(i); }\n";

fn with_script(path: &Path, sha: &str) -> impl FnOnce(&mut Record) {
    let (path, sha) = (path.display().to_string(), sha.to_string());
    move |r| {
        if let Record::RunStart {
            script_path,
            script_sha256,
            ..
        } = r
        {
            *script_path = Some(path);
            *script_sha256 = sha;
        }
    }
}

#[test]
fn recover_runs_the_dead_runs_on_compensate_step_when_its_script_is_unchanged() {
    let env = Env::new();
    let (path, sha) = env.script(WITH_HOOK);
    env.dead_run("20260101T000000Z-1", with_script(&path, &sha));
    let fakes = fakes_after_the_dead_run();
    assert_eq!(
        env.recover(&fakes, RecoverOptions::default()),
        Outcome::Success
    );
    // The hook's step on live providers; nothing of the script's own deploy.
    assert_eq!(fakes.ssh.calls.all(), ["ssh web-2: ./undo.sh"]);
    assert_eq!(
        fakes.lb.calls.all(),
        ["register web-2", "wait_in_service web-2"]
    );
    let records = journal::read(&journal::list(&env.inventory())[0]).unwrap();
    assert!(
        records.iter().any(
            |r| matches!(r, Record::Compensation { instance, restored: true, detail, .. }
            if instance == "web-2" && detail.starts_with("the script's on_compensate step passed"))
        ),
        "{records:?}"
    );
}

#[test]
fn recover_uses_the_default_step_when_the_script_changed_since() {
    let env = Env::new();
    let (path, _) = env.script(WITH_HOOK);
    env.dead_run("20260101T000000Z-1", with_script(&path, "0000"));
    let fakes = fakes_after_the_dead_run();
    assert_eq!(
        env.recover(&fakes, RecoverOptions::default()),
        Outcome::Success
    );
    assert_eq!(fakes.ssh.calls.all(), ["ssh web-2: ./rollback.sh"]);
}

#[test]
fn a_pid_reused_after_a_reboot_does_not_make_recover_refuse() {
    let env = Env::new();
    // pid 1 runs now, but the run is from another boot.
    env.dead_run("20260101T000000Z-1", |r| {
        if let Record::RunStart { pid, boot_id, .. } = r {
            *pid = 1;
            *boot_id = "00000000-0000-0000-0000-000000000000".into();
        }
    });
    let fakes = fakes_after_the_dead_run();
    assert_eq!(
        env.recover(&fakes, RecoverOptions::default()),
        Outcome::Success
    );
    assert_eq!(fakes.ssh.calls.all(), ["ssh web-2: ./rollback.sh"]);
}

#[test]
fn a_run_whose_process_may_be_alive_is_refused_and_force_recovers_it() {
    let env = Env::new();
    // A journal of an older rollscript: no boot id, no start time; pid 1 runs.
    env.dead_run("20260101T000000Z-1", |r| {
        if let Record::RunStart { pid, boot_id, .. } = r {
            *pid = 1;
            boot_id.clear();
        }
    });
    let fakes = fakes_after_the_dead_run();
    assert_eq!(
        env.recover(&fakes, RecoverOptions::default()),
        Outcome::Locked
    );
    assert!(fakes.lb.calls.all().is_empty(), "nothing touched");
    let forced = RecoverOptions {
        force: true,
        ..Default::default()
    };
    assert_eq!(env.recover(&fakes, forced), Outcome::Success);
    assert_eq!(fakes.ssh.calls.all(), ["ssh web-2: ./rollback.sh"]);
}

#[test]
fn recover_refuses_while_the_run_holds_its_lock_and_force_takes_the_lock_over() {
    let env = Env::new();
    env.dead_run("20260101T000000Z-1", |_| {});
    // The run's lock, held (its flock taken) by a live holder of that run.
    let backend = env.backend();
    let mut held = backend
        .lock(
            &Holder::me(Some("20260101T000000Z-1".into())),
            Duration::ZERO,
            false,
        )
        .unwrap();
    let fakes = fakes_after_the_dead_run();
    assert_eq!(
        env.recover(&fakes, RecoverOptions::default()),
        Outcome::Locked
    );
    assert!(fakes.lb.calls.all().is_empty(), "nothing touched");

    let forced = RecoverOptions {
        force: true,
        yes: true,
        ..Default::default()
    };
    assert_eq!(env.recover(&fakes, forced), Outcome::Success);
    assert_eq!(
        fakes.lb.calls.all(),
        ["register web-2", "wait_in_service web-2"]
    );
    // The old holder's release leaves nothing behind and takes nothing away.
    held.release();
    assert_eq!(backend.lock_status().unwrap(), None);
    // Idempotent: nothing left to do.
    let again = fakes_after_the_dead_run();
    assert_eq!(
        env.recover(&again, RecoverOptions::default()),
        Outcome::Success
    );
    assert!(again.lb.calls.all().is_empty());
}

#[test]
fn unlock_removes_a_stale_lock_and_needs_force_for_one_that_may_be_live() {
    let env = Env::new();
    let backend = env.backend();
    assert_eq!(
        unlock(&env.inventory(), true, false).unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );

    // Held by a live process (this one): refused without --force.
    let held = backend
        .lock(&Holder::me(Some("r1".into())), Duration::ZERO, false)
        .unwrap();
    assert!(matches!(
        backend.lock_status().unwrap(),
        Some(LockStatus::Live(_))
    ));
    assert_eq!(
        unlock(&env.inventory(), true, false).unwrap_or_else(|f| f.outcome),
        Outcome::Locked
    );
    assert!(backend.lock_status().unwrap().is_some());
    assert_eq!(
        unlock(&env.inventory(), true, true).unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert_eq!(backend.lock_status().unwrap(), None);
    drop(held);

    // Left by a process that is gone: stale, removed without --force.
    let path = state::local::LocalState::new(
        &env.inventory(),
        state::Identity::of(&Inventory::load(&env.inventory()).unwrap()),
    )
    .lock_path();
    let mut dead = Holder::me(Some("r2".into()));
    dead.pid = 4_000_000;
    std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
    assert!(matches!(
        backend.lock_status().unwrap(),
        Some(LockStatus::Stale(_, why)) if why == "that process is no longer running"
    ));
    assert_eq!(
        unlock(&env.inventory(), true, false).unwrap_or_else(|f| f.outcome),
        Outcome::Success
    );
    assert!(!path.exists());
    let _ = lock::file_state(&path);
}

#[test]
fn a_step_whose_intent_cannot_be_written_is_not_done_and_stops_the_run() {
    let inv = Arc::new(Inventory::parse(&PathBuf::from("rollscript.toml"), INVENTORY).unwrap());
    let fakes = Fakes::new();
    let effects = crate::effects::Effects::new(
        inv.clone(),
        fakes.providers(),
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    effects.set_journal(Arc::new(
        journal::Journal::writing_to(Path::new("/dev/full")).unwrap(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(effects.deregister(&inv.instances[0]))
        .unwrap_err();
    assert!(
        e.message
            .starts_with("journal write failed: No space left on device: not done: "),
        "{e}"
    );
    assert_eq!(e.host.as_deref(), Some("web-1"));
    assert!(
        !fakes
            .lb
            .calls
            .all()
            .contains(&"deregister web-1".to_string()),
        "{:?}",
        fakes.lb.calls.all()
    );
    assert!(effects.is_cancelled(), "the run stops");
    assert!(effects.out_of_service().is_empty());
}
