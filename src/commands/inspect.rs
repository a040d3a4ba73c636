//! `show`, `logs` and `render`: looking at one unit or run.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use serde_json::json;

use super::{Failure, Settings};
use crate::config::Config;
use crate::engine;
use crate::model::{Label, RunState, UnitKey};
use crate::output;
use crate::plan::{self, Request};
use crate::render::{Renderer, ScriptInput};
use crate::state::{RunRow, Store};

/// A run named by `run:N`, a job ID, or a unit key (its last run).
pub fn find_run(store: &Store, target: &str) -> anyhow::Result<RunRow> {
    if let Some(id) = target
        .strip_prefix("run:")
        .and_then(|n| n.parse::<i64>().ok())
    {
        return store.run(id).map_err(|_| {
            Failure::user(
                format!("no run {id}"),
                Some("`nfslurm status runs` lists them"),
            )
        });
    }
    if let Some(run) = store.run_by_job_id(target)? {
        return Ok(run);
    }
    if let Some(key) = UnitKey::parse(target)
        && let Some(unit_id) = store.unit_id(&key)?
        && let Some(run) = store.runs_of_unit(unit_id)?.pop()
    {
        return Ok(run);
    }
    Err(Failure::user(
        format!("`{target}` is not a known job ID, `run:N` or unit"),
        Some("units are written `pipeline/sub-01[/ses-1]`; `nfslurm status runs` lists job IDs"),
    ))
}

pub fn show(settings: &Settings, target: &str) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let Some(store) = Store::open_existing(&config.paths.state_dir)? else {
        return Err(Failure::user(
            "nothing has run yet",
            Some("run `nfslurm sync` first"),
        ));
    };
    let snapshot = store.snapshot()?;
    let plan = plan::plan(&config, &snapshot, engine::now(), &Request::default());
    let (key, unit_id) = match UnitKey::parse(target) {
        Some(k) if store.unit_id(&k)?.is_some() || plan.unit(&k).is_some() => {
            // A registered unit that never ran has no row yet: shown all the same.
            let id = store.unit_id(&k)?;
            (k, id)
        }
        _ => {
            let run = find_run(&store, target)?;
            (run.key.clone(), Some(run.unit_id))
        }
    };
    let (runs, audit) = match unit_id {
        Some(id) => (store.runs_of_unit(id)?, store.audit_of_unit(id)?),
        None => (Vec::new(), Vec::new()),
    };
    let unit = plan.unit(&key);
    if settings.json {
        output::print_json(&json!({
            "unit": key.to_string(),
            "state": unit.map(|u| u.state.as_str()),
            "reason": unit.and_then(|u| u.reason).map(|r| r.as_str()),
            "detail": unit.and_then(|u| u.detail.clone()),
            "runs": runs.iter().map(super::status::run_json).collect::<Vec<_>>(),
            "audit": audit.iter().map(|a| json!({"at": output::rfc3339(Some(a.at)), "run_id": a.run_id,
                "old_state": a.old_state, "new_state": a.new_state, "reason": a.reason})).collect::<Vec<_>>(),
        }));
        return Ok(0);
    }
    println!("{}", output::bold(&key.to_string()));
    if let Some(u) = unit {
        let mut line = format!("state: {}", output::unit_state(u.state));
        if let Some(r) = u.reason {
            line.push_str(&format!(" ({r})"));
        }
        println!("{line}");
        if let Some(d) = &u.detail {
            println!("  {d}");
        }
    }
    if runs.is_empty() {
        println!("no run yet: `nfslurm plan` says when it will run");
    }
    for r in &runs {
        println!();
        println!(
            "attempt {} · job {} · {}{}",
            r.attempt,
            r.job_id.as_deref().unwrap_or("-"),
            output::run_state(r.state),
            r.slurm_state
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
        println!(
            "  requested {}, {} memory, {} · reason: {}",
            output::count(r.cpus as usize, "CPU", "CPUs"),
            output::megabytes(r.mem_mb as i64),
            crate::config::format_slurm_time(r.time_limit_s),
            r.plan_reason
        );
        let mut times = Vec::new();
        if let Some(t) = r.submitted_at {
            times.push(format!("submitted {}", output::local_time(t)));
        }
        if let Some(t) = r.started_at {
            times.push(format!("started {}", output::local_time(t)));
        }
        if let Some(t) = r.ended_at {
            times.push(format!("ended {}", output::local_time(t)));
        }
        if !times.is_empty() {
            println!("  {}", times.join(" · "));
        }
        let mut facts = Vec::new();
        if let Some(n) = &r.node {
            facts.push(format!("node {n}"));
        }
        if let Some(e) = r.elapsed_s {
            facts.push(format!("elapsed {}", output::duration(e)));
        }
        if let Some(m) = r.max_rss_mb {
            facts.push(format!("MaxRSS {}", output::megabytes(m)));
        }
        if let Some(c) = r.exit_code {
            facts.push(format!("exit {c}"));
        }
        if let Some(reason) = &r.reason {
            facts.push(reason.clone());
        }
        if !facts.is_empty() {
            println!("  {}", facts.join(" · "));
        }
        println!("  script {}", super::display_path(&r.script_path));
        println!("  log    {}", super::display_path(&r.log_path));
    }
    if !audit.is_empty() {
        println!();
        println!("{}", output::bold("audit"));
        for a in &audit {
            println!(
                "  {}  {} -> {}  {}",
                output::local_time(a.at),
                a.old_state.as_deref().unwrap_or("-"),
                a.new_state,
                a.reason
            );
        }
    }
    Ok(0)
}

