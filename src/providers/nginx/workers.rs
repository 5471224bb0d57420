//! nginx's processes: listing them (from /proc here, or one script over
//! ssh), telling which master `reload_command` signals and which workers are
//! its, and waiting for old workers to stop accepting or to exit.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::host::NginxHost;
use crate::primitives::{ActionError, ActionResult, Cmd, ErrorKind};
use crate::providers::poll::Backoff;

/// An nginx process: `nginx: master process …`, `nginx: worker process`, …
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NginxProc {
    pub(super) pid: u32,
    pub(super) ppid: u32,
    pub(super) title: String,
}

impl NginxProc {
    /// A worker, or a child just forked that still carries its master's
    /// title (it becomes a worker). Cache manager and loader serve nobody.
    fn serves(&self) -> bool {
        !self.title.starts_with("nginx: cache")
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.title.contains("shutting down")
    }
}

/// The processes of `master` that accept or serve connections.
pub(super) fn workers_of(procs: &[NginxProc], master: u32) -> impl Iterator<Item = &NginxProc> {
    procs.iter().filter(move |p| p.ppid == master && p.serves())
}

/// The value of `-c`/`-p` in an nginx command line (`-c FILE` or `-cFILE`).
fn flag<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if *w == name {
            return it.next().map(|v| v.trim_matches(['\'', '"']));
        }
        if let Some(v) = w.strip_prefix(name) {
            if !v.is_empty() && !name.is_empty() {
                return Some(v.trim_matches(['\'', '"']));
            }
        }
    }
    None
}

