//! The local executor: the same rendered scripts, run with `bash` on this
//! machine by a background worker (`nfslurm worker`), in dependency order and
//! within the configured CPUs and memory.
//!
//! `submit` records runs as `pending` and makes sure a worker is running; the
//! worker is the only process that starts local jobs and records their
//! states. It holds `<state_dir>/worker.lock` for its lifetime, so "is a
//! worker alive" is a lock test, immune to PID reuse; it exits on its own
//! when nothing is left.
//!
//! Each job runs under a wrapper (see [`job`]) that outlives the worker and
//! keeps the job's outcome beside its log, so a worker killed at any moment
//! loses nothing and runs nothing twice: the next worker (started by the
//! next `sync` or `submit`) adopts jobs still running and records those that
//! ended.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod job;
pub mod procfs;

pub use job::{JobFiles, JobSpec, JobStatus, Probe, run_job};

use crate::config::{Config, ExecutorKind};
use crate::engine;
use crate::executor::Journal;
use crate::executor::{CANCELLED_BY_US, ExecError, Executor, Prepared, SubmitOutcome};
use crate::model::RunState;
use crate::state::{self, RunRow, RunUpdate, Store};

pub const WORKER_LOCK: &str = "worker.lock";
pub const WORKER_PID: &str = "worker.pid";
/// The lock `submit` and `sync` hold while they plan and submit.
pub const PLAN_LOCK: &str = "plan.lock";
/// Why a run whose job started but left no outcome is an infrastructure failure.
const JOB_ABANDONED: &str =
    "the job's wrapper was killed while it ran: its outcome is unknown, so it runs again";

fn pending_update(run_id: i64) -> RunUpdate {
    RunUpdate {
        run_id,
        state: Some(RunState::Pending),
        job_id: Some(run_id.to_string()),
        ..Default::default()
    }
}

/// The worker's log in the state directory, rotated like the cron log.
pub const WORKER_LOG: &str = "worker.log";
/// After `worker stop` (or a second Ctrl-C) sent SIGTERM to a job's process
/// group, the worker sends SIGKILL to what is left after this long, as
/// Slurm's `KillWait` does.
pub const STOP_KILL_GRACE: Duration = Duration::from_secs(10);

/// Signals received by the worker (SIGINT/SIGTERM): 1 = finish running jobs
/// and stop, 2 or more = end them too (SIGTERM to their groups, SIGKILL
/// after [`STOP_KILL_GRACE`]).
static STOP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    STOP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// True when a worker holds the lock of this state directory.
pub fn worker_alive(state_dir: &Path) -> bool {
    matches!(state::try_lock(state_dir, WORKER_LOCK), Ok(None))
}

/// What the worker's PID file says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    pub pid: i32,
    /// When it started (Unix seconds).
    pub since: i64,
    /// How many jobs it runs at once.
    pub slots: u32,
}

/// The worker's PID, start time and slots, from its PID file (`pid start
/// slots`; files of older versions lack the slots).
pub fn worker_info(state_dir: &Path) -> Option<WorkerInfo> {
    let text = fs::read_to_string(state_dir.join(WORKER_PID)).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let since = parts.next()?.parse().ok()?;
    let slots = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Some(WorkerInfo { pid, since, slots })
}

/// Rotates `worker.log` past 1 MiB, keeping three old files, as the cron
/// log is; under a lock so that two starters do not both rotate.
pub fn rotate_worker_log(state_dir: &Path) -> std::io::Result<()> {
    let _guard = state::lock_with_timeout(state_dir, "worker.log.lock", Duration::from_secs(2))
        .map_err(std::io::Error::other)?;
    crate::commands::cron::rotate(
        &state_dir.join(WORKER_LOG),
        crate::commands::cron::LOG_MAX_BYTES,
        crate::commands::cron::LOG_KEEP,
    )?;
    Ok(())
}

/// Starts a detached worker for this config unless one is alive.
pub fn ensure_worker(config: &Config) -> Result<bool, ExecError> {
    spawn_worker(config, None)
}

