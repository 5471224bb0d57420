//! The command line end to end: exit codes, plans, errors, `check`, `api`.

use crate::harness::{repo, rollscript};

#[test]
fn plan_of_the_haproxy_example_lists_every_step_in_order() {
    let out = rollscript()
        .current_dir(repo())
        .args([
            "plan",
            "scripts/rolling.rhai",
            "-i",
            "examples/haproxy.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(plan.contains("Estimated duration"), "{plan}");
}
