//! `nfslurm worker start|stop|status|run`: the local executor's background worker.

use serde_json::json;

use super::Settings;
use crate::engine;
use crate::executor::local;
use crate::output;

pub fn start(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    if local::ensure_worker(&config)? {
        println!("worker started");
    } else {
        println!("worker already running");
    }
    Ok(0)
}

pub fn stop(settings: &Settings, now: bool) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let dir = &config.paths.state_dir;
    match local::stop_worker(dir, now) {
        None => println!("no worker is running"),
        Some(pid) => {
            let start = std::time::Instant::now();
            while local::worker_alive(dir) {
                if start.elapsed().as_secs() > 3600 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            println!("worker {pid} stopped");
        }
    }
    Ok(0)
}

pub fn status(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let dir = &config.paths.state_dir;
    let alive = local::worker_alive(dir);
    let info = local::worker_info(dir).filter(|_| alive);
    let (queued, running) = match crate::state::Store::open_existing(dir)? {
        Some(store) => {
            let open = store.open_runs()?;
            let local: Vec<_> = open
                .iter()
                .filter(|r| r.executor == crate::config::ExecutorKind::Local)
                .collect();
            (
                local
                    .iter()
                    .filter(|r| !matches!(r.state, crate::model::RunState::Running))
                    .count(),
                local
                    .iter()
                    .filter(|r| matches!(r.state, crate::model::RunState::Running))
                    .count(),
            )
        }
        None => (0, 0),
    };
    if settings.json {
        output::print_json(&json!({"running": alive, "pid": info.map(|i| i.0),
            "uptime_s": info.map(|i| engine::now() - i.1), "queued": queued, "jobs_running": running}));
        return Ok(0);
    }
    match info {
        Some((pid, since)) => println!(
            "worker running: pid {pid}, up {}, {running} jobs running, {queued} queued",
            output::duration(engine::now() - since)
        ),
        None => println!("no worker running; {queued} runs queued"),
    }
    Ok(0)
}

pub fn run(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    local::run_worker(&config)?;
    Ok(0)
}

/// `worker job`: runs one local job under its lock (no config needed: the
/// worker passed everything).
pub fn job(spec: local::JobSpec) -> anyhow::Result<i32> {
    Ok(local::run_job(&spec)?)
}