pub fn logs(settings: &Settings, target: &str, follow: bool) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let Some(store) = Store::open_existing(&config.paths.state_dir)? else {
        return Err(Failure::user(
            "nothing has run yet",
            Some("run `nfslurm sync` first"),
        ));
    };
    if let Some(key) = UnitKey::parse(target)
        && store.unit_id(&key)?.is_none_or(|id| {
            store
                .runs_of_unit(id)
                .map(|runs| runs.is_empty())
                .unwrap_or(false)
        })
    {
        let snapshot = store.snapshot()?;
        let plan = plan::plan(&config, &snapshot, engine::now(), &Request::default());
        if let Some(unit) = plan.unit(&key) {
            // A registered unit that never ran: no log, and that is no error.
            let why = unit.reason.map(|r| format!(", {r}")).unwrap_or_default();
            eprintln!(
                "`{key}` has not run yet ({}{why}): no log to show",
                unit.state.as_str()
            );
            return Ok(0);
        }
    }
    let run = find_run(&store, target)?;
    let path = &run.log_path;
    let mut out = std::io::stdout();
    let mut offset = 0u64;
    loop {
        match std::fs::File::open(path) {
            Ok(mut file) => {
                file.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                file.read_to_end(&mut buf)?;
                offset += buf.len() as u64;
                out.write_all(&buf)?;
                out.flush()?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = store.run(run.id)?;
                let state = now.state;
                let shown = super::display_path(path);
                match state {
                    RunState::Submitting | RunState::Pending if !follow => {
                        return Err(Failure::user(
                            format!("`{}` does not exist yet", path.display()),
                            Some("the job has not started; try `--follow`"),
                        ));
                    }
                    RunState::Running if !follow => {
                        return Err(Failure::user(
                            format!(
                                "`{shown}` does not exist: run {} is running, and its node has not written it yet, or it was deleted",
                                run.id
                            ),
                            Some("try `--follow`, which waits for it"),
                        ));
                    }
                    // In flight: `--follow` waits for the file.
                    _ if state.in_flight() => {}
                    _ if offset > 0 => {}
                    _ if now.started_at.is_none() => {
                        return Err(Failure::user(
                            format!(
                                "run {} (`{}`, attempt {}) ended `{}` before it started: it has no log",
                                run.id,
                                run.key,
                                run.attempt,
                                state.as_str()
                            ),
                            Some(&format!("`nfslurm show {}` tells why", run.key)),
                        ));
                    }
                    _ => {
                        // It started, so it wrote this log: someone removed it.
                        return Err(Failure::user(
                            format!(
                                "the log of run {} (`{}`, attempt {}, {}) was deleted or moved: `{shown}` does not exist",
                                run.id,
                                run.key,
                                run.attempt,
                                state.as_str(),
                            ),
                            Some(&format!(
                                "its state, exit code and times are in `nfslurm show {}`",
                                run.key
                            )),
                        ));
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        if !follow {
            return Ok(0);
        }
        let state = store.run(run.id)?.state;
        if !state.in_flight() {
            // One last read after the end, then stop.
            if let Ok(mut file) = std::fs::File::open(path) {
                file.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::new();
                file.read_to_end(&mut buf)?;
                out.write_all(&buf)?;
            }
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn render(
    settings: &Settings,
    pipeline: &str,
    participant: &str,
    session: Option<&str>,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    print!("{}", render_unit(&config, pipeline, participant, session)?);
    Ok(0)
}

/// The script `submit` would write for one unit, as text.
pub fn render_unit(
    config: &Config,
    pipeline: &str,
    participant: &str,
    session: Option<&str>,
) -> anyhow::Result<String> {
    let Some(p) = config.pipeline(pipeline) else {
        let names: Vec<&str> = config.pipelines.iter().map(|p| p.name.as_str()).collect();
        return Err(Failure::user(
            format!("`--pipeline {pipeline}`: no such pipeline"),
            Some(&format!("pipelines: {}", names.join(", "))),
        ));
    };
    let subject = Label::subject(participant)
        .map_err(|e| Failure::user(format!("`--participant`: {e}"), None))?;
    let session = session
        .map(Label::session)
        .transpose()
        .map_err(|e| Failure::user(format!("`--session`: {e}"), None))?;
    match (p.level, &session) {
        (crate::model::Level::Session, None) => {
            return Err(Failure::user(
                format!("`{pipeline}` runs per session: add `--session`"),
                None,
            ));
        }
        (crate::model::Level::Subject, Some(_)) => {
            return Err(Failure::user(
                format!("`{pipeline}` runs per subject: drop `--session`"),
                None,
            ));
        }
        _ => {}
    }
    let key = UnitKey::new(pipeline, &subject, session.as_ref());
    let (store, snapshot) = super::read_snapshot(config)?;
    let sessions = engine::session_infos(&snapshot);
    let mut subject_sessions = sessions.get(&subject).cloned().unwrap_or_default();
    if let Some(ses) = &session
        && !subject_sessions.iter().any(|s| &s.label == ses)
    {
        // Not discovered yet: render with a placeholder folder so the script can be read.
        subject_sessions.push(crate::render::SessionInfo {
            label: ses.clone(),
            scan_id: format!("{subject}_{ses}"),
            dicom_dir: config.paths.dicom_root.join(format!("{subject}_{ses}")),
        });
    }
    let session_info = session
        .as_ref()
        .and_then(|ses| subject_sessions.iter().find(|s| &s.label == ses))
        .cloned();
    let attempt = match (
        &store,
        store.as_ref().and_then(|s| s.unit_id(&key).ok().flatten()),
    ) {
        (Some(s), Some(id)) => s.runs_of_unit(id)?.len() as u32 + 1,
        _ => 1,
    };
    let resources = engine::effective_resources(config, &snapshot, &key);
    let log = engine::logs_dir(config, &key).join(format!("attempt-{attempt}.out"));
    let work_dir = crate::render::work_dir_for(config, &key);
    let renderer =
        Renderer::new(config).map_err(|e| Failure::user(super::error_chain(&e), None))?;
    let input = ScriptInput {
        config,
        pipeline: p,
        unit: &key,
        session: session_info.as_ref(),
        subject_sessions: &subject_sessions,
        resources: &resources,
        attempt,
        token: "nfslurm-render-preview",
        output_path: &log,
        work_dir: &work_dir,
        executor: config.executor,
    };
    renderer
        .render_script(&input)
        .map_err(|e| Failure::user(format!("{e:#}"), None))
}
