//! Issue 13: crash and team safety, against real components.
//!
//! - The shared state backend on a real PostgreSQL (`harness::postgres`):
//!   two working copies of one inventory, each in its own folder and
//!   playing its own machine (`ROLLSCRIPT_HOSTNAME`, the documented
//!   test/ops override), share one deploy lock and one run history.
//! - A run killed with SIGKILL during a drain, a deploy, a health check and
//!   a register (`harness::faultfleet`: three `demo/app.py` instances behind
//!   their own sshd and a real HAProxy) is recovered from the other working
//!   copy once its lease expires: every healthy instance back in service and
//!   the shared journal complete, ending with recover's `run_end`.
//! - `recover` next to two inventories in one folder only touches its own.
//! - A journal that cannot be written (a real full filesystem: a 1 MiB tmpfs
//!   this test mounts as root over the working copy's `.rollscript/` and
//!   unmounts itself) stops the run before the effect.
//! - PostgreSQL unreachable at start is exit 2 naming the URL, password
//!   redacted; lost mid-run, the run stops and compensates from the local
//!   journal.
//! - Secrets never reach the lock, the journal or the logs; state files are
//!   0600 in 0700 folders.
//!
//! The kill points are made exact with an [`ApiGate`]: a unix socket in front
//! of HAProxy's runtime API that forwards every command, and holds one
//! matching a pattern, so the test kills rollscript while that command (a
//! register) or that wait (a drain's poll) is in flight.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::fleet::{Fleet, FleetSpec, LbKind};
use crate::harness::journal::{names, Journal};
use crate::harness::postgres::Postgres;
use crate::harness::run::Finished;
use crate::harness::sshd::toml_str;
use crate::harness::wait_until;
use crate::harness::{free_port, repo, rollscript};

/// The fault matrix's fleet (tests/it/faults.rs): three instances on v1
/// behind HAProxy, `app.deploy` a wrapper running the plain `deploy.sh`
/// until a test sets another.
fn fault_fleet() -> Fleet {
    let fleet = FleetSpec::new(LbKind::Haproxy, 3).start();
    fleet.set_deploy("exec \"$bin/deploy.sh\" \"$@\"");
    fleet
        .inventory()
        .deploy(&fleet.test_deploy())
        .min_in_service(1)
        .set("app", "name", &toml_str("faults"))
        .set("ssh", "command_timeout", &toml_str("90s"))
        .set("health", "retries", "20")
        .write(&fleet.inventory_path());
    fleet
}

/// Upper bound on one rollscript run against the fleet (they take seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(60);

// ---- working copies -------------------------------------------------------------

/// A working copy of the fleet's inventory in its own folder, run as if on
/// machine `host`: its `.rollscript/` is its own, only PostgreSQL (when the
/// inventory says so) is shared.
struct Copy {
    dir: PathBuf,
    inventory: PathBuf,
    host: String,
}

impl Copy {
    /// The fleet's inventory with `edit` applied and `state` appended, in
    /// `<fleet>/<host>/rollscript.toml`.
    fn new(fleet: &Fleet, host: &str, state: &str, edit: impl Fn(String) -> String) -> Copy {
        let dir = fleet.root().join(host);
        fs::create_dir_all(&dir).unwrap();
        let inventory = dir.join("rollscript.toml");
        let text = edit(fs::read_to_string(fleet.inventory_path()).unwrap());
        fs::write(&inventory, format!("{text}{state}")).unwrap();
        Copy {
            dir,
            inventory,
            host: host.to_string(),
        }
    }

    /// `rollscript ARGS… -i INVENTORY` from the repository root, on `host`.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = rollscript();
        c.current_dir(repo())
            .env("ROLLSCRIPT_HOSTNAME", &self.host)
            .env_remove("ROLLSCRIPT_STATE_URL")
            .args(args)
            .arg("-i")
            .arg(&self.inventory);
        c
    }

    /// A rolling deploy of `version` + `extra`.
    fn run_cmd(&self, version: &str, extra: &[&str]) -> Command {
        let v = format!("version={version}");
        let mut c = self.cmd(&["run", "scripts/rolling.rhai", "--yes", "--var", &v]);
        c.args(extra);
        c
    }

    /// This copy's own journals, oldest first.
    fn journals(&self) -> Vec<PathBuf> {
        journals_in(&self.dir)
    }
}

fn journals_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(".rollscript/runs"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|x| x == "jsonl"));
    v.sort();
    v
}

/// The `[state]` table of a shared backend on `pg`.
fn pg_state(pg: &Postgres, lease: &str) -> String {
    format!(
        "\n[state]\nbackend = \"postgres\"\nurl = \"{}\"\nlease = \"{lease}\"\n",
        pg.url()
    )
}

/// Who the lock says holds it: `$USER`, as rollscript records it.
fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "uid0".into())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every server UP in HAProxy, every instance serving `version`.
fn assert_fleet_on(fleet: &Fleet, version: &str, context: &str) {
    assert_eq!(
        fleet.haproxy().statuses(),
        map(&[("web-1", "UP"), ("web-2", "UP"), ("web-3", "UP")]),
        "HAProxy after the run\n{context}"
    );
    assert_eq!(
        fleet.versions().into_iter().collect::<BTreeMap<_, _>>(),
        map(&[("web-1", version), ("web-2", version), ("web-3", version)]),
        "versions served after the run\n{context}"
    );
}

