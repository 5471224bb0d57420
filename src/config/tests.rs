use std::path::Path;
use std::time::Duration;

use super::*;

const BASE: &str = r#"[app]
name = "credit_radar"
deploy = "./deploy.sh"

[health]
port = 4000

[lb]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "credit_radar"
drain_timeout = "120s"

[[instances]]
name = "web-1"
host = "10.0.1.10"
"#;

fn parse(text: &str) -> Result<Inventory, ConfigError> {
    Inventory::parse(Path::new("rollscript.toml"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn parses_the_design_example() {
    let inv = parse(BASE).unwrap();
    assert_eq!(inv.app.name, "credit_radar");
    assert_eq!(inv.lb.drain_timeout, Duration::from_secs(120));
    assert_eq!(inv.lb.backend.kind(), "haproxy");
    assert_eq!(inv.instances[0].name, "web-1");
    assert_eq!(
        inv.health_url(&inv.instances[0]),
        "http://10.0.1.10:4000/health"
    );
    assert_eq!(inv.ssh.host_key_checking, HostKeyPolicy::Strict);
}

#[test]
fn bad_duration_names_file_line_and_key() {
    let text = BASE.replace(
        "drain_timeout = \"120s\"",
        "drain_timeout = \"2 minutes please\"",
    );
    let e = err(&text);
    assert!(
        e.starts_with(
            "rollscript.toml:12: lb.drain_timeout: invalid duration \"2 minutes please\""
        ),
        "{e}"
    );
}

#[test]
fn misspelt_key_is_named_with_a_suggestion() {
    let text = BASE.replace("drain_timeout", "drain_timout");
    assert_eq!(
        err(&text),
        "rollscript.toml:12: lb.drain_timout: unknown key `drain_timout` (did you mean `drain_timeout`?)"
    );
}

#[test]
fn unknown_table_is_an_error() {
    let text = format!("{BASE}\n[healthcheck]\nport = 1\n");
    let e = err(&text);
    assert!(e.contains("unknown key `healthcheck`"), "{e}");
    assert!(
        e.starts_with("rollscript.toml:18: healthcheck: unknown key"),
        "{e}"
    );
}

#[test]
fn wrong_type_is_located() {
    let text = BASE.replace("port = 4000", "port = \"4000\"");
    let e = err(&text);
    assert!(e.starts_with("rollscript.toml:6: health.port:"), "{e}");
}

#[test]
fn duplicate_and_hostile_instance_names_are_refused() {
    let dup = format!("{BASE}\n[[instances]]\nname = \"web-1\"\nhost = \"10.0.1.11\"\n");
    assert_eq!(
        err(&dup),
        "rollscript.toml:19: instances[1].name: duplicate instance name \"web-1\""
    );
    let hostile = BASE.replace("name = \"web-1\"", "name = \"web-1;shutdown\"");
    assert!(err(&hostile).contains("instances[0].name: invalid name \"web-1;shutdown\""));
    let host = BASE.replace("host = \"10.0.1.10\"", "host = \"$(reboot)\"");
    assert!(err(&host).contains("instances[0].host: invalid host"));
}

#[test]
fn empty_fleet_is_refused() {
    let text = BASE.split("[[instances]]").next().unwrap();
    assert!(err(text).contains("the fleet is empty"));
}

#[test]
fn percentages_and_counts_for_min_in_service() {
    let pct = BASE.replace("drain_timeout = \"120s\"", "min_in_service = \"50%\"");
    assert_eq!(
        parse(&pct).unwrap().lb.min_in_service,
        CountOrPercent::Percent(50.0)
    );
    let bad = BASE.replace("drain_timeout = \"120s\"", "min_in_service = \"half\"");
    assert!(err(&bad).contains("lb.min_in_service: invalid count \"half\""));
}

#[test]
fn keys_of_another_lb_kind_are_refused() {
    let text = BASE.replace(
        "backend = \"credit_radar\"",
        "backend = \"credit_radar\"\ntarget_group_arn = \"arn:x\"",
    );
    assert!(err(&text).contains("lb.target_group_arn: not used when kind = \"haproxy\""));
}

#[test]
fn missing_app_name_and_required_lb_keys() {
    assert!(err(&BASE.replace("name = \"credit_radar\"\n", "")).contains("app: missing key `name`"));
    assert!(err(&BASE.replace("backend = \"credit_radar\"\n", ""))
        .contains("lb: missing key `backend` (required when kind = \"haproxy\")"));
}

#[test]
fn syntax_error_in_toml_is_located() {
    let e = err("[app\nname = 1\n");
    assert!(e.starts_with("rollscript.toml:1"), "{e}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the bytes, parsing returns a located error or an inventory: never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            if let Err(e) = parse(&text) {
                prop_assert!(e.to_string().starts_with("rollscript.toml"));
            }
        }

        /// Edits of a valid inventory either parse or name a line inside the file.
        #[test]
        fn mutated_inventories_fail_with_a_line_inside_the_file(
            pos in 0usize..BASE.len(),
            insert in "[a-z_=\"%.\\[\\] 0-9\n]{1,12}",
        ) {
            let mut text = BASE.to_string();
            let pos = (0..=pos).rev().find(|p| text.is_char_boundary(*p)).unwrap();
            text.insert_str(pos, &insert);
            if let Err(e) = parse(&text) {
                let lines = text.lines().count() + 1;
                if let Some(line) = e.line {
                    prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
                }
            }
        }
    }
}

#[test]
fn state_defaults_to_local_and_postgres_needs_a_url() {
    assert_eq!(parse(BASE).unwrap().state, StateSettings::default());
    let pg = format!(
        "{BASE}\n[state]\nbackend = \"postgres\"\nurl = \"postgres://deploy:pw@db/rs\"\nlease = \"10s\"\n"
    );
    let s = parse(&pg).unwrap().state;
    assert_eq!(
        s.store,
        StateStore::Postgres {
            url: "postgres://deploy:pw@db/rs".into()
        }
    );
    assert_eq!(s.lease, Duration::from_secs(10));
    // Not set in the environment here: the missing URL is named with its key.
    if std::env::var_os("ROLLSCRIPT_STATE_URL").is_none() {
        let e = err(&format!("{BASE}\n[state]\nbackend = \"postgres\"\n"));
        assert_eq!(
            e,
            "rollscript.toml:18: state: missing key `url` (e.g. url = \"postgres://deploy@db/rollscript\"), or set ROLLSCRIPT_STATE_URL"
        );
    }
}

#[test]
fn state_refuses_unknown_keys_and_settings_that_only_look_shared() {
    let e = err(&format!(
        "{BASE}\n[state]\nbackend = \"postgres\"\nurl = \"postgres://db/rs\"\nleese = \"10s\"\n"
    ));
    assert_eq!(
        e,
        "rollscript.toml:21: state.leese: unknown key `leese` (did you mean `lease`?)"
    );
    let e = err(&format!(
        "{BASE}\n[state]\nurl = \"postgres://u:secret@db/rs\"\n"
    ));
    assert_eq!(
        e,
        "rollscript.toml:19: state.url: not used when backend = \"local\" (set backend = \"postgres\" to share the lock and the journal)"
    );
    let e = err(&format!("{BASE}\n[state]\nbackend = \"redis\"\n"));
    assert!(
        e.starts_with("rollscript.toml:19: state.backend: unknown state backend \"redis\""),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}\n[state]\nbackend = \"postgres\"\nurl = \"mysql://u:secret@db/rs\"\n"
    ));
    assert_eq!(
        e,
        "rollscript.toml:20: state.url: invalid URL \"mysql://u:***@db/rs\": expected postgres://user@host/database"
    );
}

