//! The install story: the Debian package `tools/deb --dev` makes around the
//! binary under test, installed on this machine with dpkg (the tests run as
//! root), used as an operator would use it, and removed again — also when an
//! assertion fails.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::{repo, rollscript};

const PACKAGE: &str = "rollscript";

/// The files an operator relies on after `dpkg -i`.
const INSTALLED: &[&str] = &[
    "/usr/bin/rollscript",
    "/usr/share/rollscript/scripts/rolling.rhai",
    "/usr/share/rollscript/scripts/canary.rhai",
    "/usr/share/rollscript/scripts/blue_green.rhai",
    "/usr/share/rollscript/scripts/migration.rhai",
    "/usr/share/man/man1/rollscript.1.gz",
    "/usr/share/man/man1/rollscript-run.1.gz",
    "/usr/share/bash-completion/completions/rollscript",
    "/usr/share/zsh/vendor-completions/_rollscript",
    "/usr/share/fish/vendor_completions.d/rollscript.fish",
    "/usr/share/doc/rollscript/README.md",
    "/usr/share/doc/rollscript/examples/haproxy.toml",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// dpkg's view of the package: `None` when it knows nothing of it.
fn package_status() -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]));
    let status = text(&out.stdout);
    (out.status.success() && !status.ends_with("not-installed")).then_some(status)
}

/// Runs dpkg, waiting (bounded) while another apt or dpkg holds its lock.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = run(Command::new("dpkg").args(args));
        let locked = text(&out.stderr).contains("lock");
        if out.status.success() || !locked || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The installed package; `dpkg -r` on drop, so a failing test leaves the
/// machine as it found it.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        // Armed before dpkg -i: a half-installed package is removed too.
        let installed = Installed;
        let out = dpkg(&["-i", &deb.display().to_string()]);
        assert!(
            out.status.success(),
            "dpkg -i {} failed:\n{}{}",
            deb.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status().is_some() {
            let out = dpkg(&["-r", PACKAGE]);
            if !out.status.success() {
                eprintln!(
                    "dpkg -r {PACKAGE} failed:\n{}{}",
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
        }
    }
}

#[test]
fn the_debian_package_installs_rollscript_with_its_scripts_man_pages_and_completions() {
    // Preconditions, each failing loudly: this test never passes by skipping.
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "installing the package with dpkg -i needs root");
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(
        cargo_deb.is_ok_and(|o| o.status.success()),
        "cargo-deb is not installed: run tools/setup (it runs `cargo install cargo-deb --locked`)"
    );
    assert_eq!(
        package_status(),
        None,
        "a {PACKAGE} package is already installed here: this test would replace and \
         remove it (dpkg -r {PACKAGE} first)"
    );
    for file in INSTALLED {
        assert!(
            !Path::new(file).exists(),
            "{file} exists outside any package: dpkg -i would overwrite it and dpkg -r delete it"
        );
    }

    // The package around the binary this test suite built: no release build.
    let out_dir = tempfile::tempdir().unwrap();
    let built = run(Command::new(repo().join("tools/deb"))
        .args(["--dev", "--no-build", "--output"])
        .arg(out_dir.path())
        .current_dir(repo()));
    assert!(
        built.status.success(),
        "tools/deb --dev --no-build failed:\n{}{}",
        text(&built.stdout),
        text(&built.stderr)
    );
    let deb = text(&built.stdout).lines().last().unwrap_or("").to_string();
    assert!(
        deb.starts_with(&out_dir.path().display().to_string()) && deb.ends_with(".deb"),
        "tools/deb's last line names the .deb it wrote into --output, got {deb:?}"
    );

    let installed = Installed::install(Path::new(&deb));
    for file in INSTALLED {
        assert!(Path::new(file).is_file(), "{file} was not installed");
    }

    // The operator's first command, with the shipped script: the same plan as
    // the binary under test prints for the script in the repository.
    let plan = run(Command::new("/usr/bin/rollscript")
        .args([
            "plan",
            "/usr/share/rollscript/scripts/rolling.rhai",
            "-i",
            "examples/haproxy.toml",
        ])
        .env_remove("ROLLSCRIPT_INVENTORY")
        .env("NO_COLOR", "1")
        .current_dir(repo()));
    assert_eq!(
        plan.status.code(),
        Some(0),
        "installed rollscript plan failed:\n{}",
        text(&plan.stderr)
    );
    let expected = run(rollscript()
        .args([
            "plan",
            "scripts/rolling.rhai",
            "-i",
            "examples/haproxy.toml",
        ])
        .current_dir(repo()));
    assert_eq!(expected.status.code(), Some(0));
    assert_eq!(
        text(&plan.stdout).replace("/usr/share/rollscript/scripts/", "scripts/"),
        text(&expected.stdout)
    );
    assert!(text(&plan.stdout).contains("haproxy credit_radar/web-3: wait until UP"));

    // man finds the pages; bash loads the completion.
    for (page, path) in [
        ("rollscript", "/usr/share/man/man1/rollscript.1.gz"),
        (
            "rollscript-plan",
            "/usr/share/man/man1/rollscript-plan.1.gz",
        ),
    ] {
        let man = run(Command::new("man").args(["-w", page]));
        assert_eq!(text(&man.stdout).trim(), path, "man -w {page}");
    }
    let complete = run(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/rollscript && complete -p rollscript",
    ]));
    assert!(
        text(&complete.stdout).contains("-F _rollscript rollscript"),
        "bash completion: {}{}",
        text(&complete.stdout),
        text(&complete.stderr)
    );
    let version = run(Command::new("/usr/bin/rollscript").arg("--version"));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("rollscript {}", env!("CARGO_PKG_VERSION"))
    );

    // And the machine is as it was.
    drop(installed);
    assert_eq!(package_status(), None, "dpkg -r left {PACKAGE} behind");
    for file in INSTALLED {
        assert!(!Path::new(file).exists(), "{file} is left after dpkg -r");
    }
}