/// The master `reload_command` signals: the one started with the same `-c`
/// and `-p` as the command, or the only one there is.
pub(super) fn find_master(procs: &[NginxProc], reload: &str, test: &str) -> Result<u32, String> {
    let titled: Vec<&NginxProc> = procs
        .iter()
        .filter(|p| p.title.starts_with("nginx: master process"))
        .collect();
    // A worker the master has just forked still carries its title for a
    // moment: a "master" whose parent is a master is not one.
    let masters: Vec<&NginxProc> = titled
        .iter()
        .copied()
        .filter(|p| !titled.iter().any(|m| m.pid == p.ppid))
        .collect();
    let r: Vec<&str> = reload.split_whitespace().collect();
    let t: Vec<&str> = test.split_whitespace().collect();
    let want = |f: &str| flag(&r, f).or_else(|| flag(&t, f));
    let (want_c, want_p) = (want("-c"), want("-p"));
    let matching: Vec<&&NginxProc> = masters
        .iter()
        .filter(|m| {
            let w: Vec<&str> = m.title.split_whitespace().collect();
            flag(&w, "-c") == want_c && flag(&w, "-p") == want_p
        })
        .collect();
    match (matching.as_slice(), masters.as_slice()) {
        ([m], _) => Ok(m.pid),
        ([], [m]) => Ok(m.pid),
        ([], []) => Err("no nginx master process is running: start nginx before deploying".into()),
        (_, all) => Err(format!(
            "cannot tell which nginx master `{reload}` reloads among {}: put the same `-c FILE` (and `-p DIR`) nginx was started with in lb.reload_command",
            all.iter()
                .map(|m| format!("pid {} ({})", m.pid, m.title))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn parse_procs(text: &str) -> Vec<NginxProc> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.trim().splitn(3, ' ');
            let pid = it.next()?.parse().ok()?;
            let ppid = it.next()?.parse().ok()?;
            let title = it.next()?.trim().to_string();
            Some(NginxProc { pid, ppid, title })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// The process has exited.
    Gone,
    /// The process has exited or is shutting down (no longer accepting).
    NotAccepting,
}

/// Lists nginx processes as `pid ppid title` from /proc, reading only the
/// few processes whose title starts with `nginx: `.
const LIST_NGINX: &str = r#"cd /proc && for f in $(grep -las '^nginx: ' [0-9]*/cmdline); do p=${f%/cmdline}; pp=; while read -r k v _; do if [ "$k" = PPid: ]; then pp=$v; break; fi; done 2>/dev/null < "$p/status"; t=$(tr '\0' ' ' < "$f" 2>/dev/null); [ -n "$pp" ] && printf '%s %s %s\n' "$p" "$pp" "$t"; done; true"#;

impl NginxHost {
    pub(super) async fn processes(&self) -> ActionResult<Vec<NginxProc>> {
        match self {
            Self::Local { .. } => tokio::task::spawn_blocking(local_nginx_procs)
                .await
                .map_err(|e| ActionError::new(ErrorKind::Lb, format!("listing processes: {e}")))?
                .map_err(|e| {
                    ActionError::new(
                        ErrorKind::Lb,
                        format!("cannot list processes in /proc: {e}"),
                    )
                }),
            Self::Remote { .. } => Ok(parse_procs(
                &self
                    .script(LIST_NGINX.to_string(), "list nginx processes")
                    .await?,
            )),
        }
    }

    /// Waits until every pid in `pids` is gone (or no longer accepting).
    /// `Ok(Err(survivors))` when `timeout` passed first.
    pub(super) async fn wait_for(
        &self,
        pids: &BTreeSet<u32>,
        until: Until,
        timeout: Duration,
        poll_interval: Option<Duration>,
    ) -> ActionResult<Result<(), Vec<u32>>> {
        if pids.is_empty() {
            return Ok(Ok(()));
        }
        let survivors = |procs: &[NginxProc]| -> Vec<u32> {
            pids.iter()
                .copied()
                .filter(|pid| {
                    procs.iter().any(|p| {
                        p.pid == *pid && p.serves() && (until == Until::Gone || !p.shutting_down())
                    })
                })
                .collect()
        };
        match self {
            Self::Local { .. } => {
                let deadline = Instant::now() + timeout;
                let mut poll = Backoff::fast_or_fixed(poll_interval);
                loop {
                    let still = survivors(&self.processes().await?);
                    if still.is_empty() {
                        return Ok(Ok(()));
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(Err(still));
                    }
                    poll.pause(now, deadline).await;
                }
            }
            Self::Remote { .. } => {
                // One quiet command for the whole wait, not one per poll.
                let nap = poll_interval
                    .unwrap_or(Duration::from_millis(100))
                    .as_secs_f64();
                let busy = match until {
                    Until::Gone => r#"grep -qas '^nginx: [mw]' "/proc/$p/cmdline""#,
                    Until::NotAccepting => {
                        r#"grep -qas '^nginx: [mw]' "/proc/$p/cmdline" && ! grep -qas 'shutting down' "/proc/$p/cmdline""#
                    }
                };
                let list = pids
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                let line =
                    format!("for p in {list}; do while {busy}; do sleep {nap:.3}; done; done");
                match self.exec(&Cmd::Shell(line), timeout).await {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if e.kind == ErrorKind::Timeout => {
                        let still = survivors(&self.processes().await?);
                        Ok(if still.is_empty() { Ok(()) } else { Err(still) })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// nginx processes of this machine, from /proc.
fn local_nginx_procs() -> std::io::Result<Vec<NginxProc>> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read: a vanished one is skipped.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !raw.starts_with(b"nginx: ") {
            continue;
        }
        let title = String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim()
            .to_string();
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let Some(ppid) = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
        else {
            continue;
        };
        procs.push(NginxProc { pid, ppid, title });
    }
    Ok(procs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, title: &str) -> NginxProc {
        NginxProc {
            pid,
            ppid,
            title: title.into(),
        }
    }

    #[test]
    fn the_master_is_the_one_the_reload_command_points_at() {
        let procs = vec![
            p(
                10,
                1,
                "nginx: master process /usr/sbin/nginx -p /a/ -c /a/nginx.conf",
            ),
            p(11, 10, "nginx: worker process"),
            p(
                20,
                1,
                "nginx: master process /usr/sbin/nginx -p /b/ -c /b/nginx.conf",
            ),
            p(21, 20, "nginx: worker process is shutting down"),
            p(22, 20, "nginx: worker process"),
            p(
                23,
                20,
                "nginx: master process /usr/sbin/nginx -p /b/ -c /b/nginx.conf",
            ),
        ];
        let reload = "nginx -p /b/ -c /b/nginx.conf -s reload";
        assert_eq!(find_master(&procs, reload, "nginx -t"), Ok(20));
        let w: Vec<u32> = workers_of(&procs, 20).map(|p| p.pid).collect();
        assert_eq!(w, [21, 22, 23], "23 was just forked: a worker-to-be");
        assert!(find_master(&procs, "systemctl reload nginx", "nginx -t").is_err());
        assert_eq!(
            find_master(&procs[..2], "systemctl reload nginx", "nginx -t"),
            Ok(10),
            "the only master"
        );
        assert!(find_master(&[], "nginx -s reload", "nginx -t").is_err());
    }

    #[test]
    fn process_listing_lines_parse() {
        let procs =
            parse_procs("10 1 nginx: master process nginx -c /x\n11 10 nginx: worker process\n\n");
        assert_eq!(procs[1], p(11, 10, "nginx: worker process"));
        assert_eq!(procs[0].title, "nginx: master process nginx -c /x");
    }
}