/// Every JSON record of `run` in the shared journal, in order (psql, so the
/// test reads what is stored, not what rollscript says it stored).
fn shared_journal(pg: &Postgres, run: &str) -> Vec<serde_json::Value> {
    let out = Command::new(psql())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "SELECT record FROM rollscript_journal WHERE run = '{run}' ORDER BY line"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn psql() -> PathBuf {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().expect("psql is installed")
}

/// `recover --yes` from `copy`, again every half second while the dead run's
/// lease lasts (exit 3, naming the holder), until it runs.
fn recover_once_the_lease_expires(fleet: &Fleet, copy: &Copy, dead_host: &str) -> Finished {
    let deadline = Instant::now() + WAIT;
    for n in 0.. {
        let r = fleet.exec(
            &format!("recover-{}-{n}", copy.host),
            copy.cmd(&["recover", "--yes"]),
            RUN_TIMEOUT,
        );
        if r.code != Some(3) {
            return r;
        }
        assert!(
            r.stderr.contains(&format!("@{dead_host}")),
            "while the lease lasts, recover names its holder\n{}",
            r.both()
        );
        assert!(
            Instant::now() < deadline,
            "the lease never expired\n{}",
            r.both()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    unreachable!()
}

// ---- the runtime API gate ---------------------------------------------------------

#[derive(Default)]
struct GateRule {
    /// Arm once a forwarded command contains this (None: armed at once).
    after: Option<String>,
    armed: bool,
    /// Hold the next command containing this.
    pattern: String,
    done: bool,
}

/// A unix socket in front of HAProxy's runtime API. Each connection carries
/// one command line; the gate forwards it and copies the reply back, except
/// the one its rule holds: that connection is kept open and never
/// forwarded, until the gate is dropped.
struct ApiGate {
    path: PathBuf,
    rule: Arc<Mutex<GateRule>>,
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiGate {
    fn start(path: &Path, upstream: &Path) -> ApiGate {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let rule = Arc::new(Mutex::new(GateRule {
            done: true,
            ..GateRule::default()
        }));
        let held = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, h, s, up) = (
            rule.clone(),
            held.clone(),
            stop.clone(),
            upstream.to_path_buf(),
        );
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (r, h, s, up) = (r.clone(), h.clone(), s.clone(), up.clone());
                        conns.push(std::thread::spawn(move || gate_one(conn, &up, &r, &h, &s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        ApiGate {
            path: path.to_path_buf(),
            rule,
            held,
            stop,
            thread: Some(thread),
        }
    }

    /// Holds the next command containing `pattern` (once a command containing
    /// `after` went through, when given).
    fn hold(&self, after: Option<&str>, pattern: &str) {
        *self.rule.lock().unwrap() = GateRule {
            after: after.map(String::from),
            armed: after.is_none(),
            pattern: pattern.to_string(),
            done: false,
        };
    }

    fn is_holding(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for ApiGate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn gate_one(
    mut conn: UnixStream,
    upstream: &Path,
    rule: &Mutex<GateRule>,
    held: &AtomicBool,
    stop: &AtomicBool,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while conn.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).to_string();
    let hold = {
        let mut r = rule.lock().unwrap();
        if !r.done && r.armed && line.contains(&r.pattern) {
            r.done = true;
            true
        } else {
            false
        }
    };
    if hold {
        held.store(true, Ordering::SeqCst);
        // Never forwarded: the caller dies waiting.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        return;
    }
    let reply = (|| -> std::io::Result<Vec<u8>> {
        let mut up = UnixStream::connect(upstream)?;
        up.set_read_timeout(Some(Duration::from_secs(5)))?;
        up.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = Vec::new();
        up.read_to_end(&mut reply)?;
        Ok(reply)
    })()
    .unwrap_or_default();
    {
        let mut r = rule.lock().unwrap();
        if let Some(after) = &r.after {
            if line.contains(after.as_str()) {
                r.armed = true;
            }
        }
    }
    let _ = conn.write_all(&reply);
}

// ---- 1: one lock for two working copies -------------------------------------------

#[test]
fn two_working_copies_on_two_hosts_never_hold_the_deploy_lock_at_once() {
    let pg = Postgres::start();
    let fleet = fault_fleet();
    // Every deploy logs its start and end into one file: two runs deploying
    // at once would interleave there.
    fleet.set_deploy(
        "echo \"begin $NAME $1\" >>\"$ctl/deploys\"\n\
         mark started-$1-$NAME\n\
         wait_for go-$1\n\
         \"$bin/deploy.sh\" \"$1\"\n\
         echo \"end $NAME $1\" >>\"$ctl/deploys\"",
    );
    let a = Copy::new(&fleet, "machine-a", &pg_state(&pg, "30s"), |t| t);
    let b = Copy::new(&fleet, "machine-b", &pg_state(&pg, "30s"), |t| t);

    let first = fleet.spawn("run-a", a.run_cmd("v2", &[]));
    let pid = first.pid();
    fleet.wait_ctl("started-v2-web-1", WAIT);

    // Machine B, at once: refused, naming machine A's run.
    let refused = fleet.exec("run-b", b.run_cmd("v3", &[]), WAIT);
    assert_eq!(refused.code, Some(3), "{}", refused.both());
    let holder = format!("held by {}@machine-a (pid {pid})", user());
    assert!(
        refused
            .stderr
            .contains(&format!("another run holds the deploy lock: {holder}")),
        "{}",
        refused.both()
    );
    assert!(b.journals().is_empty(), "the refused run wrote no journal");
    // Nor can machine B recover or unlock a run that is alive and heartbeating.
    let rec = fleet.exec("recover-b", b.cmd(&["recover", "--yes"]), WAIT);
    assert_eq!(rec.code, Some(3), "{}", rec.both());
    assert!(rec.stderr.contains("is still running"), "{}", rec.both());
    assert!(rec.stderr.contains("@machine-a"), "{}", rec.both());
    let unlock = fleet.exec("unlock-b", b.cmd(&["unlock", "--yes"]), WAIT);
    assert_eq!(unlock.code, Some(3), "{}", unlock.both());
    assert!(unlock.stderr.contains(&holder), "{}", unlock.both());
    assert!(unlock.stderr.contains("--force"), "{}", unlock.both());

    // Machine B waiting: it starts only after machine A released the lock.
    let second = fleet.spawn("run-b-wait", b.run_cmd("v3", &["--lock-wait", "3m"]));
    wait_until("machine B waiting", WAIT, || {
        second
            .stderr_so_far()
            .contains(&format!("waiting for the deploy lock: {holder}"))
    });
    fleet.touch("go-v2");
    let ra = first.wait(RUN_TIMEOUT);
    assert_eq!(ra.code, Some(0), "{}", ra.both());
    fleet.touch("go-v3");
    let rb = second.wait(RUN_TIMEOUT);
    assert_eq!(rb.code, Some(0), "{}", rb.both());
    assert_fleet_on(&fleet, "v3", &rb.both());

    let log = fs::read_to_string(fleet.root().join("ctl/deploys")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let last_v2 = lines.iter().rposition(|l| l.ends_with(" v2")).unwrap();
    let first_v3 = lines.iter().position(|l| l.ends_with(" v3")).unwrap();
    assert!(last_v2 < first_v3, "the two runs deployed at once:\n{log}");
    assert_eq!(lines.len(), 12, "{log}");

    // One history: machine B lists machine A's run too.
    let runs = fleet.exec("runs-b", b.cmd(&["runs"]), WAIT);
    assert_eq!(runs.code, Some(0), "{}", runs.both());
    let run_a = Journal::read(&a.journals()[0]).run();
    let run_b = Journal::read(&b.journals()[0]).run();
    for run in [&run_a, &run_b] {
        assert!(
            runs.stdout
                .lines()
                .any(|l| l.starts_with(run.as_str()) && l.contains("success")),
            "{}",
            runs.stdout
        );
    }
}

#[test]
fn takers_racing_for_an_expired_lease_get_it_one_at_a_time() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("rollscript.toml");
    fs::write(
        &inventory,
        format!(
            "[app]\nname = \"race\"\ndeploy = \"true\"\n[lb]\nkind = \"none\"\n\
             [[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n{}",
            pg_state(&pg, "2s")
        ),
    )
    .unwrap();
    // A holder that died: its lease runs out two seconds from now.
    let script = dir.path().join("hold.rhai");
    fs::write(&script, "local(\"sleep 600\");\n").unwrap();
    let dead = crate::harness::Proc::spawn(
        "rollscript run (to be killed)",
        rollscript()
            .env("ROLLSCRIPT_HOSTNAME", "machine-dead")
            .args(["run", "--yes", "-i"])
            .arg(&inventory)
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_until("the holder's journal", WAIT, || {
        journals_in(dir.path())
            .first()
            .is_some_and(|p| fs::read_to_string(p).is_ok_and(|t| t.contains("\"op\":\"local\"")))
    });
    dead.signal(libc::SIGKILL);
    drop(dead);

    // Eight takers on eight machines, released at once: each holds the lock
    // while its script runs a command that fails if another holds it too.
    let marker = dir.path().join("inside");
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let s = dir.path().join(format!("take-{i}.rhai"));
            fs::write(
                &s,
                format!(
                    "local(`set -e; if [ -e {m} ]; then echo two holders >&2; exit 1; fi; : >{m}; sleep 0.3; rm {m}`);\n",
                    m = marker.display()
                ),
            )
            .unwrap();
            let mut c = rollscript();
            c.env("ROLLSCRIPT_HOSTNAME", format!("machine-{i}"))
                .args(["run", "--yes", "--lock-wait", "2m", "-i"])
                .arg(&inventory)
                .arg(&s)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c
        })
        .collect();
    let children: Vec<_> = takers.into_iter().map(|mut c| c.spawn().unwrap()).collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(
            o.status.code(),
            Some(0),
            "taker {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Every one of them and the dead run: one journal each, in PostgreSQL.
    let runs = rollscript()
        .env("ROLLSCRIPT_HOSTNAME", "machine-x")
        .args(["runs", "-i"])
        .arg(&inventory)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&runs.stdout);
    assert_eq!(listed.matches("success").count(), 8, "{listed}");
    assert_eq!(listed.matches("died").count(), 1, "{listed}");
}

#[test]
fn runs_waiting_for_the_shared_lock_get_it_in_the_order_they_asked() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("rollscript.toml");
    fs::write(
        &inventory,
        format!(
            "[app]\nname = \"queue\"\ndeploy = \"true\"\n[lb]\nkind = \"none\"\n\
             [[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n{}",
            pg_state(&pg, "30s")
        ),
    )
    .unwrap();
    let go = dir.path().join("go");
    let order = dir.path().join("order");
    fs::write(
        dir.path().join("hold.rhai"),
        format!(
            "local(`while [ ! -e {} ]; do sleep 0.05; done`);\n",
            go.display()
        ),
    )
    .unwrap();
    fs::write(
        dir.path().join("take.rhai"),
        format!("local(`echo ${{var(\"who\")}} >>{}`);\n", order.display()),
    )
    .unwrap();
    let start = |who: &str, script: &str, wait: bool| {
        let err = dir.path().join(format!("{who}.stderr"));
        let mut c = rollscript();
        c.current_dir(dir.path())
            .env("ROLLSCRIPT_HOSTNAME", format!("machine-{who}"))
            .args(["run", "--yes", script, "--var", &format!("who={who}")])
            .arg("-i")
            .arg(&inventory)
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&err).unwrap());
        if wait {
            c.args(["--lock-wait", "2m"]);
        }
        (crate::harness::Proc::spawn(who, &mut c), err)
    };
    let (mut holder, _) = start("holder", "hold.rhai", false);
    wait_until("the holder's journal", WAIT, || {
        journals_in(dir.path())
            .first()
            .is_some_and(|p| fs::read_to_string(p).is_ok_and(|t| t.contains("\"op\":\"local\"")))
    });
    // Each asks once the one before it is queued.
    let mut waiters = Vec::new();
    for who in ["b", "c", "d"] {
        let (p, err) = start(who, "take.rhai", true);
        wait_until(&format!("{who} queued"), WAIT, || {
            fs::read_to_string(&err)
                .is_ok_and(|t| t.contains("waiting for the deploy lock: held by"))
        });
        waiters.push((who, p, err));
    }
    // One that does not wait is refused, naming the holder.
    let (mut hasty, hasty_err) = start("e", "take.rhai", false);
    assert_eq!(hasty.child.wait().unwrap().code(), Some(3));
    assert!(fs::read_to_string(&hasty_err)
        .unwrap()
        .contains("another run holds the deploy lock: held by"),);
    fs::write(&go, "").unwrap();
    assert_eq!(holder.child.wait().unwrap().code(), Some(0));
    for (who, mut p, err) in waiters {
        let code = p.child.wait().unwrap().code();
        assert_eq!(
            code,
            Some(0),
            "{who}: {}",
            fs::read_to_string(&err).unwrap()
        );
    }
    assert_eq!(fs::read_to_string(&order).unwrap(), "b\nc\nd\n");
}

// ---- 2: SIGKILL at each kind of step, recovered from the other machine ------------

/// Where the run is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillAt {
    Drain,
    Deploy,
    Health,
    Register,
}

fn killed_and_recovered_from_the_other_working_copy(at: KillAt) {
    let pg = Postgres::start();
    let mut fleet = fault_fleet();
    let gate_path = fleet.root().join("gate.sock");
    let gate = ApiGate::start(&gate_path, &fleet.haproxy().socket);
    match at {
        KillAt::Deploy => {
            fleet.set_deploy("\"$bin/deploy.sh\" \"$1\"\nmark deployed-$NAME\nwait_for go-$NAME");
        }
        // demo/app.py never turns healthy on a version starting with `bad`.
        KillAt::Health => {
            fleet.set_deploy(
                "case \"$NAME\" in web-1) set -- \"bad-$1\" ;; esac\nexec \"$bin/deploy.sh\" \"$1\"",
            );
        }
        KillAt::Drain => gate.hold(
            Some(&format!("{}/web-1 state drain", fleet.haproxy().backend)),
            "show stat",
        ),
        KillAt::Register => gate.hold(
            None,
            &format!("{}/web-1 state ready", fleet.haproxy().backend),
        ),
    }
    let socket = fleet.haproxy().socket.display().to_string();
    let gated = |t: String| {
        t.replace(&socket, &gate_path.display().to_string())
            // A health check that keeps failing for a minute: long enough to be killed in.
            .replace("retries = 20", "retries = 600")
    };
    let a = Copy::new(&fleet, "machine-a", &pg_state(&pg, "3s"), gated);
    let b = Copy::new(&fleet, "machine-b", &pg_state(&pg, "3s"), gated);

    let run = fleet.spawn("run-a", a.run_cmd("v2", &[]));
    let pid = run.pid();
    let web_1_steps = || {
        a.journals()
            .first()
            .map(|p| Journal::read(p).steps("web-1"))
            .unwrap_or_default()
    };
    let step = |op: &str| (op.to_string(), None);
    match at {
        KillAt::Drain => wait_until("web-1 draining", WAIT, || {
            gate.is_holding() && web_1_steps().last() == Some(&step("wait_drained"))
        }),
        KillAt::Deploy => fleet.wait_ctl("deployed-web-1", WAIT),
        KillAt::Health => wait_until("web-1's health check", WAIT, || {
            web_1_steps().last() == Some(&step("health"))
        }),
        KillAt::Register => wait_until("web-1's register in flight", WAIT, || {
            gate.is_holding() && web_1_steps().last() == Some(&step("register"))
        }),
    }
    // Machine A writes a record locally, then stores it in PostgreSQL: a
    // kill between the two leaves the shared copy one record short, which
    // recover handles (a missing intent is a step not begun) but this test,
    // comparing the two copies, must not race with.
    wait_until(
        "the shared journal to hold machine A's records",
        WAIT,
        || {
            let local = Journal::read(&a.journals()[0]);
            shared_journal(&pg, &local.run()).len() == local.records.len()
        },
    );
    run.signal(libc::SIGKILL);
    let killed = run.wait(Duration::from_secs(30));
    assert_eq!(killed.code, None, "killed by a signal");
    fleet.touch("go-web-1");
    let dead = Journal::read(&a.journals()[0]);
    let ctx = format!("{}--- journal\n{}", killed.both(), dead.dump());
    assert!(dead.ends().is_empty(), "no run_end after kill -9\n{ctx}");
    assert_ne!(fleet.haproxy().status("web-1"), "UP", "web-1 is out\n{ctx}");

    let rec = recover_once_the_lease_expires(&fleet, &b, "machine-a");
    let ctx = format!("{}\n--- dead journal\n{}", rec.both(), dead.dump());
    assert_eq!(rec.code, Some(0), "{ctx}");
    assert!(
        rec.stdout.contains(&format!(
            "recovering run {} (started {} by pid {pid} on machine-a): out of service: web-1",
            dead.run(),
            dead.of_type("run_start")[0]["at"].as_str().unwrap(),
        )),
        "{ctx}"
    );
    // The plan first: what it will do to which instance.
    let touched = at != KillAt::Drain;
    let plan = rec.stdout.find("plan:").expect("a plan before acting");
    let acting = rec.stdout.find("  web-1: ").expect("a fate per instance");
    assert!(plan < acting, "{ctx}");
    assert_eq!(
        rec.stdout[plan..acting].contains("app.rollback"),
        touched,
        "{ctx}"
    );
    let version = "v1";
    let want = if touched {
        "web-1: back in service — rolled back, healthy; back in service"
    } else {
        "web-1: back in service — healthy; back in service"
    };
    assert!(rec.stdout.contains(want), "{ctx}");
    assert_fleet_on(&fleet, version, &ctx);

    // The shared journal is complete: the dead run's records, recover's, and
    // recover's run_end — the same as machine B's local copy.
    let shared = shared_journal(&pg, &dead.run());
    let local_b = Journal::read(&b.journals()[0]);
    assert_eq!(local_b.run(), dead.run(), "{ctx}");
    assert_eq!(shared, local_b.records, "{ctx}");
    assert_eq!(&shared[..dead.records.len()], &dead.records[..], "{ctx}");
    let end = shared.last().unwrap();
    assert_eq!(end["type"], "run_end", "{ctx}");
    assert_eq!(end["outcome"], "recovered", "{ctx}");
    assert_eq!(names(&end["left_out"]), Vec::<String>::new(), "{ctx}");

    // A third machine with no local state sees the same history.
    let c = Copy::new(&fleet, "machine-c", &pg_state(&pg, "3s"), gated);
    let show = fleet.exec("show-c", c.cmd(&["runs", "show", &dead.run()]), WAIT);
    assert_eq!(show.code, Some(0), "{}", show.both());
    assert!(show.stdout.contains(": recovered"), "{}", show.stdout);
    assert!(
        show.stdout.contains("compensation web-1: restored"),
        "{}",
        show.stdout
    );

    // Idempotent: again from machine C, nothing to do, nothing written.
    let again = fleet.exec("recover-c", c.cmd(&["recover", "--yes"]), RUN_TIMEOUT);
    assert_eq!(again.code, Some(0), "{}", again.both());
    assert!(
        again.stdout.contains("nothing to recover"),
        "{}",
        again.both()
    );
    assert_eq!(shared_journal(&pg, &dead.run()).len(), shared.len());
    assert_fleet_on(&fleet, version, &again.both());
    drop(gate);
    fleet.stop_haproxy();
}

#[test]
fn sigkill_during_a_drain_is_recovered_from_the_other_working_copy() {
    killed_and_recovered_from_the_other_working_copy(KillAt::Drain);
}

#[test]
fn sigkill_during_a_deploy_is_recovered_from_the_other_working_copy() {
    killed_and_recovered_from_the_other_working_copy(KillAt::Deploy);
}

#[test]
fn sigkill_during_a_health_check_is_recovered_from_the_other_working_copy() {
    killed_and_recovered_from_the_other_working_copy(KillAt::Health);
}

#[test]
fn sigkill_during_a_register_is_recovered_from_the_other_working_copy() {
    killed_and_recovered_from_the_other_working_copy(KillAt::Register);
}

// ---- 3: two inventories in one folder -------------------------------------------

#[test]
fn recover_next_to_two_inventories_only_touches_its_own() {
    let fleet = fault_fleet();
    fleet.set_deploy("\"$bin/deploy.sh\" \"$1\"\nmark deployed-$NAME\nwait_for go-$NAME");
    // staging: web-1; prod: web-2 and web-3. Same folder, same HAProxy.
    let text = fs::read_to_string(fleet.inventory_path()).unwrap();
    let head = &text[..text.find("[[instances]]").unwrap()];
    let block = |name: &str| {
        let at = text.find(&format!("name = \"{name}\"")).unwrap();
        let start = text[..at].rfind("[[instances]]").unwrap();
        let end = text[at..]
            .find("[[instances]]")
            .map(|e| at + e)
            .unwrap_or(text.len());
        text[start..end].to_string()
    };
    let staging = fleet.root().join("staging.toml");
    let prod = fleet.root().join("prod.toml");
    fs::write(
        &staging,
        format!(
            "{}{}",
            head.replace("min_in_service = 1", "min_in_service = 0"),
            block("web-1")
        ),
    )
    .unwrap();
    fs::write(&prod, format!("{head}{}{}", block("web-2"), block("web-3"))).unwrap();
    let cmd = |inv: &Path, args: &[&str]| {
        let mut c = rollscript();
        c.current_dir(repo()).args(args).arg("-i").arg(inv);
        c
    };
    let run_cmd = |inv: &Path| {
        cmd(
            inv,
            &[
                "run",
                "scripts/rolling.rhai",
                "--yes",
                "--var",
                "version=v2",
            ],
        )
    };

    // prod's run is killed in web-2's deploy: web-2 is out, prod's lock held by a dead process.
    let run = fleet.spawn("prod-run", run_cmd(&prod));
    fleet.wait_ctl("deployed-web-2", WAIT);
    run.signal(libc::SIGKILL);
    let _ = run.wait(Duration::from_secs(30));
    fleet.touch("go-web-2");
    assert_eq!(fleet.haproxy().status("web-2"), "MAINT");

    // staging has nothing to recover, and leaves prod's web-2 alone.
    let rec = fleet.exec(
        "staging-recover",
        cmd(&staging, &["recover", "--yes"]),
        RUN_TIMEOUT,
    );
    assert_eq!(rec.code, Some(0), "{}", rec.both());
    assert!(rec.stdout.contains("nothing to recover"), "{}", rec.both());
    assert_eq!(fleet.haproxy().status("web-2"), "MAINT", "{}", rec.both());
    assert_eq!(fleet.version("web-2"), "v2", "not rolled back by staging");
    let runs = fleet.exec("staging-runs", cmd(&staging, &["runs"]), WAIT);
    assert!(runs.stdout.contains("no runs recorded"), "{}", runs.both());

    // prod's dead lock does not block staging's run.
    fleet.touch("go-web-1");
    let staged = fleet.exec("staging-run", run_cmd(&staging), RUN_TIMEOUT);
    assert_eq!(staged.code, Some(0), "{}", staged.both());
    assert_eq!(fleet.version("web-1"), "v2");
    assert_eq!(
        fleet.haproxy().status("web-2"),
        "MAINT",
        "{}",
        staged.both()
    );
    let runs = fleet.exec("staging-runs-2", cmd(&staging, &["runs"]), WAIT);
    assert_eq!(runs.stdout.lines().count(), 2, "{}", runs.stdout);
    // Nor does staging re-run what failed in prod's run.
    let prod_run = journals_in(fleet.root())
        .into_iter()
        .map(|p| Journal::read(&p))
        .find(|j| {
            j.of_type("run_start")[0]["inventory"]
                .as_str()
                .is_some_and(|i| i.ends_with("prod.toml"))
        })
        .unwrap()
        .run();
    let only = fleet.exec(
        "staging-only-failed",
        cmd(
            &staging,
            &[
                "run",
                "scripts/rolling.rhai",
                "--yes",
                "--only-failed",
                &prod_run,
            ],
        ),
        WAIT,
    );
    assert_eq!(only.code, Some(2), "{}", only.both());
    assert!(
        only.stderr.contains(&format!(
            "--only-failed: no run {prod_run:?} of this inventory"
        )),
        "{}",
        only.both()
    );

    // prod's own recover puts web-2 back, rolled back.
    let rec = fleet.exec(
        "prod-recover",
        cmd(&prod, &["recover", "--yes"]),
        RUN_TIMEOUT,
    );
    assert_eq!(rec.code, Some(0), "{}", rec.both());
    assert!(
        rec.stdout
            .contains("web-2: back in service — rolled back, healthy; back in service"),
        "{}",
        rec.both()
    );
    assert_eq!(fleet.haproxy().status("web-2"), "UP");
    assert_eq!(fleet.version("web-2"), "v1");
    assert_eq!(fleet.version("web-1"), "v2", "staging's deploy is kept");
}

// ---- 4: durable or nothing ------------------------------------------------------

/// A tmpfs mounted over `at`, unmounted (lazily if still busy) on drop.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

#[test]
fn a_journal_that_cannot_be_written_stops_the_run_before_the_effect() {
    let fleet = fault_fleet();
    let wc = Copy::new(&fleet, "wc", "", |t| t);
    let state = wc.dir.join(".rollscript");
    let disk = Tmpfs::mount(&state, "1m");
    // web-1 out and drained, then the disk fills up (the filler, then blank
    // lines — which the journal reader skips — into the journal's last page),
    // then the deploy would run.
    let fill = format!(
        "dd if=/dev/zero of={s}/filler bs=4k 2>/dev/null; for j in {s}/runs/*.jsonl; do while printf '\\n' >>\"$j\" 2>/dev/null; do :; done; done; true",
        s = state.display()
    );
    let script = wc.dir.join("fill.rhai");
    fs::write(
        &script,
        format!(
            "let web1 = instances()[0];\n\
             deregister(web1);\n\
             wait_drained(web1);\n\
             local({fill:?});\n\
             ssh(web1, inventory().app.deploy + \" v2\");\n"
        ),
    )
    .unwrap();
    let mut cmd = wc.cmd(&["run", "--yes"]);
    cmd.arg(&script);
    let r = fleet.exec("run", cmd, RUN_TIMEOUT);
    assert_eq!(r.code, Some(1), "{}", r.both());
    assert!(
        r.stderr
            .contains("journal write failed: No space left on device"),
        "{}",
        r.both()
    );
    // The deploy never ran; web-1 (untouched) was put back.
    assert_fleet_on(&fleet, "v1", &r.both());
    assert!(
        r.stderr.contains("web-1: healthy; back in service"),
        "{}",
        r.both()
    );
    let _ = fs::remove_file(state.join("filler"));
    let j = Journal::read(&wc.journals()[0]);
    let ctx = format!("{}--- journal\n{}", r.both(), j.dump());
    let ops: Vec<String> = j
        .of_type("intent")
        .iter()
        .map(|i| i["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops[..3], ["deregister", "wait_drained", "local"], "{ctx}");
    assert!(!ops.contains(&"ssh".to_string()), "{ctx}");
    drop(disk);
}

// ---- 5: PostgreSQL unreachable or lost ---------------------------------------------

#[test]
fn postgresql_unreachable_at_start_is_exit_2_naming_the_url_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.1");
    let inventory = dir.path().join("rollscript.toml");
    fs::write(
        &inventory,
        format!(
            "[app]\nname = \"demo\"\ndeploy = \"true\"\n[lb]\nkind = \"none\"\n\
             [[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n\
             [state]\nbackend = \"postgres\"\nurl = \"postgres://deploy:hunter2@127.0.0.1:{port}/state\"\n"
        ),
    )
    .unwrap();
    let shown = format!("postgres://deploy:***@127.0.0.1:{port}/state");
    for args in [
        &["run", "scripts/rolling.rhai", "--yes"][..],
        &["recover", "--yes"],
        &["runs"],
        &["unlock", "--yes"],
    ] {
        let out = rollscript()
            .current_dir(repo())
            .args(args)
            .arg("-i")
            .arg(&inventory)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot reach the state database {shown}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
        assert!(!dir.path().join(".rollscript/runs").exists(), "{args:?}");
    }
    // The URL may come from the environment instead.
    let no_url = fs::read_to_string(&inventory).unwrap();
    let no_url: String = no_url
        .lines()
        .filter(|l| !l.starts_with("url"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&inventory, no_url).unwrap();
    let out = rollscript()
        .current_dir(repo())
        .env(
            "ROLLSCRIPT_STATE_URL",
            format!("postgres://deploy:hunter2@127.0.0.1:{port}/state"),
        )
        .args(["runs", "-i"])
        .arg(&inventory)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&shown), "{stderr}");
}

#[test]
fn postgresql_lost_mid_run_stops_the_run_and_compensates_from_the_local_journal() {
    let pg = Postgres::start();
    let fleet = fault_fleet();
    fleet.set_deploy("mark started-$NAME\nwait_for go-$NAME\nexec \"$bin/deploy.sh\" \"$1\"");
    let a = Copy::new(&fleet, "machine-a", &pg_state(&pg, "30s"), |t| t);
    let run = fleet.spawn("run", a.run_cmd("v2", &[]));
    fleet.wait_ctl("started-web-1", WAIT);
    drop(pg);
    fleet.touch("go-web-1");
    let r = run.wait(RUN_TIMEOUT);
    let j = Journal::read(&a.journals()[0]);
    let ctx = format!("{}--- journal\n{}", r.both(), j.dump());
    assert_eq!(r.code, Some(1), "{ctx}");
    assert!(r.stderr.contains("shared state lost"), "{ctx}");
    // web-1 was deployed (the command was under way), rolled back and put
    // back; nobody else was touched.
    assert_fleet_on(&fleet, "v1", &ctx);
    assert!(j.steps("web-2").is_empty(), "{ctx}");
    assert_eq!(
        j.compensations(),
        vec![(
            "web-1".to_string(),
            true,
            "rolled back, healthy; back in service".to_string()
        )],
        "{ctx}"
    );
    assert!(!j.ends().is_empty(), "{ctx}");
}

// ---- 6: secrets and permissions ----------------------------------------------------

#[test]
fn secrets_never_reach_the_lock_the_journal_or_the_logs_and_state_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("rollscript.toml"),
        "[app]\nname = \"demo\"\ndeploy = \"true\"\n[lb]\nkind = \"none\"\n[[instances]]\nname = \"web-1\"\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("main.rhai"),
        "local(`echo ${var(\"api_token\")} ${var(\"db\")}`);\n\
         local(\"while [ ! -e go ]; do sleep 0.05; done\");\n\
         notify(var(\"hook\"), \"deployed\");\n",
    )
    .unwrap();
    let hook = "http://127.0.0.1:9/services/T000/B000/XXXXSECRETHOOK";
    let mut run = crate::harness::Proc::spawn(
        "rollscript run",
        rollscript()
            .current_dir(dir.path())
            .args(["run", "main.rhai", "--yes"])
            .args(["--var", "api_token=tok-s3cr3t"])
            .args(["--var", "db=postgres://u:pw-s3cr3t@db/app?sslkey=q-s3cr3t"])
            .args(["--var", &format!("hook={hook}")])
            .stdout(fs::File::create(dir.path().join("out")).unwrap())
            .stderr(fs::File::create(dir.path().join("err")).unwrap()),
    );
    let state = dir.path().join(".rollscript");
    let lock = || {
        fs::read_dir(state.join("locks"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "lock"))
    };
    wait_until("the lock", WAIT, || {
        lock().is_some_and(|p| {
            fs::read_to_string(p).is_ok_and(|t| t.contains("tok-") || t.contains("api_token"))
        })
    });
    wait_until("the journal", WAIT, || !journals_in(dir.path()).is_empty());
    let lock_text = fs::read_to_string(lock().unwrap()).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&lock().unwrap()), 0o600, "lock file");
    assert_eq!(mode(&state), 0o700, ".rollscript/");
    assert_eq!(mode(&state.join("runs")), 0o700, ".rollscript/runs/");
    assert_eq!(mode(&journals_in(dir.path())[0]), 0o600, "journal");
    fs::write(dir.path().join("go"), "").unwrap();
    let status = run.child.wait().unwrap();
    let stderr = fs::read_to_string(dir.path().join("err")).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let journal = fs::read_to_string(&journals_in(dir.path())[0]).unwrap();
    for (what, text) in [
        ("lock", &lock_text),
        ("journal", &journal),
        ("logs", &stderr),
    ] {
        for secret in [
            "tok-s3cr3t",
            "pw-s3cr3t",
            "q-s3cr3t",
            "XXXXSECRETHOOK",
            "T000/B000",
        ] {
            assert!(!text.contains(secret), "{secret} in the {what}:\n{text}");
        }
    }
    assert!(lock_text.contains("api_token=***"), "{lock_text}");
    assert!(journal.contains("api_token=***"), "{journal}");
    assert!(
        stderr.contains("postgres://u:***@db/app?sslkey=***"),
        "{stderr}"
    );
    assert!(
        journal.contains("notify http://127.0.0.1:9/***"),
        "{journal}"
    );
}

