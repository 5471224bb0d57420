//! POSIX shell quoting: values reach a remote shell as data, never as code.

/// Quotes `s` for `sh`: plain words pass unchanged, anything else is wrapped
/// in single quotes with embedded `'` written as `'\''`.
pub fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@' | '%')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    /// Runs `printf %s <quoted>` in a real `sh` and checks the value comes back intact.
    fn roundtrip(v: &str) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote(v)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), v, "value {v:?}");
    }

    #[test]
    fn hostile_values_arrive_as_data() {
        for v in [
            "plain",
            "with space",
            "it's",
            "\"double\"",
            "a;rm -rf /tmp/nothing",
            "$(touch /tmp/rollscript-pwned)",
            "`id`",
            "line1\nline2",
            "",
            "*",
            "~",
            "-n",
            "back\\slash",
        ] {
            roundtrip(v);
        }
        assert!(!std::path::Path::new("/tmp/rollscript-pwned").exists());
    }

    #[test]
    fn plain_words_stay_readable() {
        assert_eq!(sh_quote("v1.2.3"), "v1.2.3");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote(""), "''");
    }
}
