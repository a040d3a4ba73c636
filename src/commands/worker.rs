//! `nfslurm worker start|stop|restart|status|run`: the local executor's
//! background worker.
//!
//! Stopping never loses a run: a job still running when the worker is told
//! to end it is ended by signals to its process group (SIGTERM, then SIGKILL
//! after [`local::STOP_KILL_GRACE`]), and its wrapper writes how it ended, so
//! the run is recorded `infra_failed` (run again at once, without spending an
//! attempt); runs that had not started stay `pending` for the next worker.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Settings, display_path, json_path};
use crate::engine;
use crate::executor::local::{self, JobFiles, Probe, procfs};
use crate::model::RunState;
use crate::output;
use crate::state::{RunRow, Store};

/// How `worker stop` ends running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Running jobs finish; nothing new starts.
    Drain,
    /// Running jobs get this many seconds, then are ended.
    Timeout(u64),
}

fn local_runs(dir: &Path) -> anyhow::Result<Vec<RunRow>> {
    Ok(match Store::open_existing(dir)? {
        Some(store) => store
            .open_runs()?
            .into_iter()
            .filter(|r| r.executor == crate::config::ExecutorKind::Local)
            .collect(),
        None => Vec::new(),
    })
}

pub fn start(settings: &Settings, jobs: Option<u32>) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let dir = &config.paths.state_dir;
    if local::worker_alive(dir) {
        let pid = local::worker_info(dir).map(|i| i.pid).unwrap_or(0);
        println!("worker already running (pid {pid})");
        if jobs.is_some() {
            eprintln!(
                "hint: `nfslurm worker restart -j N` starts it again with another slot count"
            );
        }
        return Ok(0);
    }
    let queued = local_runs(dir)?;
    if queued.is_empty() {
        println!("nothing queued for the local worker: not started");
        println!("hint: `nfslurm submit --executor local` queues runs and starts the worker");
        return Ok(0);
    }
    local::spawn_worker(&config, jobs)?;
    let slots = local::worker_info(dir).map_or(0, |i| i.slots);
    println!(
        "worker started: {} runs queued, {slots} at once; log `{}`",
        queued.len(),
        display_path(&dir.join(local::WORKER_LOG))
    );
    Ok(0)
}

pub fn stop(settings: &Settings, mode: StopMode) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    stop_in(&config.paths.state_dir, mode)?;
    Ok(0)
}