// ---- 7: recover discovers (ELBv2 target group in moto) -----------------------------

/// `recover` of an inventory with `lb.discover = true`: the run's fleet comes
/// from the target group (moto on 127.0.0.1; the instance's private IP is a
/// 127.0.1.x address where a real health endpoint answers).
#[cfg(feature = "aws")]
mod discovery {
    use std::fs;
    use std::path::Path;
    use std::time::Duration;

    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_ec2 as ec2;
    use aws_sdk_elasticloadbalancingv2 as elb;
    use elb::config::Credentials;
    use elb::types::{ProtocolEnum, TargetDescription, TargetGroupAttribute, TargetTypeEnum};
    use rollscript::config::Inventory;
    use rollscript::journal::{KnownInstance, Record};
    use rollscript::state::Identity;

    use crate::harness::http::{HttpServer, Reply};
    use crate::harness::moto::Moto;
    use crate::harness::rollscript;
    use crate::harness::sshd::next_ip;
    use crate::harness::wait_until;

    async fn targets(elb: &elb::Client, tg: &str) -> Vec<(String, String)> {
        let out = elb
            .describe_target_health()
            .target_group_arn(tg)
            .send()
            .await
            .unwrap();
        out.target_health_descriptions()
            .iter()
            .map(|d| {
                (
                    d.target().unwrap().id().unwrap().to_string(),
                    d.target_health()
                        .and_then(|h| h.state())
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// A dead run that took `web-9` out; `known` = what it recorded of its fleet.
    fn dead_run(inventory: &Path, id: &str, known: Vec<KnownInstance>) {
        let inv = Inventory::load(inventory).unwrap();
        let identity = Identity::of(&inv);
        let start = Record::RunStart {
            run: id.into(),
            at: rollscript::journal::now(),
            script: "scripts/rolling.rhai".into(),
            script_sha256: String::new(),
            inventory: inventory.display().to_string(),
            inventory_sha256: inv.hash.clone(),
            user: "ops".into(),
            host: rollscript::lock::hostname(),
            pid: 4_000_000,
            args: vec![],
            identity: Some(identity.fingerprint),
            inventory_path: Some(identity.path.display().to_string()),
            script_path: None,
            boot_id: rollscript::lock::boot_id(),
            proc_start: 0,
            instances: known,
        };
        let lines = [
            serde_json::to_string(&start).unwrap(),
            r#"{"type":"intent","seq":1,"at":"","op":"deregister","instance":"web-9","text":""}"#
                .into(),
            r#"{"type":"result","seq":1,"at":"","ok":true,"duration_ms":1}"#.into(),
        ];
        let dir = rollscript::journal::runs_dir(inventory);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{id}.jsonl")), lines.join("\n") + "\n").unwrap();
    }

    fn recover(dir: &Path) -> std::process::Output {
        fs::write(dir.join("aws-config"), "").unwrap();
        fs::write(dir.join("aws-credentials"), "").unwrap();
        rollscript()
            .current_dir(dir)
            .args(["recover", "--yes", "-i", "rollscript.toml"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.join("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("aws-credentials"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .output()
            .unwrap()
    }

    #[test]
    fn recover_puts_back_a_discovered_instance_also_after_it_left_the_target_group() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let moto = Moto::start();
        let sdk = rt.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("testing", "testing", None, None, "t"))
                .endpoint_url(moto.endpoint())
                .load(),
        );
        let ec2c = ec2::Client::new(&sdk);
        let elbc = elb::Client::new(&sdk);
        let ip = next_ip();
        let health = HttpServer::always(&ip, Reply::Status(200));
        let port = health.port();
        let (tg, id) = rt.block_on(async {
            let vpc = ec2c
                .create_vpc()
                .cidr_block("127.0.0.0/16")
                .send()
                .await
                .unwrap()
                .vpc()
                .unwrap()
                .vpc_id()
                .unwrap()
                .to_string();
            let subnet = ec2c
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block("127.0.1.0/24")
                .availability_zone("us-east-1a")
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_string();
            let id = ec2c
                .run_instances()
                .image_id("ami-12345678")
                .min_count(1)
                .max_count(1)
                .subnet_id(&subnet)
                .private_ip_address(&ip)
                .tag_specifications(
                    ec2::types::TagSpecification::builder()
                        .resource_type(ec2::types::ResourceType::Instance)
                        .tags(
                            ec2::types::Tag::builder()
                                .key("Name")
                                .value("web-9")
                                .build(),
                        )
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .instances()[0]
                .instance_id()
                .unwrap()
                .to_string();
            let tg = elbc
                .create_target_group()
                .name("discover-tg")
                .protocol(ProtocolEnum::Http)
                .port(i32::from(port))
                .vpc_id(&vpc)
                .target_type(TargetTypeEnum::Instance)
                .send()
                .await
                .unwrap()
                .target_groups()[0]
                .target_group_arn()
                .unwrap()
                .to_string();
            elbc.modify_target_group_attributes()
                .target_group_arn(&tg)
                .attributes(
                    TargetGroupAttribute::builder()
                        .key("deregistration_delay.timeout_seconds")
                        .value("30")
                        .build(),
                )
                .send()
                .await
                .unwrap();
            (tg, id)
        });
        let dir = tempfile::tempdir().unwrap();
        let inventory = dir.path().join("rollscript.toml");
        fs::write(
            &inventory,
            format!(
                "[app]\nname = \"disco\"\ndeploy = \"true\"\n\
                 [health]\nport = {port}\ninterval = \"100ms\"\nretries = 10\nhealthy_threshold = 1\n\
                 [lb]\nkind = \"aws\"\ntarget_group_arn = \"{tg}\"\nregion = \"us-east-1\"\n\
                 endpoint = \"{}\"\ndiscover = true\nmin_in_service = 0\npoll_interval = \"200ms\"\nregister_timeout = \"30s\"\n",
                moto.endpoint()
            ),
        )
        .unwrap();
        let register = || {
            rt.block_on(
                elbc.register_targets()
                    .target_group_arn(&tg)
                    .targets(
                        TargetDescription::builder()
                            .id(&id)
                            .port(i32::from(port))
                            .build(),
                    )
                    .send(),
            )
            .unwrap();
        };
        let deregister = || {
            rt.block_on(
                elbc.deregister_targets()
                    .target_group_arn(&tg)
                    .targets(
                        TargetDescription::builder()
                            .id(&id)
                            .port(i32::from(port))
                            .build(),
                    )
                    .send(),
            )
            .unwrap();
        };
        let state = || rt.block_on(targets(&elbc, &tg));

        // 1. Killed while web-9 drains: discovery finds it, recover puts it back.
        register();
        deregister();
        assert_eq!(state(), [(id.clone(), "draining".to_string())]);
        dead_run(&inventory, "20260101T000000Z-1", Vec::new());
        let out = recover(dir.path());
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(stderr.contains("discovered 1 instance(s)"), "{stderr}");
        assert!(
            stdout.contains("web-9: back in service — healthy; back in service"),
            "{stdout}{stderr}"
        );
        wait_until("web-9 healthy", Duration::from_secs(30), || {
            state() == [(id.clone(), "healthy".to_string())]
        });

        // 2. Killed after web-9 left the target group for good: the run's
        // own record of its discovered fleet names it.
        rt.block_on(
            elbc.modify_target_group_attributes()
                .target_group_arn(&tg)
                .attributes(
                    TargetGroupAttribute::builder()
                        .key("deregistration_delay.timeout_seconds")
                        .value("0")
                        .build(),
                )
                .send(),
        )
        .unwrap();
        deregister();
        wait_until(
            "web-9 gone from the target group",
            Duration::from_secs(30),
            || state().is_empty(),
        );
        let known = KnownInstance {
            name: "web-9".into(),
            host: ip.clone(),
            port: None,
            ssh_port: None,
            health_port: None,
            id: Some(id.clone()),
            pool: None,
            weight: None,
        };
        dead_run(&inventory, "20260101T000001Z-1", vec![known]);
        let out = recover(dir.path());
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stdout.contains("recovering run 20260101T000001Z-1"),
            "{stdout}{stderr}"
        );
        assert!(
            stdout.contains("web-9: back in service — healthy; back in service"),
            "{stdout}{stderr}"
        );
        wait_until("web-9 healthy again", Duration::from_secs(30), || {
            state() == [(id.clone(), "healthy".to_string())]
        });
        drop(health);
    }
}
