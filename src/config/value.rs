//! Typed values shared by the inventory, `--var` and scripts: durations and
//! "a count or a percentage" (batch sizes, failure budgets, capacity floors).

use std::fmt;
use std::time::Duration;

/// Parses `"1.5s"`, `"2m"`, `"1h 30m"`, `"250ms"`. A bare number is refused on
/// purpose: `timeout = "30"` is ambiguous (seconds? milliseconds?) and the
/// operator should say which.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "invalid duration \"{text}\": add a unit, e.g. \"{text}s\" or \"{text}ms\""
        ));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration \"{text}\" ({e}); use e.g. \"90s\", \"2m\", \"1.5s\"")
    })
}

/// Renders a duration the way an operator writes it: `120s`, `1.5s`, `250ms`, `10m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) && ms >= 600_000 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A number of instances, either absolute or relative to a total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CountOrPercent {
    Count(u64),
    Percent(f64),
}

impl CountOrPercent {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage \"{text}\""))?;
            if !(0.0..=100.0).contains(&v) || !v.is_finite() {
                return Err(format!(
                    "invalid percentage \"{text}\": must be between 0% and 100%"
                ));
            }
            Ok(Self::Percent(v))
        } else {
            t.parse::<u64>().map(Self::Count).map_err(|_| {
                format!("invalid count \"{text}\": expected a whole number or a percentage like \"25%\"")
            })
        }
    }

    /// Resolves against `total`, rounding a percentage up so "10%" of 3 is 1,
    /// never 0. Use [`Self::of_floor`] where rounding up would be unsafe.
    pub fn of_ceil(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n as usize,
            Self::Percent(p) => ((p / 100.0) * total as f64 - 1e-9).ceil().max(0.0) as usize,
        }
    }

    /// Resolves against `total`, rounding a percentage down.
    pub fn of_floor(self, total: usize) -> usize {
        match self {
            Self::Count(n) => n as usize,
            Self::Percent(p) => ((p / 100.0) * total as f64 + 1e-9).floor() as usize,
        }
    }
}

impl fmt::Display for CountOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_fractions() {
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn durations_without_unit_or_in_prose_are_refused() {
        assert!(parse_duration("30").unwrap_err().contains("add a unit"));
        assert!(parse_duration("2 minutes please")
            .unwrap_err()
            .starts_with("invalid duration \"2 minutes please\""));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn percentages_round_up_for_batches_and_down_for_floors() {
        let p = CountOrPercent::parse("10%").unwrap();
        assert_eq!(p.of_ceil(3), 1);
        assert_eq!(p.of_floor(3), 0);
        assert_eq!(CountOrPercent::parse("50%").unwrap().of_ceil(10), 5);
        assert_eq!(CountOrPercent::parse("2").unwrap().of_ceil(10), 2);
        assert!(CountOrPercent::parse("150%").is_err());
        assert!(CountOrPercent::parse("-1").is_err());
        assert!(CountOrPercent::parse("abc").is_err());
    }

    #[test]
    fn durations_render_like_an_operator_writes_them() {
        assert_eq!(format_duration(Duration::from_secs(120)), "120s");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
