//! Bad input corpus: malformed scripts and inventories. Each must exit 2
//! (or 1 where the mistake can only show at run time) with a located message,
//! and touch nothing: the script's first statement would create a marker
//! file, and no journal or lock may appear.

use std::path::Path;

use crate::harness::rollscript;

const GOOD_INVENTORY: &str = r#"[app]
name = "demo"
deploy = "true"
[lb]
kind = "none"
[[instances]]
name = "web-1"
host = "127.0.0.1"
"#;

/// A script whose first line would leave a marker if anything ran.
fn script(body: &str) -> String {
    format!("local(\"touch MARKER\");\n{body}")
}

struct Case {
    name: &'static str,
    script: String,
    inventory: String,
    extra_files: Vec<(&'static str, &'static str)>,
    exit: i32,
    /// Substrings the output must contain (message and location).
    expect: Vec<&'static str>,
    /// Whether the marker must be absent (false where the failure is at run time).
    untouched: bool,
}

fn case(name: &'static str, script_text: &str, exit: i32, expect: &[&'static str]) -> Case {
    Case {
        name,
        script: script(script_text),
        inventory: GOOD_INVENTORY.into(),
        extra_files: vec![],
        exit,
        expect: expect.to_vec(),
        untouched: exit == 2,
    }
}

fn inv_case(name: &'static str, inventory: &str, expect: &[&'static str]) -> Case {
    Case {
        name,
        script: script(""),
        inventory: inventory.into(),
        extra_files: vec![],
        exit: 2,
        expect: expect.to_vec(),
        untouched: true,
    }
}