/// Stops the worker of `dir` and waits until it is gone; prints what became
/// of its runs. Returns whether one was running.
fn stop_in(dir: &Path, mode: StopMode) -> anyhow::Result<bool> {
    let running_before: Vec<i64> = local_runs(dir)?
        .iter()
        .filter(|r| r.state == RunState::Running)
        .map(|r| r.id)
        .collect();
    let Some(pid) = local::stop_worker(dir, mode == StopMode::Timeout(0)) else {
        println!("no worker is running");
        return Ok(false);
    };
    match mode {
        StopMode::Drain => {
            println!(
                "stopping worker {pid}: {} running jobs finish, nothing new starts",
                running_before.len()
            );
            if !running_before.is_empty() {
                println!(
                    "  waiting for them (Ctrl-C stops waiting, the worker still drains; \
                     `nfslurm worker stop --now` ends them)"
                );
            }
        }
        StopMode::Timeout(0) => println!(
            "stopping worker {pid}: ending {} running jobs now (SIGTERM, SIGKILL after {}s)",
            running_before.len(),
            local::STOP_KILL_GRACE.as_secs()
        ),
        StopMode::Timeout(s) => println!(
            "stopping worker {pid}: running jobs have {s}s to finish, then are ended \
             (SIGTERM, SIGKILL after {}s)",
            local::STOP_KILL_GRACE.as_secs()
        ),
    }
    let start = Instant::now();
    let mut escalated = mode == StopMode::Timeout(0);
    while local::worker_alive(dir) {
        if let StopMode::Timeout(s) = mode
            && !escalated
            && start.elapsed() >= Duration::from_secs(s)
        {
            escalated = true;
            local::signal_worker(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // What became of the jobs that were running.
    if let Some(store) = Store::open_existing(dir)? {
        let runs = store.runs_by_ids(&running_before)?;
        let killed = runs
            .iter()
            .filter(|r| r.state == RunState::InfraFailed)
            .count();
        let finished = runs.len() - killed;
        let queued = local_runs(dir)?.len();
        println!("worker {pid} stopped");
        if !runs.is_empty() {
            println!(
                "  {finished} jobs finished; {killed} ended (recorded `infra_failed`, \
                 run again without spending an attempt)"
            );
        }
        if queued > 0 {
            println!("  {queued} runs stay queued: `nfslurm worker start` runs them");
        }
    } else {
        println!("worker {pid} stopped");
    }
    Ok(true)
}

pub fn restart(settings: &Settings, mode: StopMode, jobs: Option<u32>) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    stop_in(&config.paths.state_dir, mode)?;
    start(settings, jobs)
}

/// A running job as `worker status` shows it.
#[derive(Debug, serde::Serialize)]
struct JobView {
    run_id: i64,
    unit: String,
    pgid: i32,
    elapsed_s: Option<i64>,
    #[serde(flatten)]
    usage: procfs::Usage,
}

pub fn status(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let dir = &config.paths.state_dir;
    let alive = local::worker_alive(dir);
    let info = local::worker_info(dir).filter(|_| alive);
    let runs = local_runs(dir)?;
    let now = engine::now();
    let mut jobs = Vec::new();
    for run in runs.iter().filter(|r| r.state == RunState::Running) {
        if let Ok(Probe::Running(pgid)) = JobFiles::of_log(&run.log_path).probe()
            && pgid > 0
        {
            jobs.push(JobView {
                run_id: run.id,
                unit: run.key.to_string(),
                pgid,
                elapsed_s: run.started_at.map(|s| now - s),
                usage: procfs::group_usage(pgid),
            });
        }
    }
    let queued = runs.iter().filter(|r| r.state != RunState::Running).count();
    let slots_total = info.map_or(config.local.slots, |i| {
        if i.slots > 0 {
            i.slots
        } else {
            config.local.slots
        }
    });
    let worker_usage = info.and_then(|i| procfs::process_usage(i.pid));
    let log = dir.join(local::WORKER_LOG);
    if settings.json {
        output::print_json(&json!({
            "running": alive,
            "pid": info.map(|i| i.pid),
            "uptime_s": info.map(|i| now - i.since),
            "cpu_s": worker_usage.map(|u| u.cpu_s),
            "rss_mb": worker_usage.map(|u| u.rss_mb),
            "slots_used": jobs.len(),
            "slots_total": slots_total,
            "queued": queued,
            "jobs_running": jobs.len(),
            "jobs": jobs,
            "state_dir": json_path(dir),
            "log": json_path(&log),
        }));
        return Ok(0);
    }
    match info {
        Some(i) => {
            println!(
                "worker running: pid {}, up {}, cpu {}, memory {}",
                i.pid,
                output::duration(now - i.since),
                cpu_text(worker_usage.map_or(0.0, |u| u.cpu_s)),
                output::megabytes(worker_usage.map_or(0, |u| u.rss_mb as i64))
            );
            println!(
                "slots: {} of {slots_total} used; {queued} runs queued",
                jobs.len()
            );
        }
        None if queued > 0 => {
            println!("no worker running; {queued} runs queued");
            println!("hint: `nfslurm worker start` runs them");
        }
        None => println!("no worker running; nothing queued"),
    }
    if !jobs.is_empty() {
        let mut table = output::table(&["RUN", "UNIT", "PGID", "ELAPSED", "CPU", "MEM", "PROCS"]);
        for j in &jobs {
            table.add_row(vec![
                j.run_id.to_string(),
                output::escape_controls(&j.unit).into_owned(),
                j.pgid.to_string(),
                j.elapsed_s.map_or("-".into(), output::duration),
                cpu_text(j.usage.cpu_s),
                output::megabytes(j.usage.rss_mb as i64),
                j.usage.processes.to_string(),
            ]);
        }
        output::print_table(&table);
    }
    println!("state dir: `{}`", display_path(dir));
    println!("log: `{}`", display_path(&log));
    Ok(0)
}

fn cpu_text(secs: f64) -> String {
    format!("{secs:.1}s")
}

pub fn run(settings: &Settings, jobs: Option<u32>) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    local::run_worker(&config, jobs)?;
    Ok(0)
}

/// `worker job`: runs one local job under its lock (no config needed: the
/// worker passed everything).
pub fn job(spec: local::JobSpec) -> anyhow::Result<i32> {
    Ok(local::run_job(&spec)?)
}