const TWO_LBS: &str = r#"[app]
name = "credit_radar"
deploy = "./deploy.sh"

[health]
port = 4000

[[lb]]
kind = "haproxy"
socket = "/run/haproxy/a.sock"
backend = "credit_radar"
drain_timeout = "30s"

[[lb]]
kind = "haproxy"
socket = "/run/haproxy/b.sock"
backend = "credit_radar"
drain_timeout = "90s"
on_drain_timeout = "fail"

[[instances]]
name = "web-1"
host = "10.0.1.10"
"#;

#[test]
fn several_load_balancers_each_get_a_name_and_their_own_settings() {
    let inv = parse(TWO_LBS).unwrap();
    let names: Vec<&str> = inv.lbs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["haproxy-1", "haproxy-2"]);
    assert_eq!(inv.lbs[0].on_drain_timeout, DrainPolicy::Proceed);
    assert_eq!(inv.lbs[1].on_drain_timeout, DrainPolicy::Fail);
    // Steps are bounded by the slowest LB.
    assert_eq!(inv.lb.drain_timeout, Duration::from_secs(90));
    let single = parse(BASE).unwrap();
    assert_eq!(single.lbs.len(), 1);
    assert_eq!(single.lb.name, "haproxy");
}

#[test]
fn errors_in_an_lb_entry_name_its_index_and_line() {
    let typo = TWO_LBS.replace("drain_timeout = \"90s\"", "drain_timout = \"90s\"");
    assert_eq!(
        err(&typo),
        "rollscript.toml:18: lb[1].drain_timout: unknown key `drain_timout` (did you mean `drain_timeout`?)"
    );
    let bad = TWO_LBS.replace("on_drain_timeout = \"fail\"", "on_drain_timeout = \"wait\"");
    assert_eq!(
        err(&bad),
        "rollscript.toml:19: lb[1].on_drain_timeout: expected \"proceed\" or \"fail\", got \"wait\""
    );
    let missing = TWO_LBS.replace("socket = \"/run/haproxy/b.sock\"\n", "");
    assert!(
        err(&missing).contains("lb[1]: missing key `socket`"),
        "{}",
        err(&missing)
    );
    let guard = TWO_LBS.replace("on_drain_timeout = \"fail\"", "min_in_service = 2");
    assert!(
        err(&guard).contains("lb[1].min_in_service: set min_in_service on the first [[lb]] only"),
        "{}",
        err(&guard)
    );
    let twice = TWO_LBS.replace(
        "kind = \"haproxy\"\n",
        "kind = \"haproxy\"\nname = \"edge\"\n",
    );
    assert!(
        err(&twice).contains("lb[1].name: two load balancers are named \"edge\""),
        "{}",
        err(&twice)
    );
}
