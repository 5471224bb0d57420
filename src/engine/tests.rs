//! Script diagnostics and the script API, against the real engine with live
//! local commands and no load balancer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::Inventory;
use crate::effects::Effects;
use crate::plan::Recorder;

const INVENTORY: &str = r#"
[app]
name = "demo"
deploy = "true"
[[instances]]
name = "web-1"
host = "127.0.0.1"
[[instances]]
name = "web-2"
host = "127.0.0.2"
[[instances]]
name = "web-3"
host = "127.0.0.3"
"#;

struct Fixture {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Self {
            dir,
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// Compiles and runs `main.rhai`; returns the rendered error, if any,
    /// with the temp dir replaced by `DIR`.
    fn run(&self, vars: &[(&str, &str)], dry_run: bool) -> Result<rhai::Dynamic, String> {
        self.run_with(vars, dry_run, CancellationToken::new())
    }

    /// `run`, with the run's cancellation token (Ctrl-C) in the test's hands.
    fn run_with(
        &self,
        vars: &[(&str, &str)],
        dry_run: bool,
        cancel: CancellationToken,
    ) -> Result<rhai::Dynamic, String> {
        let inv = Arc::new(Inventory::parse(Path::new("inv.toml"), INVENTORY).unwrap());
        let _guard = self.runtime.enter();
        let effects = Arc::new(Effects::new(
            inv.clone(),
            crate::providers::build(&inv),
            dry_run.then(|| Arc::new(Recorder::new())),
            cancel,
        ));
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ctx = Arc::new(ScriptContext::new(
            effects,
            vars,
            Answers::Yes,
            self.runtime.handle().clone(),
        ));
        let host = Arc::new(Host::new(self.dir.path(), ctx));
        let dir = self.dir.path().display().to_string();
        let scrub = |s: String| s.replace(&dir, "DIR");
        let compiled = host
            .compile(&self.dir.path().join("main.rhai"))
            .map_err(|ds| scrub(ds.iter().map(|d| d.render()).collect::<String>()))?;
        let compiled = Arc::new(compiled);
        self.runtime
            .block_on(tokio::task::spawn_blocking(move || host.run(&compiled)))
            .unwrap()
            .map_err(|d| scrub(d.render()))
    }
}

fn error_of(files: &[(&str, &str)]) -> String {
    Fixture::new(files).run(&[], false).unwrap_err()
}

#[test]
fn syntax_error_on_line_7_points_at_it() {
    let e = error_of(&[(
        "main.rhai",
        "let a = 1;\nlet b = 2;\n\n\n\n\nlet c = (a + ;\n",
    )]);
    insta::assert_snapshot!(e);
}

#[test]
fn unknown_function_is_refused_before_running() {
    // The first line would act if the script ran at all.
    let e = error_of(&[(
        "main.rhai",
        "local(\"touch side-effect\");\nlet x = 1;\ndeploy_onne(x);\n",
    )]);
    insta::assert_snapshot!(e);
    assert!(!Path::new("side-effect").exists());
}

#[test]
fn wrong_argument_type_names_what_was_expected() {
    let e = error_of(&[(
        "main.rhai",
        "let inst = instances()[0];\nwait_drained(42);\n",
    )]);
    insta::assert_snapshot!(e);
}

#[test]
fn error_inside_an_imported_module_shows_the_chain() {
    let e = error_of(&[
        (
            "main.rhai",
            "import \"lib\" as lib;\n\nfn outer() {\n    lib::inner(1)\n}\nouter();\n",
        ),
        (
            "lib.rhai",
            "fn inner(x) {\n    let y = x;\n    y.no_such_property\n}\n",
        ),
    ]);
    insta::assert_snapshot!(e);
}

#[test]
fn syntax_error_inside_an_imported_module_names_the_module() {
    let e = error_of(&[
        (
            "main.rhai",
            "// deploy\nimport \"lib\" as lib;\nlib::f();\n",
        ),
        ("lib.rhai", "fn f() {\n    let = 3;\n}\n"),
    ]);
    insta::assert_snapshot!(e);
}

#[test]
fn error_thrown_by_a_primitive_carries_status_and_stderr() {
    let e = error_of(&[(
        "main.rhai",
        "local(\"echo first >&2; echo disk full >&2; exit 3\");\n",
    )]);
    insta::assert_snapshot!(e);
}

#[test]
fn scripts_catch_primitive_errors_and_read_their_fields() {
    let out = Fixture::new(&[(
        "main.rhai",
        r#"let out = "no error";
           try { local("echo bad >&2; exit 4"); } catch (e) { out = `${e.kind}|${e.host}|${e.status}|${e.stderr}|${e.command}`; }
           out"#,
    )])
    .run(&[], false)
    .unwrap();
    assert_eq!(
        out.to_string(),
        "command_failed|local|4|bad|echo bad >&2; exit 4"
    );
}

#[test]
fn imports_cannot_escape_the_script_folder() {
    let e = error_of(&[("main.rhai", "import \"../etc/passwd\" as p;\n")]);
    assert!(
        e.contains("import \"../etc/passwd\" is outside the script's folder"),
        "{e}"
    );
    let e = error_of(&[("main.rhai", "import \"/etc/passwd\" as p;\n")]);
    assert!(e.contains("is outside the script's folder"), "{e}");
}

#[test]
fn missing_module_lists_the_stdlib() {
    let e = error_of(&[("main.rhai", "\nimport \"nope\" as n;\n")]);
    assert!(e.contains("module \"nope\" not found"), "{e}");
    assert!(e.contains("main.rhai:2:1"), "{e}");
}

#[test]
fn eval_is_disabled() {
    let e = error_of(&[("main.rhai", "eval(\"1\");\n")]);
    assert!(e.contains("syntax error"), "{e}");
}

#[test]
fn runaway_recursion_and_endless_loops_stop_with_a_clear_error() {
    let e = error_of(&[("main.rhai", "fn f(x) { f(x + 1) }\nf(0);\n")]);
    assert!(
        e.contains("call stack too deep") || e.contains("Stack overflow") || e.contains("too deep"),
        "{e}"
    );
}

#[test]
fn var_takes_the_defaults_type_and_chunks_split_by_percent() {
    let f = Fixture::new(&[(
        "main.rhai",
        r#"let n = var("batch", 1); let p = var("pct", "1"); let missing = var("x", true);
           let sizes = chunks(instances(), p).map(|c| c.len());
           `${type_of(n)}:${n} ${p} ${missing} ${sizes}`"#,
    )]);
    let out = f.run(&[("batch", "2"), ("pct", "50%")], false).unwrap();
    assert_eq!(out.to_string(), "i64:2 50% true [2, 1]");
}

#[test]
fn missing_required_var_names_the_flag() {
    let e = Fixture::new(&[("main.rhai", "let v = var(\"version\");\n")])
        .run(&[], false)
        .unwrap_err();
    assert!(e.contains("missing --var version=VALUE"), "{e}");
}

#[test]
fn parallel_returns_results_in_order_and_reports_every_failure() {
    let f = Fixture::new(&[(
        "main.rhai",
        r#"let r = parallel([3, 1, 2], 3, |n| { let o = local(`sleep 0.0${n}; echo ${n}`).stdout; o.trim(); o });
           let out = "no error";
           try {
               parallel(["a", "b", "c"], 2, |x| { if x != "b" { throw `bad ${x}`; } x });
           } catch (e) { out = `${r} ${e.message}`; }
           out"#,
    )]);
    let out = f.run(&[], false).unwrap().to_string();
    assert!(
        out.starts_with("[\"3\", \"1\", \"2\"] 2 of 3 parallel items failed"),
        "{out}"
    );
    assert!(
        out.contains("item 0: ") && out.contains("item 2: "),
        "{out}"
    );
}

#[test]
fn once_runs_its_step_once_per_run_even_across_parallel_branches() {
    let f = Fixture::new(&[(
        "main.rhai",
        r#"let counter = local("mktemp").stdout; counter.trim();
           parallel(instances(), 3, |i| once("migrate", || local(`echo x >> ${counter}`)));
           for b in 0..3 { once("migrate", || local(`echo x >> ${counter}`)); }
           let n = local(`wc -l < ${counter}`).stdout; n.trim(); n"#,
    )]);
    assert_eq!(f.run(&[], false).unwrap().to_string(), "1");
}

#[test]
fn module_top_level_runs_no_steps_in_a_plan() {
    let f = Fixture::new(&[(
        "main.rhai",
        "for i in instances() { ssh(i, \"./deploy.sh\"); }\n",
    )]);
    assert!(f.run(&[], true).is_ok());
}

#[test]
fn sleep_with_a_number_is_ours_in_milliseconds_and_recorded_in_a_plan() {
    // Rhai's built-in sleep(INT) takes seconds and would block for real.
    let f = Fixture::new(&[("main.rhai", "sleep(3600000); sleep(1.5); sleep(\"2h\");\n")]);
    assert!(f.run(&[], true).is_ok());
}

#[test]
fn an_instance_reads_and_prints_like_the_map_it_replaced() {
    let f = Fixture::new(&[(
        "main.rhai",
        r#"
let fleet = instances();
let a = fleet[0];
let out = [
    type_of(a), a.name, a.host, a.port, a.id, a.pool, a.weight, a.health_url,
    a["name"], `${a}`, a.to_map().host, a == fleet[0], a != fleet[1],
    fleet.map(|i| i.name), fleet.filter(|i| i.host == "127.0.0.2").len(),
];
// The other spellings of an instance still reach it.
lb_state("web-2");
lb_state(#{ name: "web-3" });
let bad = "";
try { let x = a["nope"]; } catch (e) { bad = e.message; }
out.push(bad);
out
"#,
    )]);
    let got: Vec<String> = f
        .run(&[], true)
        .unwrap()
        .into_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(
        got,
        [
            "Instance",
            "web-1",
            "127.0.0.1",
            "80",
            "",
            "",
            "",
            "http://127.0.0.1:80/health",
            "web-1",
            r#"#{"health_url": "http://127.0.0.1:80/health", "host": "127.0.0.1", "id": (), "name": "web-1", "pool": (), "port": 80, "weight": ()}"#,
            "127.0.0.1",
            "true",
            "true",
            r#"["web-1", "web-2", "web-3"]"#,
            "1",
            r#"an instance has no property "nope" (it has name, host, port, id, pool, weight, health_url)"#,
        ]
    );
}

/// Ctrl-C during a primitive inside `try`: the script stops; its `catch`
/// (which would return the caught message) never runs.
#[test]
fn a_catch_block_never_runs_after_an_interrupt() {
    let f = Fixture::new(&[(
        "main.rhai",
        "let caught = [];\ntry { sleep(30000); } catch (e) { caught.push(e.message); }\ncaught\n",
    )]);
    let cancel = CancellationToken::new();
    let later = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        later.cancel();
    });
    let e = f.run_with(&[], false, cancel).unwrap_err();
    canceller.join().unwrap();
    assert!(e.contains("interrupted"), "{e}");
}

/// The engine's per-operation check reads two atomics: it must agree with
/// the token once the token is read, and a new phase (compensation after a
/// Ctrl-C) starts uncancelled.
#[test]
fn the_cheap_cancel_check_follows_the_token_and_each_phase() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let inv = Arc::new(Inventory::parse(Path::new("inv.toml"), INVENTORY).unwrap());
    let token = CancellationToken::new();
    let effects = Effects::new(
        inv.clone(),
        crate::providers::build(&inv),
        None,
        token.clone(),
    );
    assert!(!effects.seen_cancelled());
    token.cancel();
    assert!(
        !effects.seen_cancelled(),
        "not seen before the token is read"
    );
    assert!(effects.is_cancelled());
    assert!(effects.seen_cancelled());
    let fresh = effects.renew_cancel();
    assert!(!effects.seen_cancelled(), "a new phase starts uncancelled");
    assert!(!effects.is_cancelled());
    assert!(
        !effects.seen_cancelled(),
        "the old token's cancel is not this phase's"
    );
    fresh.cancel();
    assert!(effects.is_cancelled());
    assert!(effects.seen_cancelled());
}