/// Starts a detached worker, running at most `slots` jobs at once (else
/// `local.slots`), unless one is alive.
pub fn spawn_worker(config: &Config, slots: Option<u32>) -> Result<bool, ExecError> {
    let dir = &config.paths.state_dir;
    if worker_alive(dir) {
        return Ok(false);
    }
    let exe = std::env::current_exe()
        .map_err(|e| ExecError::Other(format!("cannot find the nfslurm binary: {e}")))?;
    rotate_worker_log(dir)
        .map_err(|e| ExecError::Other(format!("cannot rotate the worker log: {e}")))?;
    let log = open_append(&dir.join(WORKER_LOG))
        .map_err(|e| ExecError::Other(format!("cannot open the worker log: {e}")))?;
    let log2 = log
        .try_clone()
        .map_err(|e| ExecError::Other(e.to_string()))?;
    let mut command = Command::new(exe);
    command
        .arg("--config")
        .arg(&config.file)
        .args(["worker", "run"]);
    if let Some(n) = slots {
        command.arg("--jobs").arg(n.to_string());
    }
    command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: Ctrl-C in the terminal does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| ExecError::Other(format!("cannot start the local worker: {e}")))?;
    // Wait until it holds its lock, so callers can rely on it.
    let start = Instant::now();
    while !worker_alive(dir) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(true)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

pub struct LocalExecutor {
    config: Config,
    /// Start a worker after submitting (off in tests that drive the worker).
    pub autostart: bool,
}

impl LocalExecutor {
    pub fn new(config: &Config) -> LocalExecutor {
        LocalExecutor {
            config: config.clone(),
            autostart: true,
        }
    }
}

