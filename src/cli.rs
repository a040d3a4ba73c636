//! Command-line types (clap only). Commands receive resolved settings, never these.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::engine::ArgValueCompleter;

use crate::commands::complete;

#[derive(Debug, Parser)]
#[command(
    name = "nfslurm",
    version,
    about = "Keeps a neuroimaging study processed on a Slurm cluster, unattended",
    after_help = "Examples:\n  nfslurm demo                  run a small study end to end on this machine\n  nfslurm init mystudy          write a starter nfslurm.yaml and mapping.csv\n  nfslurm sync                  what cron runs: discover, reconcile, retry, submit\n  nfslurm status matrix         sessions x pipelines at a glance"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The study's config file [default: $NFSLURM_CONFIG, else nfslurm.yaml searched upward]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where units run [default: the config's `executor`, else slurm]
    #[arg(long, global = true, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Machine-readable output, where the output is data
    #[arg(long, global = true)]
    pub json: bool,
    /// No colour (also: NO_COLOR)
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Set aside a state nfslurm refuses (an emptied, truncated or foreign
    /// `state.db`), moving it into `<state_dir>/backup-<time>/`, and start afresh
    #[arg(long, global = true)]
    pub reset_state: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExecutorArg {
    Slurm,
    Local,
}

/// The selection flags shared by plan, submit, status, cancel and retry.
#[derive(Debug, Args, Default, Clone)]
pub struct SelectionArgs {
    /// Only these pipelines (`--pipeline bids qsiprep`, or repeated)
    #[arg(long = "pipeline", value_name = "P", num_args = 1..)]
    pub pipelines: Vec<String>,
    /// Every unit (the default when nothing else is selected)
    #[arg(long)]
    pub all: bool,
    /// Only these participants: `01` or `sub-01` (`--participant 01 02 03`, or repeated)
    #[arg(long = "participant", value_name = "L", num_args = 1..)]
    pub participants: Vec<String>,
    /// Participants listed in FILE: one per line (or separated by spaces or commas); `#` starts a comment
    #[arg(long = "participant-file", value_name = "FILE")]
    pub participant_file: Option<PathBuf>,
    /// Only these sessions: `1` or `ses-1` (`--session 1 2`, or repeated)
    #[arg(long = "session", value_name = "L", num_args = 1..)]
    pub sessions: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a small demo study and run it end to end on this machine
    #[command(after_help = "Examples:\n  nfslurm demo\n  nfslurm demo /tmp/nfslurm-demo")]
    Demo {
        /// Where to create it [default: ./nfslurm-demo]
        dir: Option<PathBuf>,
    },
    /// Write a commented starter nfslurm.yaml and mapping.csv
    #[command(after_help = "Examples:\n  nfslurm init\n  nfslurm init /data/study --site generic")]
    Init {
        /// Study folder [default: .]
        dir: Option<PathBuf>,
        /// Bundled site config to start from (generic, local) or a path
        #[arg(long, default_value = "generic")]
        site: String,
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
    /// Scan, map and validate sessions; register new ones
    #[command(after_help = "Examples:\n  nfslurm discover\n  nfslurm discover --json")]
    Discover,
    /// Show what submit would do and why; submits nothing
    #[command(
        after_help = "Examples:\n  nfslurm plan\n  nfslurm plan --pipeline qsiprep --participant 01\n  nfslurm plan --json"
    )]
    Plan {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Rerun the selected units even when done
        #[arg(long)]
        force: bool,
    },
    /// Submit the selected units and the upstream units they need, as one chain
    #[command(
        after_help = "Examples:\n  nfslurm submit --all\n  nfslurm submit --pipeline qsiprep --participant sub-01 --force\n  nfslurm submit --all --dry-run\n  nfslurm submit --all --wait --executor local"
    )]
    Submit {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Rerun the selected units even when done
        #[arg(long)]
        force: bool,
        /// Print the plan and the scripts' paths; submit nothing
        #[arg(long)]
        dry_run: bool,
        /// Follow the runs until they all finish
        #[arg(long, alias = "sync")]
        wait: bool,
    },
    /// What cron runs: discover, reconcile, apply retries, submit what is due
    /// Serve the study over HTTP: the jobs API, live updates and the dashboard
    #[command(
        after_help = "Examples:\n  nfslurm serve                         http://127.0.0.1:8765, this machine only\n  nfslurm serve --listen 127.0.0.1:9000\n  ssh -L 8765:127.0.0.1:8765 login.cluster   then open the printed URL on your laptop"
    )]
    Serve {
        /// Address and port to listen on; anything but loopback is reachable
        /// from other machines
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8765")]
        listen: std::net::SocketAddr,
        /// Job creations (`POST /api/v1/jobs`) allowed per minute
        #[arg(long, value_name = "N", default_value_t = 30)]
        jobs_per_minute: u32,
    },
    #[command(
        after_help = "Examples:\n  nfslurm sync                  prints one line per change, nothing when nothing changed\n  nfslurm sync --json           the changes as data\n  nfslurm sync --dry-run        what it would record and submit; changes nothing\n  nfslurm cron install          run it from cron every 15 minutes"
    )]
    Sync {
        /// Append this run's output and errors, time-stamped, to FILE, rotated
        /// past 1 MiB (what the crontab line of `nfslurm cron install` uses)
        #[arg(long, value_name = "FILE", hide = true)]
        log: Option<PathBuf>,
        /// Say what this sync would record and submit; change nothing
        #[arg(long, conflicts_with = "log")]
        dry_run: bool,
    },
    /// Per-pipeline counts, runs, or the sessions x pipelines matrix
    #[command(
        after_help = "Examples:\n  nfslurm status\n  nfslurm status runs --state failed\n  nfslurm status matrix\n  nfslurm status --json"
    )]
    Status {
        #[arg(value_enum)]
        view: Option<StatusView>,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Only units (or runs) in this state
        #[arg(long = "state", value_name = "S")]
        states: Vec<String>,
        /// Redraw every SECS seconds
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "5")]
        watch: Option<u64>,
    },
    /// Write the dashboard (matrix, runs, failures and their logs) as one HTML file
    #[command(
        after_help = "Examples:\n  nfslurm report -o study.html\n  nfslurm report -o /shared/www/study.html --json\n\nIt only reads the state, so cron can refresh it as often as it runs `sync`.\nThe file opens in any browser, with no server and no network."
    )]
    Report {
        /// The HTML file to write (replaced atomically)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// The history of a unit (`qsiprep/sub-01`), a run (its job ID or `run:N`), a subject (`sub-01`) or a session (`sub-01/ses-1`)
    #[command(
        after_help = "Examples:\n  nfslurm show qsiprep/sub-01\n  nfslurm show bids/sub-01/ses-1\n  nfslurm show 12345\n  nfslurm show sub-01           the subject: its sessions and units\n  nfslurm show sub-01/ses-1     the session: folder, series, units\n  nfslurm show 12345 --provenance"
    )]
    Show {
        /// A unit key, a run, a subject or a session
        #[arg(add = ArgValueCompleter::new(complete::show_targets))]
        target: String,
        /// What produced the run (a unit: its last run): nfslurm, config,
        /// template, script, image, job, resources, attempt chain
        #[arg(long)]
        provenance: bool,
    },
    /// The study's history: every state change, with its cause, oldest first
    #[command(
        after_help = "Examples:\n  nfslurm log\n  nfslurm log --since 1d\n  nfslurm log --participant 01 --pipeline qsiprep\n  nfslurm log --since 2026-12-01 --json"
    )]
    Log {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Only changes since: a duration back from now (`2h`, `3d`), a date or an RFC 3339 time
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only the last N changes
        #[arg(short = 'n', long, value_name = "N")]
        last: Option<usize>,
    },
    /// Print a run's output file
    #[command(
        after_help = "Examples:\n  nfslurm logs 12345\n  nfslurm logs qsiprep/sub-01 --follow"
    )]
    Logs {
        /// A job ID, `run:N`, or a unit key (its last run)
        #[arg(add = ArgValueCompleter::new(complete::log_targets))]
        target: String,
        /// Keep printing as the file grows, until the run ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the sbatch script that would be submitted for one unit
    #[command(
        after_help = "Examples:\n  nfslurm render --pipeline qsiprep --participant 01\n  nfslurm render --pipeline bids --participant 01 --session 1"
    )]
    Render {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        participant: String,
        #[arg(long)]
        session: Option<String>,
    },
    /// Cancel runs (scancel) and mark their units cancelled until `retry`
    #[command(
        after_help = "Examples:\n  nfslurm cancel 12345\n  nfslurm cancel --pipeline qsiprep --participant 01"
    )]
    Cancel {
        /// Job IDs or `run:N`
        #[arg(add = ArgValueCompleter::new(complete::runs))]
        runs: Vec<String>,
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// Reset the retry budget of failed or cancelled units and submit them
    #[command(
        after_help = "Examples:\n  nfslurm retry --failed\n  nfslurm retry --pipeline qsiprep --participant 01"
    )]
    Retry {
        /// Job IDs or `run:N`
        #[arg(add = ArgValueCompleter::new(complete::runs))]
        runs: Vec<String>,
        #[command(flatten)]
        selection: SelectionArgs,
        /// Every failed unit
        #[arg(long)]
        failed: bool,
    },
    /// Remove work dirs of done units and old attempts' scripts and logs; fold old runs into summaries
    #[command(
        after_help = "Examples:\n  nfslurm clean --dry-run             what would go, and how much it frees\n  nfslurm clean                       what ended more than 30 days ago\n  nfslurm clean --older-than 0        everything eligible\n\nNever a unit's last attempt or last success, never a run in flight."
    )]
    Clean {
        /// Only what ended longer ago than this [default: 30d]
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Say what would be removed; remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// The local executor's background worker
    #[command(after_help = "Examples:\n  nfslurm worker status\n  nfslurm worker stop")]
    Worker {
        #[command(subcommand)]
        action: WorkerAction,
    },
    /// Manage the crontab line that runs `nfslurm sync` (no root needed)
    #[command(
        after_help = "Examples:\n  nfslurm cron install               every 15 minutes, logging to <state_dir>/cron.log\n  nfslurm cron install --every 1h\n  nfslurm cron show\n  nfslurm cron remove\n\nThe line is in your own crontab on this login node; other entries are left alone."
    )]
    Cron {
        #[command(subcommand)]
        action: CronAction,
    },
    /// The bundled site configs: list them, or print one to copy
    #[command(
        after_help = "Examples:\n  nfslurm site list\n  nfslurm site show generic > mysite.yaml    then `site: mysite.yaml` in nfslurm.yaml"
    )]
    Site {
        #[command(subcommand)]
        action: SiteAction,
    },
    /// Check config, templates, Slurm tools, cluster, images, paths, state and cron
    #[command(
        after_help = "Examples:\n  nfslurm doctor\n  nfslurm doctor --executor local   checks for a laptop run\n  nfslurm doctor --json\n\nEach line is `ok`, `warn` or `fail`, with a hint; the exit code is 1 if any check fails."
    )]
    Doctor,
    /// Print the JSON Schema of nfslurm.yaml (or of a site file), for editors and checks
    #[command(
        after_help = "Examples:\n  nfslurm schema > nfslurm.schema.json\n  nfslurm schema --site > site.schema.json\n\nWith the YAML language server, a first line `# yaml-language-server: $schema=nfslurm.schema.json` gives completion and checks in the editor."
    )]
    Schema {
        /// The schema of a site file instead
        #[arg(long)]
        site: bool,
    },
    /// Print the manual page (roff), for `man -l -` or a `man1` folder
    #[command(
        after_help = "Examples:\n  nfslurm man | man -l -\n  nfslurm man submit | man -l -\n  nfslurm man > ~/.local/share/man/man1/nfslurm.1"
    )]
    Man {
        /// A command's own page (`submit`, `worker`, …) [default: the main page]
        command: Option<String>,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  nfslurm completions bash > ~/.local/share/bash-completion/completions/nfslurm"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteAction {
    /// The names of the bundled site configs
    List,
    /// Print a bundled site config (YAML), to read or copy
    Show {
        /// A bundled site name (`generic`, `local`)
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CronAction {
    /// Add (or update) this study's line in the user's crontab
    #[command(
        after_help = "Examples:\n  nfslurm cron install\n  nfslurm cron install --every 5m\n  nfslurm cron install --every 6h\n  nfslurm cron install --schedule \"0 2 */3 * *\""
    )]
    Install {
        /// How often: minutes that divide an hour (5m, 15m, 30m) or hours that divide a day (1h, 6h, 24h)
        #[arg(long, default_value = "15m")]
        every: String,
        /// Or a crontab schedule of five fields, as written (`0 2 */3 * *`: 02:00 every third day)
        #[arg(long, value_name = "FIELDS", conflicts_with = "every")]
        schedule: Option<String>,
    },
    /// Print this study's crontab line, its log file and the last sync
    #[command(
        after_help = "Examples:\n  nfslurm cron show\n  nfslurm cron show --json\n  nfslurm --config /data/study cron show"
    )]
    Show,
    /// Remove this study's line; other entries are untouched
    #[command(
        after_help = "Examples:\n  nfslurm cron remove\n  nfslurm --config /data/study/nfslurm.yaml cron remove"
    )]
    Remove,
}

