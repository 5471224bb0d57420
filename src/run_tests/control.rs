//! Where `pause`, `abort`, `promote` and `approval` act, against fakes: the
//! safe points (a pause holds only with every instance in service), the
//! abort that lets a rollback through but takes no new instance out, a bake
//! a promote ends, and approvals answered from the control channel.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Inventory;
use crate::effects::Effects;
use crate::plan::Recorder;
use crate::primitives::{Cmd, ErrorKind};
use crate::providers::fake::Fakes;
use crate::state::control::{Command, Request};

fn effects(fakes: &Fakes, recorder: Option<Arc<Recorder>>) -> (tempfile::TempDir, Arc<Effects>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollscript.toml");
    std::fs::write(
        &path,
        super::INVENTORY.replace("MIN", "1").replace(
            "kind = \"none\"",
            "kind = \"haproxy\"\nsocket = \"/run/haproxy.sock\"\nbackend = \"demo\"",
        ),
    )
    .unwrap();
    let inv = Arc::new(Inventory::load(&path).unwrap());
    let e = Effects::new(inv, fakes.providers(), recorder, CancellationToken::new());
    (dir, Arc::new(e))
}

fn say(e: &Effects, command: Command) {
    e.control().apply(&Request {
        command,
        by: "ops@laptop".into(),
        at: String::new(),
    });
}

/// Lets the other tasks run until they block (time is real and short).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One instance's full cycle: out, deployed, back in service.
async fn cycle(e: &Effects, name: &str) {
    let inst = e.inventory.instance(name).unwrap().clone();
    e.deregister(&inst).await.unwrap();
    e.ssh(&inst, &Cmd::Shell("./deploy.sh".into()), Default::default())
        .await
        .unwrap();
    e.register(&inst).await.unwrap();
    e.wait_in_service(&inst).await.unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_pause_holds_before_the_next_instance_is_taken_out_and_resume_lets_it_go() {
    let fakes = Fakes::new();
    let (_dir, e) = effects(&fakes, None);
    rt().block_on(async {
        say(&e, Command::Pause);
        let e2 = e.clone();
        let next = tokio::spawn(async move { cycle(&e2, "web-1").await });
        settle().await;
        assert!(!next.is_finished(), "held while paused");
        assert!(
            !fakes
                .lb
                .calls
                .all()
                .iter()
                .any(|c| c.starts_with("deregister")),
            "nothing taken out while paused: {:?}",
            fakes.lb.calls.all()
        );
        say(&e, Command::Resume);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("resume lets it go")
            .unwrap();
        assert!(fakes
            .lb
            .calls
            .all()
            .contains(&"deregister web-1".to_string()));
    });
}

#[test]
fn a_pause_while_an_instance_is_out_lets_it_come_back_then_holds_before_the_next() {
    let fakes = Fakes::new();
    let (_dir, e) = effects(&fakes, None);
    rt().block_on(async {
        let web1 = e.inventory.instance("web-1").unwrap().clone();
        e.deregister(&web1).await.unwrap();
        // Paused with web-1 out: its cycle goes on (no safe point inside it).
        say(&e, Command::Pause);
        let finish = async {
            e.ssh(&web1, &Cmd::Shell("./deploy.sh".into()), Default::default())
                .await
                .unwrap();
            e.register(&web1).await.unwrap();
            e.wait_in_service(&web1).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), finish)
            .await
            .expect("an instance that is out is never held out");
        assert!(e.out_of_service().is_empty());
        // Now every instance is in: the next one waits.
        let e2 = e.clone();
        let next = tokio::spawn(async move { cycle(&e2, "web-2").await });
        settle().await;
        assert!(!next.is_finished());
        assert!(!fakes
            .lb
            .calls
            .all()
            .contains(&"deregister web-2".to_string()));
        assert_eq!(
            e.control().status().unwrap(),
            format!(
                "paused by ops@laptop since {}",
                e.control().paused().unwrap().since
            )
        );
        say(&e, Command::Resume);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn an_abort_ends_a_hold_and_a_wait_and_takes_no_new_instance_out_but_lets_a_rollback_through() {
    let fakes = Fakes::new();
    let (_dir, e) = effects(&fakes, None);
    rt().block_on(async {
        cycle(&e, "web-1").await;
        say(&e, Command::Pause);
        let e2 = e.clone();
        let held = tokio::spawn(async move {
            let web2 = e2.inventory.instance("web-2").unwrap().clone();
            e2.deregister(&web2).await
        });
        let e3 = e.clone();
        let bake = tokio::spawn(async move { e3.wait_promote(Duration::from_secs(600)).await });
        settle().await;
        say(&e, Command::Abort);
        let err = tokio::time::timeout(Duration::from_secs(5), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Aborted);
        assert_eq!(err.message, "aborted by ops@laptop");
        let err = tokio::time::timeout(Duration::from_secs(5), bake)
            .await
            .expect("an abort ends a bake at once")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Aborted);
        let e4 = e.clone();
        let err = tokio::time::timeout(Duration::from_secs(5), async move {
            e4.sleep(Duration::from_secs(600)).await
        })
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Aborted);
        // web-3 was never deployed: not taken out. web-1 was: its rollback may.
        let web3 = e.inventory.instance("web-3").unwrap().clone();
        let err = e.deregister(&web3).await.unwrap_err();
        assert_eq!(
            (err.kind, err.host.as_deref()),
            (ErrorKind::Aborted, Some("web-3"))
        );
        // Nothing moves forward: no command on it, no traffic switched.
        let err = e
            .ssh(&web3, &Cmd::Shell("./deploy.sh".into()), Default::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Aborted);
        let err = e.switch_pool("green").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Aborted);
        let web1 = e.inventory.instance("web-1").unwrap().clone();
        e.deregister(&web1)
            .await
            .expect("the rollback of an updated instance");
        e.ssh(
            &web1,
            &Cmd::Shell("./rollback.sh".into()),
            Default::default(),
        )
        .await
        .expect("a command on an instance that is out (its rollback)");
        assert!(!fakes.ssh.calls.all().iter().any(|c| c.contains("web-3")));
        assert!(!fakes
            .lb
            .calls
            .all()
            .iter()
            .any(|c| c.contains("web-2") || c.contains("web-3")));
    });
}

