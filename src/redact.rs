//! Secrets masked in everything rollscript writes down: the deploy lock,
//! the journal (local and shared) and every log line.
//!
//! What counts as a secret:
//! - the value of a `--var` whose name contains `token`, `secret`,
//!   `password` or `key` ([`register_vars`] at start; from then on that value
//!   is masked wherever it appears, e.g. inside a command line);
//! - in a URL: the password of its userinfo (`postgres://deploy:***@db`; the
//!   whole userinfo of an `http(s)` URL without a password, which is how
//!   tokens ride in URLs), the values of its query (`?sslkey=***`), and the
//!   path of a webhook (`https://hooks.slack.com/***`): a `hooks.`/`webhook`
//!   host, or a path under `/services/`, `/hooks/` or `/webhook(s)/`;
//! - AWS access key ids, and secret keys after their variable's name.
//!
//! Values shorter than 4 characters are not registered: masking every `1`
//! of a log would hide more than it protects.

use std::collections::BTreeMap;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// The words that make a `--var` name a secret's.
const SECRET_WORDS: [&str; 4] = ["token", "secret", "password", "key"];

/// Whether a `--var` of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| name.contains(w))
}

/// Masks `value` everywhere from now on.
pub fn register_secret(value: &str) {
    if value.len() < 4 {
        return;
    }
    let mut s = SECRETS.write().unwrap();
    if !s.iter().any(|v| v == value) {
        s.push(value.to_string());
        // Longest first, so a secret containing another is masked whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// Registers the values of the secret-named `--var`s.
pub fn register_vars(vars: &BTreeMap<String, String>) {
    for (k, v) in vars {
        if is_secret_name(k) {
            register_secret(v);
        }
    }
}

/// A command line with `--var NAME=VALUE` values of secret names masked,
/// then [`redact`]ed.
pub fn redact_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_var = false;
    for a in args {
        let masked = if after_var {
            mask_assignment(&a)
        } else if let Some(kv) = a.strip_prefix("--var=") {
            format!("--var={}", mask_assignment(kv))
        } else {
            a.clone()
        };
        after_var = a == "--var";
        out.push(redact(&masked));
    }
    out
}

fn mask_assignment(kv: &str) -> String {
    match kv.split_once('=') {
        Some((k, _)) if is_secret_name(k) => format!("{k}=***"),
        _ => kv.to_string(),
    }
}

/// `text` with every secret masked.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for s in SECRETS.read().unwrap().iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    redact_aws_keys(&redact_urls(&out))
}

/// Where a URL's parts end: quotes, whitespace and brackets close it.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ')' | '>' | '<' | ',' | ';')
}

fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        let scheme: String = head[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
            .to_ascii_lowercase();
        out.push_str(head);
        let mut end = tail.find(ends_url).unwrap_or(tail.len());
        // Prose punctuation after a URL ("…/XXXX: sent") is not part of it.
        while end > 0 && matches!(tail.as_bytes()[end - 1], b':' | b'.' | b',') {
            end -= 1;
        }
        let url = &tail[..end];
        out.push_str(&redact_url_body(&scheme, url));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `authority[/path][?query][#fragment]` of one URL, masked.
fn redact_url_body(scheme: &str, url: &str) -> String {
    let auth_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, rest) = url.split_at(auth_end);
    let mut out = String::new();
    let host = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None if scheme == "http" || scheme == "https" => out.push_str("***"),
                None => out.push_str(userinfo),
            }
            out.push('@');
            &authority[at + 1..]
        }
        None => authority,
    };
    out.push_str(host);
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (path, rest) = rest.split_at(path_end);
    let lower_host = host.to_ascii_lowercase();
    let webhook = lower_host.starts_with("hooks.")
        || lower_host.contains("webhook")
        || ["/services/", "/hooks/", "/webhook/", "/webhooks/"]
            .iter()
            .any(|p| path.to_ascii_lowercase().contains(p));
    if webhook && path.len() > 1 {
        out.push_str("/***");
    } else {
        out.push_str(path);
    }
    let query_end = rest.find('#').unwrap_or(rest.len());
    let (query, fragment) = rest.split_at(query_end);
    if let Some(q) = query.strip_prefix('?') {
        out.push('?');
        let masked: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None if pair.is_empty() => String::new(),
                None => "***".to_string(),
            })
            .collect();
        out.push_str(&masked.join("&"));
    }
    out.push_str(fragment);
    out
}

