use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rollscript::cli::{self, Cli, Command, LogFormat, RunsCommand, SummaryArg};
use rollscript::control;
use rollscript::recover;
use rollscript::run::{self, ApiFormat, Failure, Outcome, RunOptions, SummaryFormat};
use rollscript::state::control::Command as Request;
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
    // The one place a failure is printed and turned into an exit code.
    let outcome = match runtime.block_on(dispatch(cli)) {
        Ok(outcome) => outcome,
        Err(failure) => {
            ui::report_failure(&failure);
            failure.outcome
        }
    };
    // Don't wait for stray blocking tasks (a script thread stuck in a wait
    // after the outcome is decided).
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(outcome.exit_code())
}

async fn dispatch(cli: Cli) -> Result<Outcome, Failure> {
    let g = cli.global;
    let vars = g.vars.iter().cloned().collect();
    let inventory = g.inventory;
    let summary = match g.summary {
        Some(SummaryArg::Json) => SummaryFormat::Json,
        None => SummaryFormat::Off,
    };
    match cli.command {
        Command::Run {
            script,
            dry_run,
            yes,
            lock_wait,
            step,
            only_failed,
            include_parked,
            preflight,
        } => {
            run::run(RunOptions {
                script,
                inventory,
                vars,
                dry_run,
                yes,
                lock_wait,
                only_failed,
                step,
                include_parked,
                preflight,
                summary,
            })
            .await
        }
        Command::Init(args) => rollscript::init::init(cli::init_options(*args, inventory)).await,
        Command::Doctor => rollscript::doctor::doctor(&inventory, summary).await,
        Command::Plan { script } => {
            run::run(RunOptions {
                script,
                inventory,
                vars,
                dry_run: true,
                yes: true,
                lock_wait: Duration::ZERO,
                only_failed: None,
                step: false,
                include_parked: false,
                preflight: false,
                summary,
            })
            .await
        }
        Command::Check { scripts } => run::check(&scripts),
        Command::Api {
            definitions: Some(dir),
            ..
        } => run::api_definitions(&dir),
        Command::Api { json, markdown, .. } => {
            let format = match (json, markdown) {
                (true, _) => ApiFormat::Json,
                (_, true) => ApiFormat::Markdown,
                _ => ApiFormat::Text,
            };
            print!("{}", run::api(format));
            Ok(Outcome::Success)
        }
        Command::Recover { run, yes, force } => {
            recover::recover(&inventory, &recover::RecoverOptions { run, yes, force }).await
        }
        Command::Unlock { yes, force } => recover::unlock(&inventory, yes, force),
        Command::Pause { run } => control::send(&inventory, run.as_deref(), Request::Pause),
        Command::Resume { run } => control::send(&inventory, run.as_deref(), Request::Resume),
        Command::Abort { run } => control::send(&inventory, run.as_deref(), Request::Abort),
        Command::Promote { run } => control::send(&inventory, run.as_deref(), Request::Promote),
        Command::Runs { show: None } => {
            print!(
                "{}",
                recover::list_runs(&inventory).map_err(Failure::invalid)?
            );
            Ok(Outcome::Success)
        }
        Command::Runs {
            show: Some(RunsCommand::Show { run }),
        } => {
            print!(
                "{}",
                recover::show_run(&inventory, &run).map_err(Failure::invalid)?
            );
            Ok(Outcome::Success)
        }
        Command::Completions { shell } => {
            cli::print_completions(shell);
            Ok(Outcome::Success)
        }
        Command::Man { dir } => {
            let files = cli::write_man_pages(&dir).map_err(|e| {
                Failure::invalid(format!("cannot write into {}: {e}", dir.display()))
            })?;
            files.iter().for_each(|f| println!("{}", f.display()));
            Ok(Outcome::Success)
        }
    }
}