#[test]
fn promote_ends_a_bake_at_once_and_is_used_up_by_it() {
    let fakes = Fakes::new();
    let (_dir, e) = effects(&fakes, None);
    rt().block_on(async {
        let e2 = e.clone();
        let bake = tokio::spawn(async move { e2.wait_promote(Duration::from_secs(600)).await });
        settle().await;
        assert!(!bake.is_finished());
        say(&e, Command::Promote);
        let promoted = tokio::time::timeout(Duration::from_secs(1), bake)
            .await
            .expect("within a second")
            .unwrap()
            .unwrap();
        assert!(promoted);
        // Used up: the next bake runs its time.
        assert!(!e.wait_promote(Duration::from_millis(30)).await.unwrap());
    });
}

#[test]
fn an_approval_is_answered_yes_by_resume_and_no_by_abort_and_is_a_step_in_a_plan() {
    let fakes = Fakes::new();
    let (_dir, e) = effects(&fakes, None);
    rt().block_on(async {
        let e2 = e.clone();
        let ask = tokio::spawn(async move { e2.approval("promote the canary?").await });
        settle().await;
        assert_eq!(
            e.control().status().as_deref(),
            Some("waiting for approval: promote the canary?")
        );
        say(&e, Command::Resume);
        assert!(tokio::time::timeout(Duration::from_secs(5), ask)
            .await
            .unwrap()
            .unwrap()
            .unwrap());
        let e2 = e.clone();
        let ask = tokio::spawn(async move { e2.approval("go on?").await });
        settle().await;
        say(&e, Command::Abort);
        assert!(!tokio::time::timeout(Duration::from_secs(5), ask)
            .await
            .unwrap()
            .unwrap()
            .unwrap());
        assert_eq!(e.control().aborted_by().as_deref(), Some("ops@laptop"));
    });
    let rec = Arc::new(Recorder::new());
    let (_dir, plan) = effects(&fakes, Some(rec.clone()));
    rt().block_on(async {
        assert!(plan.approval("promote the canary?").await.unwrap());
        assert!(!plan.wait_promote(Duration::from_secs(600)).await.unwrap());
    });
    let text = crate::plan::render("Plan", &rec, &[]);
    assert!(
        text.contains("approval: promote the canary? (y/n on the terminal, or `rollscript resume` = yes / `rollscript abort` = no)"),
        "{text}"
    );
    assert!(
        text.contains("bake: wait 10m (`rollscript promote` ends it as passed)"),
        "{text}"
    );
}

#[test]
fn a_plan_notes_where_a_pause_holds_before_each_instance_and_batch_never_inside_one() {
    let fakes = Fakes::new();
    let rec = Arc::new(Recorder::new());
    let (_dir, plan) = effects(&fakes, Some(rec.clone()));
    rt().block_on(async {
        cycle(&plan, "web-1").await;
        // A batch of two in parallel: one note, before the batch.
        rec.begin_group(2, 2);
        for name in ["web-2", "web-3"] {
            rec.begin_branch();
            cycle(&plan, name).await;
            rec.end_branch();
        }
        rec.end_group();
    });
    let text = crate::plan::render("Plan", &rec, &[]);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let note = "# `rollscript pause` holds here (every instance in service)";
    assert_eq!(lines.iter().filter(|l| **l == note).count(), 2, "{text}");
    assert_eq!(lines[1], note, "{text}");
    assert!(lines[2].starts_with("1. fake web-1: Deregister"), "{text}");
    let batch = lines
        .iter()
        .position(|l| l.starts_with("parallel: 2 items"))
        .unwrap();
    assert_eq!(
        lines[batch - 1],
        note,
        "before the batch, not inside it: {text}"
    );
}
