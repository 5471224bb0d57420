//! What `recover` will do, numbered, before it does it.

use std::fmt::Write;
use std::path::Path;

use crate::compensate;
use crate::effects::Effects;
use crate::journal;

/// What recover will do, numbered, before it does it.
pub(crate) fn plan(
    effects: &Effects,
    targets: &[compensate::Target],
    hook: Option<&Path>,
    weights: bool,
) -> String {
    let inv = &effects.inventory;
    let mut out = String::from("plan:\n");
    let mut n = 0;
    let mut step = |out: &mut String, text: String| {
        n += 1;
        writeln!(out, "  {n}. {text}").unwrap();
    };
    for compensate::Target { name, touched, .. } in targets {
        let touched = *touched;
        let Some(inst) = inv.instance(name) else {
            step(
                &mut out,
                format!("{name}: not in the inventory any more: left out, check it by hand"),
            );
            continue;
        };
        let back = format!(
            "then back into the load balancer ({}), if healthy",
            effects.lb_kind()
        );
        let text = match (hook, touched) {
            (Some(script), _) => format!(
                "{name}: the script's on_compensate step ({}), {back}",
                script.display()
            ),
            (None, true) => match &inv.app.rollback {
                Some(cmd) => format!(
                    "{name}: app.rollback (a command ran on it after it was taken out): {}; health check {}; {back}",
                    journal::redact(cmd),
                    inv.health_url(inst)
                ),
                None => format!(
                    "{name}: no app.rollback configured, kept as deployed; health check {}; {back}",
                    inv.health_url(inst)
                ),
            },
            (None, false) => format!("{name}: health check {}; {back}", inv.health_url(inst)),
        };
        step(&mut out, text);
    }
    if weights {
        step(
            &mut out,
            "LB weights: every instance back to its configured weight".into(),
        );
    }
    out
}
