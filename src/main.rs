use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rollscript::cli::{self, Cli, Command, LogFormat, RunsCommand};
use rollscript::recover;
use rollscript::run::{self, ApiFormat, Outcome, RunOptions};
use rollscript::ui;

// Rhai allocates a value for nearly every step of a script; mimalloc makes a
// plan of 10,000 instances about a third faster than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = &cli.global;
    let format = match g.log_format {
        LogFormat::Text => ui::Format::Text,
        LogFormat::Json => ui::Format::Json,
    };
    ui::init_logging(format, if g.quiet { -1 } else { g.verbose as i8 });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let vars = g.vars.iter().cloned().collect();
    let inventory = g.inventory.clone();

    let outcome = match cli.command {
        Command::Run {
            script,
            dry_run,
            yes,
            lock_wait,
            step,
            only_failed,
            include_parked,
        } => runtime.block_on(run::run(RunOptions {
            script,
            inventory,
            vars,
            dry_run,
            yes,
            lock_wait,
            only_failed,
            step,
            include_parked,
        })),
        Command::Plan { script } => runtime.block_on(run::run(RunOptions {
            script,
            inventory,
            vars,
            dry_run: true,
            yes: true,
            lock_wait: Duration::ZERO,
            only_failed: None,
            step: false,
            include_parked: false,
        })),
        Command::Check { scripts } => runtime.block_on(async { run::check(&scripts) }),
        Command::Api {
            definitions: Some(dir),
            ..
        } => runtime.block_on(async { run::api_definitions(&dir) }),
        Command::Api { json, markdown, .. } => {
            let format = match (json, markdown) {
                (true, _) => ApiFormat::Json,
                (_, true) => ApiFormat::Markdown,
                _ => ApiFormat::Text,
            };
            print!("{}", runtime.block_on(async { run::api(format) }));
            Outcome::Success
        }
        Command::Recover { run, yes, force } => runtime.block_on(recover::recover(
            &inventory,
            &recover::RecoverOptions { run, yes, force },
        )),
        Command::Unlock { yes, force } => recover::unlock(&inventory, yes, force),
        Command::Runs { show: None } => match recover::list_runs(&inventory) {
            Ok(text) => {
                print!("{text}");
                Outcome::Success
            }
            Err(e) => {
                eprintln!("error: {e}");
                Outcome::Invalid
            }
        },
        Command::Runs {
            show: Some(RunsCommand::Show { run }),
        } => match recover::show_run(&inventory, &run) {
            Ok(text) => {
                print!("{text}");
                Outcome::Success
            }
            Err(e) => {
                eprintln!("error: {e}");
                Outcome::Invalid
            }
        },
        Command::Completions { shell } => {
            cli::print_completions(shell);
            Outcome::Success
        }
        Command::Man { dir } => match cli::write_man_pages(&dir) {
            Ok(files) => {
                files.iter().for_each(|f| println!("{}", f.display()));
                Outcome::Success
            }
            Err(e) => {
                eprintln!("error: cannot write into {}: {e}", dir.display());
                Outcome::Invalid
            }
        },
    };
    // Don't wait for stray blocking tasks (a script thread stuck in a wait
    // after the outcome is decided).
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(outcome.exit_code())
}
