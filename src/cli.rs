//! Command-line interface (clap derive). Nothing below this module sees clap:
//! [`Cli`] is turned into plain option structs in `main`. Shell completions
//! and man pages are generated from the clap definition, so they live here too.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

const EXAMPLES: &str = "\
Examples:
  rollscript init --lb haproxy --socket /run/haproxy/admin.sock --backend app
                                                       write rollscript.toml from the live load balancer
  rollscript doctor                                    would a deploy work? checks everything, touches nothing
  rollscript run scripts/rolling.rhai                  zero-downtime rolling deploy of ./rollscript.toml
  rollscript run scripts/rolling.rhai --var batch=25%  a quarter of the fleet at a time
  rollscript plan scripts/canary.rhai -i prod.toml     dry run: every step, nothing touched
  rollscript check scripts/*.rhai                      compile and lint, for CI
  rollscript api                                       every function a script can call
  rollscript pause / resume / abort / promote          steer the running deploy, from any terminal

Exit codes: 0 success · 1 deployment failed or aborted · 2 usage, inventory or
script error (nothing touched) · 3 another run holds the deploy lock · 130 interrupted";

#[derive(Debug, Parser)]
#[command(name = "rollscript", version, about = "Deployment workflows in Rhai: rolling, canary, blue-green and two-phase migrations behind HAProxy, nginx and AWS ALBs.", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Inventory file describing the app, the load balancer and the fleet.
    #[arg(
        short,
        long,
        global = true,
        env = "ROLLSCRIPT_INVENTORY",
        default_value = "rollscript.toml"
    )]
    pub inventory: PathBuf,
    /// A value for the script, read with `var("KEY", default)`. Repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", global = true, value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Log format on stderr: with `json` every line is one JSON object, the
    /// run's summary included (docs/logs.md).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Also print the run's summary as one JSON object on stdout (for CI:
    /// `rollscript run … --summary json | jq`).
    #[arg(long, value_enum, value_name = "FORMAT", global = true)]
    pub summary: Option<SummaryArg>,
    /// More detail (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryArg {
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a deployment script against the inventory.
    #[command(
        after_help = "Examples:\n  rollscript run scripts/rolling.rhai\n  rollscript run scripts/canary.rhai --var stages=5%,25%,100% --var bake=10m --yes"
    )]
    Run {
        /// The .rhai script to run.
        script: PathBuf,
        /// Record every step instead of acting (same as `plan`).
        #[arg(long)]
        dry_run: bool,
        /// Answer yes to every `confirm` in the script.
        #[arg(short = 'y', long)]
        yes: bool,
        /// Wait up to this long for another run's deploy lock (e.g. 10m) instead of exiting 3.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, default_value = "0s")]
        lock_wait: std::time::Duration,
        /// Ask before each mutating step (yes / no / all / abort), showing it as the plan prints it.
        #[arg(long, conflicts_with = "dry_run")]
        step: bool,
        /// Re-run only the instances that failed (or were left out) in run RUN.
        #[arg(long, value_name = "RUN")]
        only_failed: Option<String>,
        /// Also deploy instances found out of rotation before the run (parked
        /// by an operator: HAProxy MAINT/DRAIN, nginx `down`, not registered
        /// on ELBv2). They are left out of rotation afterwards.
        #[arg(long)]
        include_parked: bool,
        /// Run every check of `rollscript doctor` first; any failure refuses
        /// the run (exit 2, nothing touched).
        #[arg(long, conflicts_with = "dry_run")]
        preflight: bool,
    },
    /// Write a starter inventory (-i, default rollscript.toml) from the live load balancer.
    #[command(after_help = INIT_EXAMPLES)]
    Init(Box<InitArgs>),
    /// Prove a deploy can work, touching nothing: LB rights, inventory vs LB, ssh, app.deploy, health, capacity, state.
    #[command(after_help = DOCTOR_EXAMPLES)]
    Doctor,
    /// Dry run: print every step the script would take and an estimated duration. Touches nothing.
    #[command(
        after_help = "Example:\n  rollscript plan scripts/rolling.rhai -i examples/haproxy.toml --var batch=2"
    )]
    Plan { script: PathBuf },
    /// Compile and lint scripts and everything they import; exit 2 on any error.
    #[command(after_help = "Example:\n  rollscript check scripts/*.rhai")]
    Check {
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
    },
    /// Reference of every function a script can call, generated from the engine.
    #[command(
        after_help = "Examples:\n  rollscript api\n  rollscript api --markdown > docs/api.md"
    )]
    Api {
        /// Machine-readable.
        #[arg(long, conflicts_with = "markdown")]
        json: bool,
        /// The checked-in docs/api.md.
        #[arg(long)]
        markdown: bool,
        /// Write `.d.rhai` definition files for editor completion into DIR.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["json", "markdown"])]
        definitions: Option<PathBuf>,
    },
    /// After rollscript itself died (kill -9, power loss): put back what its run left out of service, release the lock.
    #[command(
        after_help = "Examples:\n  rollscript recover            the newest run of this inventory that left instances out\n  rollscript recover 20261129T1612\n  rollscript recover --force    the run's machine is gone for good: take its lock over"
    )]
    Recover {
        /// Run id (or a unique prefix); default: the newest run that left instances out.
        run: Option<String>,
        /// Do not ask before acting (asked only on a terminal).
        #[arg(short = 'y', long)]
        yes: bool,
        /// Take over a deploy lock whose holder cannot be proven gone (another host, a lease still renewed), after saying whose it is.
        #[arg(long)]
        force: bool,
    },
    /// Remove the deploy lock of a run that is gone (asks first).
    #[command(
        after_help = "Examples:\n  rollscript unlock --yes\n  rollscript unlock --yes --force   even though its holder may still be running"
    )]
    Unlock {
        #[arg(short = 'y', long)]
        yes: bool,
        /// Remove it even when its holder cannot be proven gone.
        #[arg(long)]
        force: bool,
    },
    /// Hold a running deploy at its next safe point (between instances or batches, every instance in service).
    #[command(
        after_help = "Examples:\n  rollscript pause                 the inventory's current run\n  rollscript pause 20261202T1504   a run by id (or a unique prefix)\n  rollscript resume                go on"
    )]
    Pause {
        /// Run id (or a unique prefix); default: the run holding the deploy lock.
        run: Option<String>,
    },
    /// Let a paused run go on; answers a pending `approval` yes.
    #[command(
        after_help = "Examples:\n  rollscript resume                the inventory's current run\n  rollscript resume 20261202T1504  a run by id (or a unique prefix)"
    )]
    Resume {
        /// Run id (or a unique prefix); default: the run holding the deploy lock.
        run: Option<String>,
    },
    /// Stop a running deploy like a failed gate: rollback, compensation, weights back, exit 1. Answers a pending `approval` no.
    #[command(
        after_help = "Examples:\n  rollscript abort                 the inventory's current run\n  rollscript abort -i prod.toml    from any machine with the inventory (and the [state] URL)"
    )]
    Abort {
        /// Run id (or a unique prefix); default: the run holding the deploy lock.
        run: Option<String>,
    },
    /// End the current canary bake as passed.
    #[command(
        after_help = "Examples:\n  rollscript promote               end the running canary's bake now, as passed\n  rollscript promote 20261202T1504"
    )]
    Promote {
        /// Run id (or a unique prefix); default: the run holding the deploy lock.
        run: Option<String>,
    },
    /// List recorded runs, or show one.
    #[command(after_help = "Examples:\n  rollscript runs\n  rollscript runs show 20261129T1612")]
    Runs {
        #[command(subcommand)]
        show: Option<RunsCommand>,
    },
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  rollscript completions bash > /etc/bash_completion.d/rollscript"
    )]
    Completions { shell: Shell },
    /// Write the man pages (rollscript.1 and one per subcommand) into DIR/man1.
    #[command(
        after_help = "Examples:\n  rollscript man ~/.local/share/man     then: man rollscript\n  rollscript man target/man             what tools/deb packages"
    )]
    Man {
        /// A man directory (the pages go to DIR/man1, created if missing).
        dir: PathBuf,
    },
}

const INIT_EXAMPLES: &str = "\
Examples:
  rollscript init --lb haproxy --socket /run/haproxy/admin.sock --backend credit_radar
  rollscript init --lb nginx --upstream-file /etc/nginx/conf.d/app_upstream.conf --upstream app
  rollscript init --lb aws --target-group-arn arn:aws:elasticloadbalancing:…:targetgroup/app/… --region eu-west-1
  rollscript init --lb none --hosts 10.0.1.10,10.0.1.11 --deploy './deploy.sh' --user deploy

Instances (names, addresses, ports) are read from the load balancer; the
rest are the seed's defaults or the flags given, every guess marked
`# guess:` in the file. Then: rollscript doctor, rollscript plan scripts/rolling.rhai";

const DOCTOR_EXAMPLES: &str = "\
Examples:
  rollscript doctor
  rollscript doctor -i prod.toml --summary json | jq '.checks[] | select(.ok | not)'

Checks, in parallel: the LB answers with the rights a deploy needs (HAProxy
`level admin`, nginx's test command, ELBv2 describe calls), each instance is
the LB's at the inventory's address, ssh connects (strict host keys) and runs
`true`, app.deploy's program exists on the host, the health check passes now,
the capacity guard could take each instance out, the state is writable and
the deploy lock free. Exit 0 only when all pass; 1 otherwise.";

/// `rollscript init`: where the fleet is read from, and what replaces a guess.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The load balancer in front of the fleet.
    #[arg(long, value_enum)]
    pub lb: InitLb,
    /// HAProxy runtime API: a unix socket path or host:port.
    #[arg(long, required_if_eq("lb", "haproxy"))]
    pub socket: Option<String>,
    /// HAProxy backend holding the fleet's servers.
    #[arg(long, required_if_eq("lb", "haproxy"))]
    pub backend: Option<String>,
    /// nginx: the include file holding the `upstream NAME { … }` block.
    #[arg(long, value_name = "FILE", required_if_eq("lb", "nginx"))]
    pub upstream_file: Option<PathBuf>,
    /// nginx: the upstream's name.
    #[arg(long, value_name = "NAME", required_if_eq("lb", "nginx"))]
    pub upstream: Option<String>,
    /// nginx: the command that tests the configuration (default `nginx -t`).
    #[arg(long, value_name = "CMD")]
    pub test_command: Option<String>,
    /// nginx: the command that reloads it (default `nginx -s reload`).
    #[arg(long, value_name = "CMD")]
    pub reload_command: Option<String>,
    /// AWS: the ELBv2 target group (instance targets).
    #[arg(long, value_name = "ARN", required_if_eq("lb", "aws"))]
    pub target_group_arn: Option<String>,
    /// AWS region (default: the ARN's).
    #[arg(long)]
    pub region: Option<String>,
    /// AWS endpoint override (an emulator such as moto_server).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// No load balancer: these hosts, comma-separated.
    #[arg(long, value_delimiter = ',', required_if_eq("lb", "none"))]
    pub hosts: Vec<String>,
    /// app.name (default: the backend's, upstream's or target group's name).
    #[arg(long)]
    pub name: Option<String>,
    /// app.deploy: the command run on each instance.
    #[arg(long, value_name = "CMD")]
    pub deploy: Option<String>,
    /// app.rollback.
    #[arg(long, value_name = "CMD")]
    pub rollback: Option<String>,
    /// ssh.user.
    #[arg(long)]
    pub user: Option<String>,
    /// ssh.identity: the private key.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// ssh.known_hosts.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// ssh.config: an ssh client config (ports, jump hosts).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// health.path.
    #[arg(long, value_name = "PATH")]
    pub health_path: Option<String>,
    /// health.port (default: the port the LB sends traffic to).
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<u16>,
    /// Replace the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitLb {
    Haproxy,
    Nginx,
    Aws,
    None,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Print one run's journal readably.
    Show { run: String },
}

/// `init`'s flags as plain options (the inventory path is where it writes).
pub fn init_options(a: InitArgs, path: PathBuf) -> crate::init::InitOptions {
    use crate::init::{Given, InitOptions, Source};
    let source = match a.lb {
        InitLb::Haproxy => Source::Haproxy {
            socket: a.socket.unwrap_or_default(),
            backend: a.backend.unwrap_or_default(),
        },
        InitLb::Nginx => Source::Nginx {
            upstream_file: a.upstream_file.unwrap_or_default(),
            upstream: a.upstream.unwrap_or_default(),
            test_command: a.test_command,
            reload_command: a.reload_command,
        },
        InitLb::Aws => Source::Aws {
            target_group_arn: a.target_group_arn.unwrap_or_default(),
            region: a.region,
            endpoint: a.endpoint,
        },
        InitLb::None => Source::None { hosts: a.hosts },
    };
    InitOptions {
        path,
        force: a.force,
        source,
        given: Given {
            name: a.name,
            deploy: a.deploy,
            rollback: a.rollback,
            user: a.user,
            identity: a.identity,
            known_hosts: a.known_hosts,
            ssh_config: a.ssh_config,
            health_path: a.health_path,
            health_port: a.health_port,
        },
    }
}

/// Prints the completion script for `shell` on stdout.
pub fn print_completions(shell: Shell) {
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "rollscript",
        &mut std::io::stdout(),
    );
}

/// Writes the man pages, generated from this very command line so they
/// cannot drift from it: `DIR/man1/rollscript.1` and one page per subcommand
/// (`rollscript-run.1`, `rollscript-runs-show.1`, …). Returns the files written.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man1 = dir.join("man1");
    std::fs::create_dir_all(&man1)?;
    // generate_to builds the command itself, with clap's `help` subcommand
    // disabled: no rollscript-help.1.
    clap_mangen::generate_to(Cli::command(), &man1)?;
    let mut pages = Vec::new();
    page_names(&Cli::command(), None, &mut pages);
    pages
        .into_iter()
        .map(|name| {
            let path = man1.join(name);
            match path.exists() {
                true => Ok(path),
                false => Err(std::io::Error::other(format!(
                    "clap_mangen did not write {}",
                    path.display()
                ))),
            }
        })
        .collect()
}

/// The page names clap_mangen gives a command and its visible subcommands.
fn page_names(cmd: &clap::Command, parent: Option<&str>, out: &mut Vec<String>) {
    let name = match parent {
        Some(parent) => format!("{parent}-{}", cmd.get_name()),
        None => cmd.get_name().to_string(),
    };
    out.push(format!("{name}.1"));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page_names(sub, Some(&name), out);
    }
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid variable name {k:?}: use letters, digits and '_'"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}