fn redact_aws_keys(text: &str) -> String {
    // Access key ids: AKIA/ASIA + 16 upper-case alphanumerics.
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let is_key = i + 20 <= bytes.len()
            && (text[i..].starts_with("AKIA") || text[i..].starts_with("ASIA"))
            && bytes[i + 4..i + 20]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if is_key {
            out.push_str(&text[i..i + 4]);
            out.push_str("****************");
            i += 20;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    // Secret keys after an obvious name.
    for name in ["AWS_SECRET_ACCESS_KEY=", "aws_secret_access_key="] {
        if let Some(pos) = out.find(name) {
            let start = pos + name.len();
            let end = out[start..]
                .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_queries_and_webhook_paths_are_masked() {
        assert_eq!(
            redact("psql postgres://deploy:hunter2@db:5432/app -c 'select 1'"),
            "psql postgres://deploy:***@db:5432/app -c 'select 1'"
        );
        assert_eq!(
            redact("postgres://deploy@db/app?sslmode=require&password=x"),
            "postgres://deploy@db/app?sslmode=***&password=***"
        );
        assert_eq!(
            redact("git clone https://ghp_abcdef@github.com/o/r.git"),
            "git clone https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact("notify https://hooks.slack.com/services/T000/B000/XXXX: \"hi\""),
            "notify https://hooks.slack.com/***: \"hi\""
        );
        assert_eq!(
            redact("POST http://127.0.0.1:9/services/T000/B000/XXXX failed"),
            "POST http://127.0.0.1:9/*** failed"
        );
        assert_eq!(
            redact("https://discord.com/api/webhooks/123/abc"),
            "https://discord.com/***"
        );
        // Not a secret: a health URL, a path with a colon and an at sign.
        assert_eq!(
            redact("http GET http://10.0.1.10:4000/health: expect 200"),
            "http GET http://10.0.1.10:4000/health: expect 200"
        );
        assert_eq!(
            redact("http://example.com/a:b@c"),
            "http://example.com/a:b@c"
        );
    }

    #[test]
    fn aws_keys_are_masked() {
        assert_eq!(
            redact("key AKIAIOSFODNN7EXAMPLE used"),
            "key AKIA**************** used"
        );
        assert_eq!(
            redact("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG run"),
            "AWS_SECRET_ACCESS_KEY=*** run"
        );
    }

    #[test]
    fn secret_var_values_are_masked_in_args_and_anywhere_after_registration() {
        assert!(is_secret_name("API_TOKEN") && is_secret_name("db_password"));
        assert!(is_secret_name("ssh_key") && is_secret_name("client_secret"));
        assert!(!is_secret_name("version") && !is_secret_name("batch"));
        let args = redact_args(
            [
                "rollscript",
                "run",
                "--var",
                "deploy_token=tk-91a7f3",
                "--var=batch=2",
                "--var=app_secret=zz-4471",
            ]
            .map(String::from),
        );
        assert_eq!(
            args,
            [
                "rollscript",
                "run",
                "--var",
                "deploy_token=***",
                "--var=batch=2",
                "--var=app_secret=***"
            ]
        );
        let vars = BTreeMap::from([
            (
                "deploy_token".to_string(),
                "tk-91a7f3-registered".to_string(),
            ),
            ("batch".to_string(), "2".to_string()),
        ]);
        register_vars(&vars);
        assert_eq!(
            redact("curl -H 'Authorization: tk-91a7f3-registered' https://x"),
            "curl -H 'Authorization: ***' https://x"
        );
        assert_eq!(redact("batch 2"), "batch 2");
    }
}
