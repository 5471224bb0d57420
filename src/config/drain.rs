//! `lb.drain_detect` and `lb.drain_settle`: what may end a drain besides the
//! load balancer's own word.

use std::time::Duration;

/// How long the host must show no established connection to the traffic
/// port before an on-host drain ends: long enough that a load balancer still
/// finishing its switch-over (an ALB node that has not yet heard of the
/// deregister) shows up as a new connection, short against any LB's delay.
pub const DEFAULT_DRAIN_SETTLE: Duration = Duration::from_secs(1);

/// `lb.drain_detect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainDetect {
    /// The LB's state, and the connections counted on the instance itself
    /// (`ss` over its ssh master) where that is possible: an ELBv2 target
    /// that is `draining` with no connection left on the host for
    /// `lb.drain_settle` is drained, whatever the deregistration delay.
    #[default]
    Auto,
    /// The LB's state alone (ELBv2: `unused`, i.e. the whole
    /// deregistration delay when anything was connected).
    Lb,
}

impl DrainDetect {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "lb" => Ok(Self::Lb),
            other => Err(format!(
                "unknown value {other:?}: expected \"auto\" (the LB's state and the connections on the host) or \"lb\" (the LB's state alone)"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Lb => "lb",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Inventory;

    const INV: &str = r#"[app]
name = "credit_radar"
deploy = "./deploy.sh"

[lb]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "credit_radar"
EXTRA

[[instances]]
name = "web-1"
host = "10.0.1.10"
"#;

    fn parse(extra: &str) -> Result<Inventory, String> {
        Inventory::parse(Path::new("rollscript.toml"), &INV.replace("EXTRA", extra))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn drains_are_detected_on_the_host_with_a_one_second_settle_by_default() {
        let inv = parse("").unwrap();
        assert_eq!(inv.lb.drain_detect, DrainDetect::Auto);
        assert_eq!(inv.lb.drain_settle, Duration::from_secs(1));
        let inv = parse("drain_detect = \"lb\"\ndrain_settle = \"250ms\"").unwrap();
        assert_eq!(inv.lb.drain_detect, DrainDetect::Lb);
        assert_eq!(inv.lb.drain_settle, Duration::from_millis(250));
    }

    #[test]
    fn an_unknown_drain_detect_names_the_key_its_line_and_the_choices() {
        assert_eq!(
            parse("drain_detect = \"connections\"").unwrap_err(),
            "rollscript.toml:9: lb.drain_detect: unknown value \"connections\": expected \"auto\" \
             (the LB's state and the connections on the host) or \"lb\" (the LB's state alone)"
        );
    }

    #[test]
    fn a_bad_drain_settle_names_the_key() {
        let e = parse("drain_settle = \"soon\"").unwrap_err();
        assert!(
            e.starts_with("rollscript.toml:9: lb.drain_settle: invalid duration \"soon\""),
            "{e}"
        );
    }
}
