//! docs/customising.md: the example of a team's reordered rolling script
//! (`examples/custom_rolling.rhai`) passes `rollscript check`, and its plan
//! lists the steps in the documented order — smoke test after the health
//! check and before the instance is put back, a notification closing each
//! batch, the operator's go-ahead opening every batch after the first.

use crate::harness::{repo, rollscript};

const EXAMPLE: &str = "examples/custom_rolling.rhai";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The body of the first fenced block of `lang` after `after` in `text`.
fn fenced_block(text: &str, lang: &str, after: &str) -> String {
    let start = text.find(after).unwrap_or_else(|| panic!("no {after:?}"));
    let rest = &text[start..];
    let open = format!("```{lang}\n");
    let body = &rest[rest.find(&open).unwrap_or_else(|| panic!("no {open:?}")) + open.len()..];
    body[..body.find("```").unwrap()].to_string()
}

#[test]
fn the_documented_example_is_the_one_in_examples() {
    let doc = read("docs/customising.md");
    assert_eq!(
        fenced_block(&doc, "rhai", "This is `examples/custom_rolling.rhai`"),
        read(EXAMPLE),
        "docs/customising.md shows examples/custom_rolling.rhai verbatim"
    );
}

#[test]
fn the_custom_rolling_example_passes_check() {
    let out = rollscript()
        .current_dir(repo())
        .args(["check", EXAMPLE])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("ok  {EXAMPLE}"));
}

/// What a plan line does, and to which instance (`web-N`, from its name or
/// its address in examples/haproxy.toml).
fn step(line: &str) -> (&'static str, Option<String>) {
    let text = line.split_once(". ").map(|(_, t)| t).unwrap_or(line);
    let inst = (1..=3)
        .find(|i| text.contains(&format!("web-{i}")) || text.contains(&format!("10.0.1.{}", 9 + i)))
        .map(|i| format!("web-{i}"));
    let kind = if text.starts_with("confirm: ") {
        "confirm"
    } else if text.starts_with("notify ") {
        "notify"
    } else if text.starts_with("local: ./smoke-test.sh ") {
        "smoke"
    } else if text.starts_with("http GET ") {
        "health"
    } else if text.starts_with("ssh ") && text.contains("./deploy.sh v2") {
        "deploy"
    } else if text.ends_with(": drain") {
        "deregister"
    } else if text.contains("wait until 0 sessions") {
        "drain"
    } else if text.ends_with(": ready") {
        "register"
    } else if text.contains("wait until UP") {
        "in_service"
    } else {
        panic!("unexpected plan step {line:?}")
    };
    (kind, inst)
}

#[test]
fn the_custom_rolling_plan_lists_the_steps_in_the_documented_order() {
    let out = rollscript()
        .current_dir(repo())
        .args([
            "plan",
            EXAMPLE,
            "-i",
            "examples/haproxy.toml",
            "--var",
            "version=v2",
            "--var",
            "notify_url=https://hooks.example.com/deploys",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let numbered: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .collect();

    let mut want = Vec::new();
    for i in 1..=3 {
        let web = Some(format!("web-{i}"));
        if i > 1 {
            want.push(("confirm", None));
        }
        for kind in [
            "deregister",
            "drain",
            "deploy",
            "health",
            "smoke",
            "register",
            "in_service",
        ] {
            want.push((kind, web.clone()));
        }
        want.push(("notify", None));
    }
    let got: Vec<(&str, Option<String>)> = numbered.iter().map(|l| step(l)).collect();
    assert_eq!(got, want, "plan:\n{stdout}");
    assert!(
        numbered[7].contains("\"credit_radar: batch 1 of 3 on v2\"")
            && numbered[8]
                .contains("batch 1 of 3 is live on v2: go on with the next 1 instance(s)?"),
        "the notification and the question name the batch:\n{stdout}"
    );

    // Every plan line the doc shows is the real plan's, word for word.
    let doc = read("docs/customising.md");
    let start = doc
        .find("$ rollscript plan examples/custom_rolling.rhai")
        .expect("the doc shows the plan command");
    let shown = &doc[start..start + doc[start..].find("```").unwrap()];
    for line in shown.lines().filter(|l| {
        l.trim_start()
            .split_once(". ")
            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    }) {
        assert!(
            numbered.contains(&line),
            "docs/customising.md shows {line:?}, which the plan does not print:\n{stdout}"
        );
    }
}