/// How `worker stop` and `worker restart` end running jobs.
#[derive(Debug, Args, Clone, Copy)]
pub struct StopArgs {
    /// End running jobs now (SIGTERM to each job's process group, SIGKILL 10s later)
    #[arg(long, conflicts_with = "timeout")]
    pub now: bool,
    /// Let running jobs run this many seconds more, then end them as `--now` does
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StatusView {
    Summary,
    Runs,
    Matrix,
}

#[derive(Debug, Subcommand)]
pub enum WorkerAction {
    /// Start the worker if runs are queued and none is running
    #[command(
        after_help = "Examples:\n  nfslurm worker start\n  nfslurm worker start -j 2     at most two jobs at once"
    )]
    Start {
        /// Jobs at once [default: `local.slots`, else `local.cpus`]
        #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
    },
    /// Stop it: running jobs finish, nothing new starts; queued runs stay queued
    #[command(
        after_help = "Examples:\n  nfslurm worker stop               running jobs finish first\n  nfslurm worker stop --timeout 60  they get a minute, then SIGTERM, SIGKILL 10s later\n  nfslurm worker stop --now         end them now\n\nJobs ended this way are recorded `infra_failed` and run again without spending an attempt."
    )]
    Stop {
        #[command(flatten)]
        how: StopArgs,
    },
    /// Stop the worker (as `stop`), then start it again
    #[command(
        after_help = "Examples:\n  nfslurm worker restart\n  nfslurm worker restart --now -j 4"
    )]
    Restart {
        #[command(flatten)]
        how: StopArgs,
        /// Jobs at once for the new worker [default: `local.slots`]
        #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
    },
    /// PID, uptime, CPU and memory of the worker and its jobs, slots, queue
    #[command(after_help = "Examples:\n  nfslurm worker status\n  nfslurm worker status --json")]
    Status,
    /// Run the worker in the foreground, logging to the terminal (for debugging);
    /// Ctrl-C once: running jobs finish; twice: they are ended
    #[command(after_help = "Examples:\n  nfslurm -v worker run\n  nfslurm -vv worker run -j 1")]
    Run {
        /// Jobs at once [default: `local.slots`, else `local.cpus`]
        #[arg(short = 'j', long = "jobs", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        jobs: Option<u32>,
    },
    /// Run one local job exactly once (what the worker launches for each job)
    #[command(hide = true)]
    Job {
        /// Time limit in seconds
        #[arg(long)]
        time_limit: u64,
        /// The job's log file; its lock and status file are kept beside it
        #[arg(long)]
        log: std::path::PathBuf,
        /// The rendered script
        script: std::path::PathBuf,
    },
}
