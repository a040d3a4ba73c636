//! nfslurm's entry point: parse, set up logging, run, map the error to an exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use nfslurm::cli::{Cli, Command, CronAction, ExecutorArg, StatusView, WorkerAction};
use nfslurm::commands::{self, Failure, SelectionSpec, Settings};
use nfslurm::config::ExecutorKind;

fn main() -> ExitCode {
    // A closed pipe (`nfslurm status | head`) ends the process quietly, as
    // for any Unix filter, instead of a panic in `println!`.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Usage errors are user errors: exit 1 (2 means "cluster unreachable").
            let code = if err.use_stderr() { 1 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    // Under cron, `sync --log FILE` sends its own output, time-stamped, to a
    // rotated log; set up first, so that logging and errors go there too.
    let log = match &cli.command {
        Command::Sync { log: Some(path) } => match commands::cron::SyncLog::start(path) {
            Ok(log) => Some(log),
            Err(err) => {
                eprintln!("error: cannot write the log `{}`: {err}", path.display());
                eprintln!(
                    "hint: check that its folder is writable, or run `nfslurm cron install` again"
                );
                return ExitCode::from(1);
            }
        },
        _ => None,
    };
    init_tracing(cli.global.verbose, cli.global.quiet, cli.global.no_color);
    nfslurm::output::init_color(cli.global.no_color);
    let start = std::time::Instant::now();
    let result = run(cli);
    let calls = nfslurm::executor::slurm::process_calls();
    tracing::info!(
        sbatch = calls.sbatch,
        squeue = calls.squeue,
        sacct = calls.sacct,
        scancel = calls.scancel,
        elapsed_ms = start.elapsed().as_millis() as u64,
        "slurm calls"
    );
    let code = match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => report(&err),
    };
    if let Some(log) = log {
        log.finish();
    }
    code
}

fn init_tracing(verbose: u8, quiet: bool, no_color: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("nfslurm={default}")));
    let ansi = !no_color
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Prints the error chain and a hint; picks the exit code (SPEC §4).
fn report(err: &anyhow::Error) -> ExitCode {
    // A closed pipe (`nfslurm status | head`) is not an error worth a message.
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err:#}");
    match err.downcast_ref::<Failure>() {
        Some(f) => {
            if let Some(hint) = &f.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(f.code as u8)
        }
        None => ExitCode::from(1),
    }
}

fn selection(args: &nfslurm::cli::SelectionArgs) -> SelectionSpec {
    SelectionSpec {
        pipelines: args.pipelines.clone(),
        participants: args.participants.clone(),
        sessions: args.sessions.clone(),
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let g = &cli.global;
    let settings = Settings {
        config: g.config.clone(),
        executor: g.executor.map(|e| match e {
            ExecutorArg::Slurm => ExecutorKind::Slurm,
            ExecutorArg::Local => ExecutorKind::Local,
        }),
        json: g.json,
        quiet: g.quiet,
        verbose: g.verbose,
    };
    match cli.command {
        Command::Demo { dir } => commands::demo::run(&settings, dir.as_deref()),
        Command::Init { dir, site, force } => commands::init::run(
            &settings,
            dir.as_deref().unwrap_or(std::path::Path::new(".")),
            &site,
            force,
        ),
        Command::Discover => commands::discover::run(&settings),
        Command::Plan {
            selection: s,
            force,
        } => commands::submit::run_plan(&settings, &selection(&s), force),
        Command::Submit {
            selection: s,
            force,
            dry_run,
            wait,
        } => commands::submit::run_submit(&settings, &selection(&s), force, dry_run, wait),
        Command::Sync { log: _ } => commands::submit::run_sync(&settings),
        Command::Status {
            view,
            selection: s,
            states,
            watch,
        } => {
            let view = match view.unwrap_or(StatusView::Summary) {
                StatusView::Summary => commands::status::View::Summary,
                StatusView::Runs => commands::status::View::Runs,
                StatusView::Matrix => commands::status::View::Matrix,
            };
            commands::status::run(&settings, view, &selection(&s), &states, watch)
        }
        Command::Show { target, provenance } => match provenance {
            true => commands::provenance_view::show(&settings, &target),
            false => commands::inspect::show(&settings, &target),
        },
        Command::Logs { target, follow } => commands::inspect::logs(&settings, &target, follow),
        Command::Render {
            pipeline,
            participant,
            session,
        } => commands::inspect::render(&settings, &pipeline, &participant, session.as_deref()),
        Command::Cancel { runs, selection: s } => {
            commands::manage::cancel(&settings, &runs, &selection(&s), s.all)
        }
        Command::Retry {
            runs,
            selection: s,
            failed,
        } => commands::manage::retry(&settings, &runs, &selection(&s), failed),
        Command::Worker { action } => match action {
            WorkerAction::Start => commands::worker::start(&settings),
            WorkerAction::Stop { now } => commands::worker::stop(&settings, now),
            WorkerAction::Status => commands::worker::status(&settings),
            WorkerAction::Run => commands::worker::run(&settings),
            WorkerAction::Job {
                time_limit,
                log,
                script,
            } => commands::worker::job(nfslurm::executor::local::JobSpec {
                script,
                log,
                time_limit: std::time::Duration::from_secs(time_limit),
            }),
        },
        Command::Cron { action } => {
            let action = match action {
                CronAction::Install { every } => commands::cron::CronSettings::Install { every },
                CronAction::Show => commands::cron::CronSettings::Show,
                CronAction::Remove => commands::cron::CronSettings::Remove,
            };
            commands::cron::run(&settings, action)
        }
        Command::Doctor => commands::doctor::run(&settings),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "nfslurm",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    }
}