fn cases() -> Vec<Case> {
    let g = GOOD_INVENTORY;
    vec![
        // ---- scripts: caught before anything runs (exit 2) ----
        case(
            "syntax error",
            "let x = (1 + ;\n",
            2,
            &["syntax error", "main.rhai:2:"],
        ),
        case(
            "unclosed block",
            "fn f() {\n let x = 1;\n",
            2,
            &["syntax error", "main.rhai:"],
        ),
        case(
            "unknown function",
            "deploy_onne(1);\n",
            2,
            &["unknown function: deploy_onne()", "main.rhai:2:1"],
        ),
        case(
            "unknown module function",
            "import \"steps\" as s;\ns::deploy_onne(1);\n",
            2,
            &["no imported module defines deploy_onne()"],
        ),
        case(
            "undefined variable",
            "print(nope);\n",
            2,
            &["nope", "main.rhai:2:"],
        ),
        case(
            "import escaping the folder",
            "import \"../x\" as x;\n",
            2,
            &["outside the script's folder", "main.rhai:2:1"],
        ),
        case(
            "absolute import",
            "import \"/etc/passwd\" as x;\n",
            2,
            &["outside the script's folder"],
        ),
        case(
            "missing module",
            "import \"nope\" as n;\n",
            2,
            &["module \"nope\" not found", "main.rhai:2:1"],
        ),
        case("eval is disabled", "eval(\"1\");\n", 2, &["syntax error"]),
        case("reserved word", "let fn = 1;\n", 2, &["syntax error"]),
        case(
            "bad string",
            "let s = \"unterminated;\n",
            2,
            &["syntax error"],
        ),
        Case {
            name: "syntax error in an imported module",
            script: script("import \"lib\" as lib;\nlib::f();\n"),
            inventory: g.into(),
            extra_files: vec![("lib.rhai", "fn f() {\n    let = 1;\n}\n")],
            exit: 2,
            expect: vec!["syntax error", "lib.rhai:2:", "import \"lib\""],
            untouched: true,
        },
        // ---- scripts: only knowable at run time (exit 1, located) ----
        case(
            "wrong argument type",
            "sleep(true);\n",
            1,
            &["expected a duration", "main.rhai:2:1"],
        ),
        case(
            "unknown instance",
            "deregister(\"web-9\");\n",
            1,
            &["no instance named \"web-9\"", "main.rhai:2:1"],
        ),
        case(
            "bad duration",
            "sleep(\"2 minutes please\");\n",
            1,
            &["invalid duration \"2 minutes please\""],
        ),
        case(
            "bad percentage",
            "chunks(instances(), \"150%\");\n",
            1,
            &["invalid percentage \"150%\""],
        ),
        case("infinite loop", "loop { }\n", 1, &["too many operations"]),
        case(
            "runaway recursion",
            "fn f(x) { f(x + 1) }\nf(0);\n",
            1,
            &["main.rhai:"],
        ),
        case(
            "missing --var",
            "let v = var(\"version\");\n",
            1,
            &["missing --var version=VALUE"],
        ),
        case(
            "bad parallel limit",
            "parallel([1], 0, |x| x);\n",
            1,
            &["limit must be at least 1"],
        ),
        // ---- inventories (exit 2, file:line: key) ----
        inv_case(
            "misspelt key",
            &g.replace("kind = ", "knd = "),
            &["rollscript.toml:5: lb.knd: unknown key `knd` (did you mean `kind`?)"],
        ),
        inv_case(
            "unknown table",
            &format!("{g}[healthcheck]\nport = 1\n"),
            &["rollscript.toml:9: healthcheck: unknown key"],
        ),
        inv_case("bad toml", "[app\n", &["rollscript.toml:1"]),
        inv_case(
            "wrong type",
            &g.replace("name = \"demo\"", "name = 3"),
            &["rollscript.toml:2: app.name:"],
        ),
        inv_case(
            "bad duration",
            &g.replace(
                "kind = \"none\"",
                "kind = \"none\"\ndrain_timeout = \"soon\"",
            ),
            &["rollscript.toml:6: lb.drain_timeout: invalid duration \"soon\""],
        ),
        inv_case(
            "duration without unit",
            &g.replace("kind = \"none\"", "kind = \"none\"\ndrain_timeout = \"30\""),
            &["lb.drain_timeout: invalid duration \"30\": add a unit"],
        ),
        inv_case(
            "bad percentage",
            &g.replace(
                "kind = \"none\"",
                "kind = \"none\"\nmin_in_service = \"150%\"",
            ),
            &["lb.min_in_service: invalid percentage \"150%\""],
        ),
        inv_case(
            "empty fleet",
            &g[..g.find("[[instances]]").unwrap()],
            &["instances: the fleet is empty"],
        ),
        inv_case(
            "duplicate names",
            &format!("{g}[[instances]]\nname = \"web-1\"\nhost = \"127.0.0.2\"\n"),
            &["instances[1].name: duplicate instance name \"web-1\""],
        ),
        inv_case(
            "hostile name",
            &g.replace("name = \"web-1\"", "name = \"web-1; rm -rf /\""),
            &["instances[0].name: invalid name \"web-1; rm -rf /\""],
        ),
        inv_case(
            "hostile host",
            &g.replace("host = \"127.0.0.1\"", "host = \"$(reboot)\""),
            &["instances[0].host: invalid host \"$(reboot)\""],
        ),
        inv_case(
            "missing host",
            &g.replace("host = \"127.0.0.1\"\n", ""),
            &["instances[0]: missing key `host`"],
        ),
        inv_case(
            "bad port",
            &g.replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 70000"),
            &["instances[0].port: invalid port 70000"],
        ),
        inv_case(
            "unknown lb kind",
            &g.replace("kind = \"none\"", "kind = \"f5\""),
            &["lb.kind: unknown load balancer \"f5\""],
        ),
        inv_case(
            "haproxy without backend",
            &g.replace(
                "kind = \"none\"",
                "kind = \"haproxy\"\nsocket = \"/x.sock\"",
            ),
            &["lb: missing key `backend`"],
        ),
        inv_case(
            "foreign key",
            &g.replace("kind = \"none\"", "kind = \"none\"\nsocket = \"/x.sock\""),
            &["lb.socket: not used when kind = \"none\""],
        ),
        inv_case(
            "missing app name",
            &g.replace("name = \"demo\"\n", ""),
            &["app: missing key `name`"],
        ),
        inv_case(
            "bad host key policy",
            &format!("{g}[ssh]\nhost_key_checking = \"no\"\n"),
            &["ssh.host_key_checking: invalid value \"no\""],
        ),
    ]
}

#[test]
fn every_bad_input_exits_with_a_located_message_and_touches_nothing() {
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.rhai"), &c.script).unwrap();
        std::fs::write(dir.path().join("rollscript.toml"), &c.inventory).unwrap();
        for (name, text) in &c.extra_files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let out = rollscript()
            .current_dir(dir.path())
            .args(["run", "main.rhai", "-i", "rollscript.toml", "--yes"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut problems = Vec::new();
        if out.status.code() != Some(c.exit) {
            problems.push(format!("exit {:?}, expected {}", out.status.code(), c.exit));
        }
        for e in &c.expect {
            if !stderr.contains(e) {
                problems.push(format!("missing {e:?}"));
            }
        }
        let marker = dir.path().join("MARKER").exists();
        if c.untouched && marker {
            problems.push("a step ran".into());
        }
        if c.exit == 2 && Path::new(&dir.path().join(".rollscript")).exists() {
            problems.push("left a journal or lock".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n--- stderr ---\n{stderr}",
                c.name,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
