//! The local executor: the same rendered scripts, run with `bash` on this
//! machine by a background worker (`nfslurm worker`), in dependency order and
//! within the configured CPUs and memory.
//!
//! `submit` records runs as `pending` and makes sure a worker is running; the
//! worker is the only process that starts local jobs. It holds
//! `<state_dir>/worker.lock` for its lifetime, so "is a worker alive" is a
//! lock test, immune to PID reuse; it exits on its own when nothing is left.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine;
use crate::executor::{CANCELLED_BY_US, ExecError, Executor, Prepared, SubmitOutcome};
use crate::model::RunState;
use crate::state::{self, RunRow, RunUpdate, Store};

pub const WORKER_LOCK: &str = "worker.lock";
pub const WORKER_PID: &str = "worker.pid";
/// Why a run the worker was running is `lost` when the worker is gone.
const WORKER_GONE: &str = "the local worker stopped while the job ran";

/// Signals received by the worker (SIGINT/SIGTERM): 1 = finish running jobs
/// and stop, 2 or more = kill them too.
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

/// The worker's PID and start time, from its PID file.
pub fn worker_info(state_dir: &Path) -> Option<(i32, i64)> {
    let text = fs::read_to_string(state_dir.join(WORKER_PID)).ok()?;
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Starts a detached worker for this config unless one is alive.
pub fn ensure_worker(config: &Config) -> Result<bool, ExecError> {
    let dir = &config.paths.state_dir;
    if worker_alive(dir) {
        return Ok(false);
    }
    let exe = std::env::current_exe()
        .map_err(|e| ExecError::Other(format!("cannot find the nfslurm binary: {e}")))?;
    let log = open_append(&dir.join("worker.log"))
        .map_err(|e| ExecError::Other(format!("cannot open the worker log: {e}")))?;
    let log2 = log
        .try_clone()
        .map_err(|e| ExecError::Other(e.to_string()))?;
    Command::new(exe)
        .arg("--config")
        .arg(&config.file)
        .args(["worker", "run"])
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
    state_dir: PathBuf,
    config: Config,
    /// Start a worker after submitting (off in tests that drive the worker).
    pub autostart: bool,
}

impl LocalExecutor {
    pub fn new(config: &Config) -> LocalExecutor {
        LocalExecutor {
            state_dir: config.paths.state_dir.clone(),
            config: config.clone(),
            autostart: true,
        }
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn reconcile(
        &mut self,
        _store: &Store,
        open: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        if worker_alive(&self.state_dir) {
            return Ok(Vec::new());
        }
        // No worker: a run it was running has no one to finish it.
        let mut updates = Vec::new();
        let mut pending = false;
        for run in open {
            match run.state {
                RunState::Running => {
                    updates.push(RunUpdate::ended(run.id, RunState::Lost, WORKER_GONE, now))
                }
                RunState::Submitting => updates.push(RunUpdate {
                    run_id: run.id,
                    state: Some(RunState::Pending),
                    job_id: Some(run.id.to_string()),
                    ..Default::default()
                }),
                _ => pending = true,
            }
        }
        if (pending || !updates.is_empty()) && self.autostart {
            ensure_worker(&self.config)?;
        }
        Ok(updates)
    }

    fn submit(
        &mut self,
        store: &mut Store,
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
        store.apply(&updates, &[], now)?;
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
            if run.state == RunState::Running
                && let Some(pid) = run.pid
            {
                // SAFETY: plain kill(2) of the job's process group.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGTERM);
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

/// One job the worker started.
struct Child {
    pid: i32,
    started: Instant,
    started_at: i64,
    time_limit: Duration,
    cpus: u32,
    mem_mb: u64,
    timed_out: bool,
}

/// Outcome of a finished child: (state, exit code, max RSS MB).
fn reap(pid: i32) -> Option<(i32, i64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    if r != pid {
        return None;
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    };
    // ru_maxrss is in kilobytes on Linux.
    Some((code, usage.ru_maxrss / 1024))
}

/// The worker: starts pending local runs whose dependencies succeeded, within
/// the CPU and memory limits, until nothing is left or it is told to stop.
pub fn run_worker(config: &Config) -> anyhow::Result<()> {
    let dir = &config.paths.state_dir;
    let Some(_lock) = state::try_lock(dir, WORKER_LOCK)? else {
        println!("a worker is already running for this study");
        return Ok(());
    };
    install_signal_handlers();
    fs::write(
        dir.join(WORKER_PID),
        format!("{} {}\n", std::process::id(), engine::now()),
    )?;
    let mut store = Store::open(dir)?;
    let limits = &config.local;
    let mut children: HashMap<i64, Child> = HashMap::new();
    tracing::info!(
        cpus = limits.cpus,
        mem_mb = limits.mem_mb,
        "local worker started"
    );

    // Runs marked running by a worker that died are lost (retried as infra).
    let now = engine::now();
    let orphans: Vec<RunUpdate> = store
        .open_runs()?
        .into_iter()
        .filter(|r| r.executor == "local" && r.state == RunState::Running)
        .map(|r| RunUpdate::ended(r.id, RunState::Lost, WORKER_GONE, now))
        .collect();
    engine::apply_updates(config, &mut store, &orphans, now)?;

    loop {
        let signals = STOP_SIGNALS.load(Ordering::SeqCst);
        let now = engine::now();
        let mut updates = Vec::new();

        // Finished or overdue children.
        let mut finished = Vec::new();
        for (&run_id, child) in children.iter_mut() {
            if (child.started.elapsed() > child.time_limit || signals >= 2) && !child.timed_out {
                child.timed_out = child.started.elapsed() > child.time_limit;
                // SAFETY: kill(2) of the job's own process group.
                unsafe {
                    libc::kill(-child.pid, libc::SIGTERM);
                }
            }
            if let Some((code, rss)) = reap(child.pid) {
                let state = if child.timed_out {
                    RunState::Timeout
                } else if signals >= 2 {
                    RunState::InfraFailed
                } else if code == 0 {
                    RunState::Succeeded
                } else {
                    RunState::Failed
                };
                let reason = match state {
                    RunState::Timeout => Some(format!(
                        "time limit {} reached",
                        crate::config::format_slurm_time(child.time_limit.as_secs())
                    )),
                    RunState::InfraFailed => Some("killed: the local worker was stopped".into()),
                    RunState::Failed => Some(format!("exit code {code}")),
                    _ => None,
                };
                updates.push(RunUpdate {
                    run_id,
                    state: Some(state),
                    exit_code: Some(code),
                    reason,
                    ended_at: Some(now),
                    elapsed_s: Some(now - child.started_at),
                    max_rss_mb: Some(rss),
                    ..Default::default()
                });
                finished.push(run_id);
            }
        }
        for id in &finished {
            children.remove(id);
        }
        // A job killed by `nfslurm cancel` is already recorded `cancelled`: keep it so.
        if !finished.is_empty() {
            let cancelled: Vec<i64> = store
                .runs_by_ids(&finished)?
                .into_iter()
                .filter(|r| r.state == RunState::Cancelled)
                .map(|r| r.id)
                .collect();
            updates.retain(|u| !cancelled.contains(&u.run_id));
        }

        // Pending runs: start, wait, or fail for their upstream.
        let open: Vec<RunRow> = store
            .open_runs()?
            .into_iter()
            .filter(|r| r.executor == "local")
            .collect();
        let pending: Vec<&RunRow> = open
            .iter()
            .filter(|r| r.state == RunState::Pending && !children.contains_key(&r.id))
            .collect();
        let dep_ids: Vec<i64> = pending
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
        let mut used_cpus: u32 = children.values().map(|c| c.cpus).sum();
        let mut used_mem: u64 = children.values().map(|c| c.mem_mb).sum();
        for run in &pending {
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
            if !ready || signals > 0 {
                continue;
            }
            let fits = (used_cpus + run.cpus <= limits.cpus
                && used_mem + run.mem_mb <= limits.mem_mb)
                || children.is_empty();
            if !fits {
                continue;
            }
            match start(config, run) {
                Ok(child) => {
                    used_cpus += child.cpus;
                    used_mem += child.mem_mb;
                    updates.push(RunUpdate {
                        run_id: run.id,
                        state: Some(RunState::Running),
                        started_at: Some(child.started_at),
                        node: Some(hostname()),
                        pid: Some(child.pid as i64),
                        ..Default::default()
                    });
                    children.insert(run.id, child);
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
        engine::apply_updates(config, &mut store, &updates, now)?;

        let waiting = pending.len()
            > updates
                .iter()
                .filter(|u| u.state == Some(RunState::UpstreamFailed))
                .count();
        if children.is_empty() && (signals > 0 || !waiting) {
            // Quiet for a moment: a submit may be adding runs right now.
            if signals == 0 && !waiting {
                std::thread::sleep(Duration::from_millis(300));
                let more = store
                    .open_runs()?
                    .iter()
                    .any(|r| r.executor == "local" && r.state == RunState::Pending);
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

/// Starts one run's script with the environment a Slurm job would see.
fn start(config: &Config, run: &RunRow) -> std::io::Result<Child> {
    if let Some(dir) = run.log_path.parent() {
        fs::create_dir_all(dir)?;
    }
    let log = open_append(&run.log_path)?;
    let log2 = log.try_clone()?;
    let work_dir = crate::render::work_dir_for(config, &run.key);
    fs::create_dir_all(&work_dir)?;
    let child = Command::new("bash")
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
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()?;
    Ok(Child {
        pid: child.id() as i32,
        started: Instant::now(),
        started_at: engine::now(),
        time_limit: Duration::from_secs(run.time_limit_s.max(1)),
        cpus: run.cpus,
        mem_mb: run.mem_mb,
        timed_out: false,
    })
}

/// Asks the worker to stop: running jobs finish, nothing new starts.
pub fn stop_worker(state_dir: &Path, force: bool) -> Option<i32> {
    let (pid, _) = worker_info(state_dir)?;
    if !worker_alive(state_dir) {
        return None;
    }
    // SAFETY: kill(2) with a PID read from the worker's own PID file, whose
    // lock shows the process is alive.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        if force {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    Some(pid)
}
