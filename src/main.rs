use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use rollscript::cli::{Cli, Command, LogFormat};
use rollscript::run::{self, ApiFormat, Outcome, RunOptions};
use rollscript::ui;

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

    let outcome = match cli.command {
        Command::Run {
            script,
            dry_run,
            yes,
        } => runtime.block_on(run::run(RunOptions {
            script,
            inventory: g.inventory.clone(),
            vars,
            dry_run,
            yes,
        })),
        Command::Plan { script } => runtime.block_on(run::run(RunOptions {
            script,
            inventory: g.inventory.clone(),
            vars,
            dry_run: true,
            yes: true,
        })),
        Command::Check { scripts } => runtime.block_on(async { run::check(&scripts) }),
        Command::Api { json, markdown } => {
            let format = match (json, markdown) {
                (true, _) => ApiFormat::Json,
                (_, true) => ApiFormat::Markdown,
                _ => ApiFormat::Text,
            };
            print!("{}", runtime.block_on(async { run::api(format) }));
            Outcome::Success
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rollscript",
                &mut std::io::stdout(),
            );
            Outcome::Success
        }
    };
    // Don't wait for stray blocking tasks (a script thread stuck in a wait
    // after a second Ctrl-C): the outcome is decided.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(outcome.exit_code())
}
