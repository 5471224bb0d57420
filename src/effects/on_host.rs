//! Health checked on the instance itself, over its ssh connection: a CI
//! runner or a bastion often cannot reach the health port of a private
//! instance, the instance always can. `health.via = "ssh"` runs `curl`
//! against `localhost` there; `health.command` runs a command whose exit
//! status is the verdict. Same retries, threshold and report as HTTP.

use std::time::Duration;

use super::Effects;
use crate::config::{format_duration, Instance, OnHost};
use crate::primitives::{
    sh_quote, ActionError, ActionResult, Cmd, ErrorKind, HealthProbe, HealthReport,
};
use crate::providers::http::retry;

/// What one attempt on the host saw.
enum Verdict {
    Ok(String),
    Failed(String),
    /// Retrying cannot help (no curl on the host).
    Fatal(String),
}

/// `curl` printing the body (when one is expected) then the status code
/// on a last line of its own; no `-f`, so a 503 is a status, not an error.
pub(crate) fn curl_cmd(probe: &HealthProbe) -> Cmd {
    let secs = probe.timeout.as_secs_f64().max(0.1);
    let body = if probe.expect_body.is_some() {
        "-o -"
    } else {
        "-o /dev/null"
    };
    Cmd::Shell(format!(
        "curl -sS --noproxy '*' --max-time {secs} {body} -w '\\n%{{http_code}}' {}",
        sh_quote(&probe.url)
    ))
}

/// Reads curl's exit status and output as an attempt's outcome.
fn curl_verdict(probe: &HealthProbe, status: i32, stdout: &str, stderr: &str) -> Verdict {
    match status {
        0 => {}
        127 => {
            return Verdict::Fatal(
                "curl is not installed on the instance (health.via = \"ssh\" runs curl there): install it, or set health.command to a check of your own".into(),
            )
        }
        7 => return Verdict::Failed("connection refused".into()),
        28 => return Verdict::Failed(format!("timeout after {}", format_duration(probe.timeout))),
        52 => return Verdict::Failed("connection closed without a response".into()),
        n => {
            let why = stderr.lines().last().unwrap_or_default().trim();
            return Verdict::Failed(format!("curl exit {n}: {why}"));
        }
    }
    let text = stdout.trim_end_matches('\n');
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text));
    let code = code.trim();
    if code != probe.expect_status.to_string() {
        return Verdict::Failed(code.to_string());
    }
    match &probe.expect_body {
        Some(needle) if !body.contains(needle.as_str()) => {
            Verdict::Failed(format!("{code}, body lacks {needle:?}"))
        }
        _ => Verdict::Ok(code.to_string()),
    }
}

impl Effects {
    pub(super) async fn check_on_host(
        &self,
        inst: &Instance,
        probe: &HealthProbe,
        how: &OnHost,
    ) -> ActionResult<HealthReport> {
        let (cmd, limit, what, expect) = match how {
            // ssh's own connect is bounded by the transport; the margin is
            // for the round trip on an already open master.
            OnHost::Curl => (
                curl_cmd(probe),
                probe.timeout + Duration::from_secs(5),
                format!("{} (curl on {})", probe.url, inst.name),
                probe.expect_status.to_string(),
            ),
            OnHost::Command(c) => (
                Cmd::Shell(c.clone()),
                self.inventory.ssh.command_timeout,
                format!("{c} on {}", inst.name),
                "exit 0".to_string(),
            ),
        };
        let attempt = || async {
            let verdict = match self.providers.ssh.exec(inst, &cmd, limit).await {
                Err(e) if e.kind == ErrorKind::Cancelled => return Err(e),
                Err(e) => Verdict::Failed(format!("ssh: {}", e.message)),
                Ok(out) => match how {
                    OnHost::Curl => curl_verdict(probe, out.status, &out.stdout, &out.stderr),
                    OnHost::Command(_) if out.status == 0 => Verdict::Ok("exit 0".into()),
                    OnHost::Command(_) => {
                        let why = out
                            .stderr
                            .lines()
                            .chain(out.stdout.lines())
                            .rfind(|l| !l.trim().is_empty())
                            .map(|l| format!(": {}", l.trim()))
                            .unwrap_or_default();
                        Verdict::Failed(format!("exit {}{why}", out.status))
                    }
                },
            };
            match verdict {
                Verdict::Ok(o) => Ok((true, o)),
                Verdict::Failed(o) => Ok((false, o)),
                Verdict::Fatal(why) => Err(ActionError::new(ErrorKind::HealthFailed, why)
                    .host(&inst.name)
                    .command(cmd.to_shell())),
            }
        };
        // The caller (`Effects::health`) names the instance on its errors.
        retry(probe, &what, &expect, attempt).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(body: Option<&str>) -> HealthProbe {
        HealthProbe {
            ready_after: None,
            url: "http://localhost:4000/health".into(),
            expect_status: 200,
            expect_body: body.map(String::from),
            timeout: Duration::from_secs(2),
            interval: Duration::from_secs(1),
            retries: 3,
            healthy_threshold: 2,
            on_host: Some(OnHost::Curl),
        }
    }

    #[test]
    fn curl_is_quoted_and_prints_the_status_last() {
        assert_eq!(
            curl_cmd(&probe(None)).to_shell(),
            "curl -sS --noproxy '*' --max-time 2 -o /dev/null -w '\\n%{http_code}' http://localhost:4000/health"
        );
    }

    #[test]
    fn curl_outcomes_read_like_http_ones() {
        let p = probe(Some("ok"));
        let word = |v: Verdict| match v {
            Verdict::Ok(o) => format!("ok {o}"),
            Verdict::Failed(o) => format!("failed {o}"),
            Verdict::Fatal(o) => format!("fatal {o}"),
        };
        assert_eq!(word(curl_verdict(&p, 0, "all ok\n200", "")), "ok 200");
        assert_eq!(word(curl_verdict(&p, 0, "booting\n503", "")), "failed 503");
        assert_eq!(
            word(curl_verdict(&p, 0, "nope\n200", "")),
            "failed 200, body lacks \"ok\""
        );
        assert_eq!(
            word(curl_verdict(&p, 7, "\n000", "")),
            "failed connection refused"
        );
        assert!(word(curl_verdict(&p, 127, "", "sh: curl: not found"))
            .starts_with("fatal curl is not installed"));
    }
}
