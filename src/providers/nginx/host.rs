//! Where nginx runs: this machine (files read and written directly,
//! commands through the local transport) or the `lb.run_on` instance (files
//! and commands as small shell scripts over ssh, printing nothing while they
//! wait).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Instance;
use crate::primitives::{
    sh_quote, ActionError, ActionResult, Cmd, ErrorKind, ExecOutput, Transport,
};

/// This machine (files and /proc read directly, commands through the local
/// transport) or the `run_on` host (everything as shell over ssh).
pub(super) enum NginxHost {
    Local {
        local: Arc<dyn Transport>,
        on: Instance,
    },
    Remote {
        ssh: Arc<dyn Transport>,
        on: Instance,
    },
}

impl NginxHost {
    /// The transport and the host commands for nginx's host run on.
    pub(super) fn transport(&self) -> (&dyn Transport, &Instance) {
        match self {
            Self::Local { local, on } => (local.as_ref(), on),
            Self::Remote { ssh, on } => (ssh.as_ref(), on),
        }
    }

    pub(super) async fn exec(&self, cmd: &Cmd, timeout: Duration) -> ActionResult<ExecOutput> {
        match self {
            Self::Local { local, on } => local.exec(on, cmd, timeout).await,
            Self::Remote { ssh, on } => ssh.exec(on, cmd, timeout).await,
        }
    }

    /// Runs a helper script; non-zero exit is an error naming it.
    pub(super) async fn script(&self, line: String, what: &str) -> ActionResult<String> {
        let cmd = Cmd::Shell(line);
        let out = self.exec(&cmd, Duration::from_secs(60)).await?;
        if out.status != 0 {
            return Err(ActionError::new(ErrorKind::Lb, format!("cannot {what}"))
                .command(cmd.to_shell())
                .status(out.status)
                .stderr_tail(&out.stderr));
        }
        Ok(out.stdout)
    }

    pub(super) async fn read(&self, path: &Path) -> ActionResult<Option<String>> {
        let fail = |e: String| {
            ActionError::new(
                ErrorKind::Lb,
                format!("cannot read {} (lb.upstream_file): {e}", path.display()),
            )
        };
        match self {
            Self::Local { .. } => match tokio::fs::read_to_string(path).await {
                Ok(t) => Ok(Some(t)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(fail(e.to_string())),
            },
            Self::Remote { .. } => {
                let p = sh_quote(&path.to_string_lossy());
                // The marker tells a missing file from an empty one.
                let out = self
                    .script(
                        format!("if [ -e {p} ]; then echo present && cat -- {p}; fi"),
                        &format!("read {}", path.display()),
                    )
                    .await?;
                Ok(out.strip_prefix("present\n").map(str::to_string))
            }
        }
    }

    /// Writes beside the file, then renames: nginx never reads half a file.
    pub(super) async fn write(&self, path: &Path, text: &str) -> ActionResult<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".rollscript-tmp");
        let tmp = PathBuf::from(tmp);
        match self {
            Self::Local { .. } => {
                let done = async {
                    tokio::fs::write(&tmp, text).await?;
                    tokio::fs::rename(&tmp, path).await
                };
                done.await.map_err(|e| {
                    ActionError::new(
                        ErrorKind::Lb,
                        format!("cannot write {} (lb.upstream_file): {e}", path.display()),
                    )
                })
            }
            Self::Remote { .. } => {
                let (t, p) = (
                    sh_quote(&tmp.to_string_lossy()),
                    sh_quote(&path.to_string_lossy()),
                );
                self.script(
                    format!("printf '%s' {} > {t} && mv -f -- {t} {p}", sh_quote(text)),
                    &format!("write {}", path.display()),
                )
                .await
                .map(drop)
            }
        }
    }

    pub(super) async fn remove(&self, path: &Path) -> ActionResult<()> {
        match self {
            Self::Local { .. } => match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ActionError::new(
                    ErrorKind::Lb,
                    format!("cannot remove {}: {e}", path.display()),
                )),
                _ => Ok(()),
            },
            Self::Remote { .. } => self
                .script(
                    format!("rm -f -- {}", sh_quote(&path.to_string_lossy())),
                    &format!("remove {}", path.display()),
                )
                .await
                .map(drop),
        }
    }
}
