//! Rhai values ↔ the typed Rust API. Bindings only convert and call.

use std::time::Duration;

use rhai::{Array, Dynamic, EvalAltResult, Map, Position, INT};

use crate::config::{parse_duration, CountOrPercent};
use crate::primitives::{ActionError, Cmd, DrainReport, ErrorKind, ExecOutput, HealthReport};

pub type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Marks maps built from an [`ActionError`], so rendering can tell them from
/// a script's own `throw #{...}`.
pub const ERROR_MARKER: &str = "rollscript_error";

/// A primitive's error, as the map scripts catch: `e.kind`, `e.message`, `e.host`, …
pub fn error_map(e: &ActionError) -> Map {
    let mut m = Map::new();
    m.insert(ERROR_MARKER.into(), true.into());
    m.insert("kind".into(), e.kind.as_str().into());
    m.insert("message".into(), e.message.clone().into());
    m.insert("host".into(), opt_str(e.host.as_deref()));
    m.insert("command".into(), opt_str(e.command.as_deref()));
    m.insert(
        "status".into(),
        e.status
            .map(|s| Dynamic::from(s as INT))
            .unwrap_or(Dynamic::UNIT),
    );
    m.insert("stderr".into(), e.stderr.join("\n").into());
    let mut details = Map::new();
    for (k, v) in &e.details {
        details.insert(k.as_str().into(), v.clone().into());
    }
    m.insert("details".into(), details.into());
    m.insert("unknown_outcome".into(), e.unknown_outcome.into());
    m
}

/// Reads a caught-and-rethrown error map back (so `throw e` keeps its kind).
pub fn error_from_map(m: &Map) -> Option<ActionError> {
    let kind_str = m.get("kind")?.clone().into_string().ok()?;
    let kind = ErrorKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind_str)?;
    let s = |k: &str| {
        m.get(k)
            .and_then(|v| v.clone().into_string().ok())
            .filter(|s| !s.is_empty())
    };
    let mut e = ActionError::new(kind, s("message").unwrap_or_default());
    e.host = s("host");
    e.command = s("command");
    e.status = m
        .get("status")
        .and_then(|v| v.as_int().ok())
        .map(|v| v as i32);
    e.unknown_outcome = m
        .get("unknown_outcome")
        .and_then(|v| v.as_bool().ok())
        .unwrap_or(false);
    e.stderr = s("stderr")
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default();
    if let Some(d) = m
        .get("details")
        .and_then(|d| d.read_lock::<Map>().map(|m| m.clone()))
    {
        e.details = d
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    Some(e)
}

pub fn throw(e: ActionError) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(error_map(&e).into(), Position::NONE).into()
}

pub fn invalid(message: impl Into<String>) -> Box<EvalAltResult> {
    throw(ActionError::new(ErrorKind::InvalidArgument, message))
}

fn opt_str(s: Option<&str>) -> Dynamic {
    s.map(|s| Dynamic::from(s.to_string()))
        .unwrap_or(Dynamic::UNIT)
}

/// A duration argument: `"1.5s"`, `"2m"` or an integer number of milliseconds.
pub fn duration_arg(v: &Dynamic) -> RhaiResult<Duration> {
    if let Ok(ms) = v.as_int() {
        if ms < 0 {
            return Err(invalid(format!("negative duration: {ms} ms")));
        }
        return Ok(Duration::from_millis(ms as u64));
    }
    if let Ok(f) = v.as_float() {
        if f < 0.0 || !f.is_finite() {
            return Err(invalid(format!("invalid duration: {f} ms")));
        }
        return Ok(Duration::from_secs_f64(f / 1000.0));
    }
    if v.is_string() {
        return parse_duration(&v.to_string()).map_err(invalid);
    }
    Err(invalid(format!(
        "expected a duration like \"1.5s\" or milliseconds, got {}",
        v.type_name()
    )))
}

pub fn count_or_percent_arg(v: &Dynamic) -> RhaiResult<CountOrPercent> {
    if let Ok(n) = v.as_int() {
        if n < 0 {
            return Err(invalid(format!("invalid count {n}: must be 0 or more")));
        }
        return Ok(CountOrPercent::Count(n as u64));
    }
    if v.is_string() {
        return CountOrPercent::parse(&v.to_string()).map_err(invalid);
    }
    Err(invalid(format!(
        "expected a count or a percentage like \"25%\", got {}",
        v.type_name()
    )))
}

/// A command: a string is a shell line (the operator's own), an array is an
/// argv whose every element is quoted.
pub fn cmd_arg(v: &Dynamic) -> RhaiResult<Cmd> {
    if v.is_string() {
        let s = v.to_string();
        if s.trim().is_empty() {
            return Err(invalid("empty command"));
        }
        return Ok(Cmd::Shell(s));
    }
    if let Some(a) = v.read_lock::<Array>() {
        if a.is_empty() {
            return Err(invalid("empty argv"));
        }
        return Ok(Cmd::Argv(a.iter().map(|x| x.to_string()).collect()));
    }
    Err(invalid(format!(
        "expected a command string or an argv array, got {}",
        v.type_name()
    )))
}

pub fn exec_map(o: &ExecOutput) -> Map {
    let mut m = Map::new();
    m.insert("status".into(), (o.status as INT).into());
    m.insert("stdout".into(), o.stdout.clone().into());
    m.insert("stderr".into(), o.stderr.clone().into());
    m.insert("duration".into(), o.duration.as_secs_f64().into());
    m
}

pub fn health_map(r: &HealthReport) -> Map {
    let mut m = Map::new();
    m.insert("url".into(), r.url.clone().into());
    m.insert("healthy".into(), true.into());
    m.insert("duration".into(), r.duration.as_secs_f64().into());
    let attempts: Array = r
        .attempts
        .iter()
        .map(|a| {
            let mut am = Map::new();
            am.insert("at".into(), a.at.as_secs_f64().into());
            am.insert("outcome".into(), a.outcome.clone().into());
            am.insert("ok".into(), a.ok.into());
            am.insert("latency".into(), a.latency.as_secs_f64().into());
            Dynamic::from(am)
        })
        .collect();
    m.insert("attempts".into(), attempts.into());
    m
}

pub fn drain_map(r: &DrainReport) -> Map {
    let mut m = Map::new();
    m.insert("waited".into(), r.waited.as_secs_f64().into());
    m.insert(
        "connections_at_start".into(),
        r.connections_at_start
            .map(|c| Dynamic::from(c as INT))
            .unwrap_or(Dynamic::UNIT),
    );
    m.insert("ended_by".into(), r.ended_by.as_str().into());
    m
}

/// Options map of `ssh`/`local`: `#{check: false, timeout: "30s"}`.
pub fn exec_options(m: &Map) -> RhaiResult<crate::effects::ExecOptions> {
    let mut o = crate::effects::ExecOptions::default();
    for (k, v) in m {
        match k.as_str() {
            "check" => {
                o.check = v
                    .as_bool()
                    .map_err(|t| invalid(format!("option `check` must be a bool, got {t}")))?
            }
            "timeout" => o.timeout = Some(duration_arg(v)?),
            other => {
                return Err(invalid(format!(
                    "unknown option `{other}` (expected `check` or `timeout`)"
                )))
            }
        }
    }
    Ok(o)
}