impl Executor for LocalExecutor {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Local
    }

    fn reconcile(
        &mut self,
        _store: &Store,
        open: &[RunRow],
        _now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        // The caller holds the plan lock, so a `submitting` run is an intent
        // a killed `submit` or `sync` left: hand it to the worker. Jobs that
        // ran or run are the worker's to record (it adopts what a killed
        // worker left, from the jobs' own files): one writer of their state.
        let updates: Vec<RunUpdate> = open
            .iter()
            .filter(|r| r.state == RunState::Submitting)
            .map(|r| pending_update(r.id))
            .collect();
        if !open.is_empty() && self.autostart {
            ensure_worker(&self.config)?;
        }
        Ok(updates)
    }

    fn submit(
        &mut self,
        journal: &mut dyn Journal,
        batch: &[Prepared],
        now: i64,
    ) -> Result<SubmitOutcome, ExecError> {
        let updates: Vec<RunUpdate> = batch
            .iter()
            .map(|p| RunUpdate {
                run_id: p.run_id,
                state: Some(RunState::Pending),
                job_id: Some(p.run_id.to_string()),
                submitted_at: Some(now),
                ..Default::default()
            })
            .collect();
        journal.record(&updates)?;
        if self.autostart {
            ensure_worker(&self.config)?;
        }
        Ok(SubmitOutcome {
            submitted: batch
                .iter()
                .map(|p| (p.run_id, p.run_id.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    fn cancel(
        &mut self,
        _store: &Store,
        runs: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        let mut updates = Vec::new();
        for run in runs {
            let files = JobFiles::of_log(&run.log_path);
            // Not started: fence it so that no wrapper ever starts it.
            // Started: end its process group (the lock says it still runs).
            let fenced = files
                .fence()
                .map_err(|e| ExecError::Other(format!("cannot cancel run {}: {e}", run.id)))?;
            if !fenced
                && let Ok(Probe::Running(pgid)) = files.probe()
                && pgid > 0
            {
                // SAFETY: kill(2) of the job's process group, which holds its lock.
                unsafe {
                    libc::kill(-pgid, libc::SIGTERM);
                }
            }
            updates.push(RunUpdate::ended(
                run.id,
                RunState::Cancelled,
                CANCELLED_BY_US,
                now,
            ));
        }
        Ok(updates)
    }
}

/// A job the worker watches: one it started, or one it adopted from a
/// worker that died.
struct Watch {
    /// The wrapper this worker started, until it is reaped.
    wrapper: Option<i32>,
    /// How the wrapper exited, once reaped.
    wrapper_exit: Option<i32>,
    /// The job's process group, once known.
    pgid: i32,
    cpus: u32,
    mem_mb: u64,
    /// Ended by `worker stop` (SIGTERM sent to its group at this time).
    killed: Option<Instant>,
    /// SIGKILL sent, after [`STOP_KILL_GRACE`].
    hard_killed: bool,
}

/// Reaps a wrapper this process started: its exit code once it has exited.
fn reap_wrapper(pid: i32) -> Option<i32> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid on our own child, without blocking.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid {
        Some(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        })
    } else if r < 0 {
        // Not our child (any more): treat as exited.
        Some(-1)
    } else {
        None
    }
}

/// The run update for a job whose status file says it ended.
fn ended_update(run: &RunRow, status: &JobStatus, killed: bool, now: i64) -> RunUpdate {
    let code = status.exit_code.unwrap_or(1);
    let (state, reason) = if killed {
        (
            RunState::InfraFailed,
            Some("killed: the local worker was stopped".to_string()),
        )
    } else if status.timed_out {
        (
            RunState::Timeout,
            Some(format!(
                "time limit {} reached",
                crate::config::format_slurm_time(run.time_limit_s)
            )),
        )
    } else if code == 0 {
        (RunState::Succeeded, None)
    } else {
        (RunState::Failed, Some(crate::model::exit_reason(code)))
    };
    let ended = status.ended_at.unwrap_or(now);
    RunUpdate {
        run_id: run.id,
        state: Some(state),
        exit_code: Some(code),
        reason,
        started_at: status.started_at,
        ended_at: Some(ended),
        elapsed_s: status.started_at.map(|s| (ended - s).max(0)),
        max_rss_mb: status.max_rss_mb,
        pid: status.pgid.map(i64::from),
        ..Default::default()
    }
}

/// A run whose job started but whose outcome nobody wrote.
fn abandoned_update(run: &RunRow, now: i64) -> RunUpdate {
    RunUpdate::ended(run.id, RunState::InfraFailed, JOB_ABANDONED, now)
}

/// The worker: starts pending local runs whose dependencies succeeded, within
/// the CPU and memory limits and at most `slots` at once (else
/// `local.slots`), watches them (and any job a previous worker left running)
/// until they end, and stops when nothing is left or it is told to.
pub fn run_worker(config: &Config, slots: Option<u32>) -> anyhow::Result<()> {
    let dir = &config.paths.state_dir;
    let Some(_lock) = state::try_lock(dir, WORKER_LOCK)? else {
        println!("a worker is already running for this study");
        return Ok(());
    };
    install_signal_handlers();
    let slots = slots.unwrap_or(config.local.slots).max(1) as usize;
    fs::write(
        dir.join(WORKER_PID),
        format!("{} {} {slots}\n", std::process::id(), engine::now()),
    )?;
    let mut store = Store::open(dir)?;
    let limits = &config.local;
    let exe = std::env::current_exe()?;
    let mut watched: HashMap<i64, Watch> = HashMap::new();
    // Wrappers that exited without starting their job, per run.
    let mut false_starts: HashMap<i64, u32> = HashMap::new();
    let mut last_submitting_check = Instant::now() - Duration::from_secs(60);
    tracing::info!(
        cpus = limits.cpus,
        mem_mb = limits.mem_mb,
        "local worker started"
    );

    loop {
        let signals = STOP_SIGNALS.load(Ordering::SeqCst);
        let now = engine::now();
        let mut updates = Vec::new();
        let open: HashMap<i64, RunRow> = store
            .open_runs()?
            .into_iter()
            .filter(|r| r.executor == ExecutorKind::Local)
            .map(|r| (r.id, r))
            .collect();

        // Jobs being watched: ended yet?
        let mut gone = Vec::new();
        for (&run_id, w) in watched.iter_mut() {
            if let Some(pid) = w.wrapper
                && let Some(code) = reap_wrapper(pid)
            {
                w.wrapper = None;
                w.wrapper_exit = Some(code);
            }
            let files = open.get(&run_id).map(|r| JobFiles::of_log(&r.log_path));
            if w.pgid == 0
                && let Some(pgid) = files
                    .as_ref()
                    .and_then(|f| f.read_status())
                    .and_then(|s| s.pgid)
            {
                w.pgid = pgid;
                updates.push(RunUpdate {
                    run_id,
                    pid: Some(pgid as i64),
                    ..Default::default()
                });
            }
            if signals >= 2 && w.killed.is_none() && w.pgid > 0 {
                w.killed = Some(Instant::now());
                tracing::info!(run = run_id, pgid = w.pgid, "stopping: SIGTERM to the job");
                // SAFETY: kill(2) of the job's own process group.
                unsafe {
                    libc::kill(-w.pgid, libc::SIGTERM);
                }
            }
            if let Some(at) = w.killed
                && !w.hard_killed
                && at.elapsed() >= STOP_KILL_GRACE
            {
                w.hard_killed = true;
                tracing::info!(run = run_id, pgid = w.pgid, "stopping: SIGKILL to the job");
                // SAFETY: kill(2) of the job's own process group, still
                // alive: its wrapper has not written the outcome yet.
                unsafe {
                    libc::kill(-w.pgid, libc::SIGKILL);
                }
            }
            if w.wrapper.is_some() {
                continue;
            }
            let Some(run) = open.get(&run_id) else {
                // Cancelled (or ended) by someone else: its record stands.
                gone.push(run_id);
                continue;
            };
            let files = JobFiles::of_log(&run.log_path);
            match files.probe()? {
                Probe::Running(_) => {}
                Probe::Ended(status) => {
                    updates.push(ended_update(run, &status, w.killed.is_some(), now));
                    gone.push(run_id);
                }
                Probe::Abandoned(_) => {
                    updates.push(abandoned_update(run, now));
                    gone.push(run_id);
                }
                Probe::Fenced => gone.push(run_id),
                Probe::NotStarted => {
                    // The wrapper exited without starting it: try again, a few times.
                    let n = false_starts.entry(run_id).or_default();
                    *n += 1;
                    if *n >= 3 {
                        updates.push(RunUpdate::ended(
                            run_id,
                            RunState::InfraFailed,
                            &format!(
                                "the local job wrapper could not start the job (exit code {})",
                                w.wrapper_exit.unwrap_or(-1)
                            ),
                            now,
                        ));
                    }
                    gone.push(run_id);
                }
            }
        }
        for id in &gone {
            watched.remove(id);
        }
        // Runs recorded as running that nobody watches: a previous worker's.
        let mut startable: Vec<&RunRow> = Vec::new();
        let mut submitting = false;
        for run in open.values() {
            if watched.contains_key(&run.id) {
                continue;
            }
            match run.state {
                RunState::Running => match JobFiles::of_log(&run.log_path).probe()? {
                    Probe::Running(pgid) => {
                        tracing::info!(run = run.id, pgid, "adopted a running job");
                        watched.insert(
                            run.id,
                            Watch {
                                wrapper: None,
                                wrapper_exit: None,
                                pgid,
                                cpus: run.cpus,
                                mem_mb: run.mem_mb,
                                killed: None,
                                hard_killed: false,
                            },
                        );
                    }
                    Probe::Ended(status) => updates.push(ended_update(run, &status, false, now)),
                    Probe::Abandoned(_) => updates.push(abandoned_update(run, now)),
                    Probe::Fenced => updates.push(RunUpdate::ended(
                        run.id,
                        RunState::Cancelled,
                        CANCELLED_BY_US,
                        now,
                    )),
                    Probe::NotStarted => startable.push(run),
                },
                RunState::Pending => startable.push(run),
                RunState::Submitting => submitting = true,
                _ => {}
            }
        }
        // Intents a killed `submit` or `sync` left: theirs once no one plans.
        if submitting && last_submitting_check.elapsed() > Duration::from_secs(2) {
            last_submitting_check = Instant::now();
            if let Some(_plan) = state::try_lock(dir, PLAN_LOCK)? {
                for run in store.open_runs()? {
                    if run.executor == ExecutorKind::Local && run.state == RunState::Submitting {
                        updates.push(pending_update(run.id));
                    }
                }
            }
        }

        // Start what is ready, or fail it for its upstream.
        startable.sort_by_key(|r| r.id);
        let dep_ids: Vec<i64> = startable
            .iter()
            .flat_map(|r| r.depends_on.iter().copied())
            .collect();
        let deps: HashMap<i64, RunRow> = store
            .runs_by_ids(&dep_ids)?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let done_now: HashMap<i64, RunState> = updates
            .iter()
            .filter_map(|u| u.state.map(|s| (u.run_id, s)))
            .collect();
        let mut used_cpus: u32 = watched.values().map(|c| c.cpus).sum();
        let mut used_mem: u64 = watched.values().map(|c| c.mem_mb).sum();
        let mut waiting = false;
        for run in &startable {
            let mut ready = true;
            let mut failed_up = None;
            for d in &run.depends_on {
                let state = done_now
                    .get(d)
                    .copied()
                    .or_else(|| deps.get(d).map(|r| r.state));
                match state {
                    Some(RunState::Succeeded) => {}
                    Some(s) if s.in_flight() => ready = false,
                    Some(s) => {
                        failed_up = Some((*d, s));
                        break;
                    }
                    None => {
                        // Withdrawn or unknown: treat as failed upstream.
                        failed_up = Some((*d, RunState::Lost));
                        break;
                    }
                }
            }
            if let Some((dep, s)) = failed_up {
                let what = deps
                    .get(&dep)
                    .map(|r| r.key.to_string())
                    .unwrap_or_else(|| format!("run {dep}"));
                updates.push(RunUpdate {
                    run_id: run.id,
                    state: Some(RunState::UpstreamFailed),
                    reason: Some(format!("upstream {what} ended {s}")),
                    ended_at: Some(now),
                    ..Default::default()
                });
                continue;
            }
            waiting = true;
            if !ready || signals > 0 || watched.len() >= slots {
                continue;
            }
            let fits = (used_cpus + run.cpus <= limits.cpus
                && used_mem + run.mem_mb <= limits.mem_mb)
                || watched.is_empty();
            if !fits {
                continue;
            }
            match start(config, &exe, run) {
                Ok(pid) => {
                    used_cpus += run.cpus;
                    used_mem += run.mem_mb;
                    if run.state != RunState::Running {
                        updates.push(RunUpdate {
                            run_id: run.id,
                            state: Some(RunState::Running),
                            started_at: Some(now),
                            node: Some(hostname()),
                            ..Default::default()
                        });
                    }
                    watched.insert(
                        run.id,
                        Watch {
                            wrapper: Some(pid),
                            wrapper_exit: None,
                            pgid: 0,
                            cpus: run.cpus,
                            mem_mb: run.mem_mb,
                            killed: None,
                            hard_killed: false,
                        },
                    );
                }
                Err(e) => updates.push(RunUpdate {
                    run_id: run.id,
                    state: Some(RunState::Failed),
                    reason: Some(format!("cannot start: {e}")),
                    ended_at: Some(now),
                    ..Default::default()
                }),
            }
        }
        engine::EngineJournal::new(config, &mut store, now).record(&updates)?;

        if watched.is_empty() && (signals > 0 || !waiting) && !submitting {
            // Quiet for a moment: a submit may be adding runs right now.
            if signals == 0 {
                std::thread::sleep(Duration::from_millis(300));
                let more = store
                    .open_runs()?
                    .iter()
                    .any(|r| r.executor == ExecutorKind::Local && r.state.in_flight());
                if more {
                    continue;
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = fs::remove_file(dir.join(WORKER_PID));
    tracing::info!("local worker stopped");
    Ok(())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Starts the wrapper of one run (`nfslurm worker job`), with the
/// environment a Slurm job would see, in its own process group so that it
/// outlives this worker. Returns the wrapper's PID.
fn start(config: &Config, exe: &Path, run: &RunRow) -> std::io::Result<i32> {
    if let Some(dir) = run.log_path.parent() {
        fs::create_dir_all(dir)?;
    }
    let work_dir = crate::render::work_dir_for(config, &run.key);
    fs::create_dir_all(&work_dir)?;
    let worker_log = open_append(&config.paths.state_dir.join(WORKER_LOG))?;
    let child = Command::new(exe)
        .args(["worker", "job", "--time-limit"])
        .arg(run.time_limit_s.max(1).to_string())
        .arg("--log")
        .arg(&run.log_path)
        .arg(&run.script_path)
        .current_dir(&config.dir)
        .env("SLURM_JOB_ID", run.id.to_string())
        .env("SLURM_JOB_NAME", run.key.job_name())
        .env("SLURM_CPUS_PER_TASK", run.cpus.to_string())
        .env("SLURM_MEM_PER_NODE", run.mem_mb.to_string())
        .env("SLURM_JOB_NUM_NODES", "1")
        .env("SLURMD_NODENAME", hostname())
        .env("NFSLURM_TOKEN", &run.token)
        .env("NFSLURM_EXECUTOR", "local")
        .env_remove("NFSLURM_FAULT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(worker_log)
        .process_group(0)
        .spawn()?;
    Ok(child.id() as i32)
}

/// Asks the worker to stop: running jobs finish, nothing new starts; with
/// `force` (or asked a second time), running jobs are ended too.
pub fn stop_worker(state_dir: &Path, force: bool) -> Option<i32> {
    let pid = worker_info(state_dir)?.pid;
    if !worker_alive(state_dir) {
        return None;
    }
    signal_worker(pid);
    if force {
        signal_worker(pid);
    }
    Some(pid)
}

/// One SIGTERM to the worker: the first drains it, the second ends its jobs.
pub fn signal_worker(pid: i32) {
    // SAFETY: kill(2) with a PID read from the worker's own PID file, whose
    // lock shows the process is alive.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}
