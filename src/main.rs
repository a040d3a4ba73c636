//! nfslurm's entry point: parse, set up logging, run, map the error to an exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use nfslurm::cli::{Cli, Command, CronAction, ExecutorArg, SiteAction, StatusView, WorkerAction};
use nfslurm::commands::{self, Failure, SelectionSpec, Settings};
use nfslurm::config::ExecutorKind;

fn main() -> ExitCode {
    // A closed pipe (`nfslurm status | head`) ends the process quietly, as
    // for any Unix filter, instead of a panic in `println!`.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // `COMPLETE=bash nfslurm` prints the shell's registration;
    // the shell then calls back here for each completion (units, runs).
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    // With `--json`, stdout is JSON whatever happens: errors (below) and
    // even a bug's panic are printed as `{"error": …, "hint": …}`.
    let json = std::env::args_os().any(|a| a == "--json");
    if json {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !nfslurm::output::json_printed() {
                print_json_error(
                    &format!("internal error: {info}"),
                    Some(
                        "this is a bug in nfslurm: please report it with the command that caused it",
                    ),
                );
            }
            default_hook(info);
        }));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Usage errors are user errors: exit 1 (2 means "cluster unreachable").
            let code = if err.use_stderr() { 1 } else { 0 };
            if json && code == 1 {
                let text = err.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                print_json_error(
                    first.trim_start_matches("error: "),
                    Some("see `nfslurm --help`"),
                );
            }
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    // Under cron, `sync --log FILE` sends its own output, time-stamped, to a
    // rotated log; set up first, so that logging and errors go there too.
    let log = match &cli.command {
        Command::Sync {
            log: Some(path), ..
        } => match commands::cron::SyncLog::start(path) {
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
        cpu_ms = cpu_ms(libc::RUSAGE_SELF),
        tools_cpu_ms = cpu_ms(libc::RUSAGE_CHILDREN),
        "slurm calls"
    );
    let code = match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => report(&err, json),
    };
    if let Some(log) = log {
        log.finish();
    }
    code
}

/// User + system CPU in ms of this process (`RUSAGE_SELF`) or of the
/// programs it ran and waited for (`RUSAGE_CHILDREN`: sbatch, squeue, local
/// jobs), for `-v`'s last line and the benchmarks.
fn cpu_ms(who: libc::c_int) -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0;
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

fn init_tracing(verbose: u8, quiet: bool, no_color: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("nfslurm={default}")));
    // The HTTP client logs the URLs it is given, and a webhook URL is a
    // secret: its logs are never shown, whatever `RUST_LOG` asks.
    for quiet in ["ureq=off", "ureq_proto=off"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
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

/// Prints the error chain and a hint; picks the exit code (docs/user-guide.md, exit codes).
/// With `--json` the error is also printed on stdout, as
/// `{"error": …, "hint": …}`, so that a script always reads JSON.
fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    // A closed pipe (`nfslurm status | head`) is not an error worth a message.
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err:#}");
    let failure = err.downcast_ref::<Failure>();
    let state_hint = err
        .chain()
        .find_map(|e| e.downcast_ref::<nfslurm::state::StateError>())
        .and_then(|e| e.hint());
    let hint = failure
        .and_then(|f| f.hint.as_deref())
        .or(state_hint.as_deref());
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
    // After a document (`sync --json` that lost the cluster prints what it
    // did, then fails), stdout stays one document: the error is on stderr.
    if json && !nfslurm::output::json_printed() {
        print_json_error(&format!("{err:#}"), hint);
    }
    ExitCode::from(failure.map_or(1, |f| f.code as u8))
}

fn print_json_error(error: &str, hint: Option<&str>) {
    nfslurm::output::print_json(&serde_json::json!({ "error": error, "hint": hint }));
}

fn selection(args: &nfslurm::cli::SelectionArgs) -> SelectionSpec {
    SelectionSpec {
        pipelines: args.pipelines.clone(),
        participants: args.participants.clone(),
        participant_file: args.participant_file.clone(),
        sessions: args.sessions.clone(),
    }
}

/// `nfslurm man [COMMAND]`: the page of the whole CLI or of one command,
/// generated from the same clap types as `--help`, so it never drifts.
fn man_page(command: Option<&str>) -> anyhow::Result<i32> {
    let mut cli = Cli::command();
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name).cloned() else {
                let names: Vec<String> = cli
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|c| c.get_name().to_string())
                    .collect();
                return Err(Failure::user(
                    format!("`nfslurm man {name}`: no such command"),
                    Some(&format!("commands: {}", names.join(", "))),
                ));
            };
            sub.display_name(format!("nfslurm-{name}"))
                .bin_name(format!("nfslurm {name}"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .source(format!("nfslurm {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(0)
}

fn stop_mode(how: nfslurm::cli::StopArgs) -> commands::worker::StopMode {
    match (how.now, how.timeout) {
        (true, _) => commands::worker::StopMode::Timeout(0),
        (false, Some(s)) => commands::worker::StopMode::Timeout(s),
        (false, None) => commands::worker::StopMode::Drain,
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
        reset_state: g.reset_state,
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
        Command::Sync { dry_run: true, .. } => commands::sync_dry::run(&settings),
        Command::Sync { .. } => commands::submit::run_sync(&settings),
        Command::Serve {
            listen,
            jobs_per_minute,
        } => commands::serve::run(&settings, listen, jobs_per_minute),
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
        Command::Report { output } => commands::report::run(&settings, &output),
        Command::Show { target, provenance } => match provenance {
            true => commands::provenance_view::show(&settings, &target),
            false => commands::inspect::show(&settings, &target),
        },
        Command::Log {
            selection: s,
            since,
            last,
        } => commands::history::log(&settings, &selection(&s), since.as_deref(), last),
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
        } => commands::manage::retry(&settings, &runs, &selection(&s), s.all, failed),
        Command::Worker { action } => match action {
            WorkerAction::Start { jobs } => commands::worker::start(&settings, jobs),
            WorkerAction::Stop { how } => commands::worker::stop(&settings, stop_mode(how)),
            WorkerAction::Restart { how, jobs } => {
                commands::worker::restart(&settings, stop_mode(how), jobs)
            }
            WorkerAction::Status => commands::worker::status(&settings),
            WorkerAction::Run { jobs } => commands::worker::run(&settings, jobs),
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
                CronAction::Install { every, schedule } => {
                    commands::cron::CronSettings::Install { every, schedule }
                }
                CronAction::Show => commands::cron::CronSettings::Show,
                CronAction::Remove => commands::cron::CronSettings::Remove,
            };
            commands::cron::run(&settings, action)
        }
        Command::Clean {
            older_than,
            dry_run,
        } => commands::clean::run(&settings, older_than.as_deref(), dry_run),
        Command::Site { action } => match action {
            SiteAction::List => commands::site::list(&settings),
            SiteAction::Show { name } => commands::site::show(&settings, &name),
        },
        Command::Doctor => commands::doctor::run(&settings),
        Command::Man { command } => man_page(command.as_deref()),
        Command::Schema { site } => {
            let schema = if site {
                nfslurm::config::schema::site_schema()
            } else {
                nfslurm::config::schema::config_schema()
            };
            nfslurm::output::print_json(&schema);
            Ok(0)
        }
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
