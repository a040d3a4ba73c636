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
    if let Some(subject) = super::history::subject_target(target) {
        return super::history::show_subject(settings, &subject);
    }
    let config = super::load_config(settings)?;
    let Some(store) = Store::open_existing(&config.paths.state_dir)? else {
        return Err(Failure::user(
            "nothing has run yet",
            Some("run `nfslurm sync` first"),
        ));
    };
    if let Some(code) = super::session_view::try_show(settings, &config, &store, target)? {
        return Ok(code);
    }
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
    let (runs, audit, summaries) = match unit_id {
        Some(id) => (
            store.runs_of_unit(id)?,
            store.audit_of_unit(id)?,
            store.run_summaries(id)?,
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let unit = plan.unit(&key);
    // Why the last attempt failed, at a glance: the end of its log.
    let tail = runs
        .iter()
        .max_by_key(|r| r.id)
        .filter(|r| r.state.is_failure())
        .and_then(|r| output::log_tail(&r.log_path, output::LOG_TAIL_LINES).map(|t| (r, t)));
    if settings.json {
        output::print_json(&json!({
            "unit": key.to_string(),
            "log_tail": tail.as_ref().map(|(_, t)| t),
            "state": unit.map(|u| u.state.as_str()),
            "reason": unit.and_then(|u| u.reason).map(|r| r.as_str()),
            "detail": unit.and_then(|u| u.detail.clone()),
            "runs": runs.iter().map(crate::views::run_json).collect::<Vec<_>>(),
            "summarised_runs": summaries,
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
    if let Some((run, lines)) = &tail {
        println!("  last lines of attempt {}'s log:", run.attempt);
        for line in lines {
            println!("  | {line}");
        }
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
    if !summaries.is_empty() {
        println!();
        println!(
            "{}",
            output::bold("older runs, summarised by `nfslurm clean`")
        );
        for s in &summaries {
            println!(
                "  {} {} · {} to {} · elapsed {}{}",
                s.runs,
                s.state,
                output::local_time(s.first_created_at),
                s.last_ended_at.map_or("-".into(), output::local_time),
                output::duration(s.elapsed_s),
                s.max_rss_mb
                    .map(|m| format!(" · peak MaxRSS {}", output::megabytes(m)))
                    .unwrap_or_default()
            );
        }
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
    if config.executor == crate::config::ExecutorKind::Slurm
        && config.site.scheduler.submission == crate::config::SubmissionMode::Arrays
    {
        print!("{}", render_array(&config, pipeline, participant, session)?);
    }
    Ok(0)
}

/// In arrays mode, what reaches Slurm for the unit: the array job its
/// script runs in, as a submission of every unit of its pipeline would
/// shape it (the unit's script runs inside with `bash`, so the array's
/// `#SBATCH` lines are the ones Slurm reads), or the single job it goes as
/// and why.
pub fn render_array(
    config: &Config,
    pipeline: &str,
    participant: &str,
    session: Option<&str>,
) -> anyhow::Result<String> {
    use crate::executor::slurm::{SlurmExecutor, arrays};
    // Labels were checked by `render_unit`.
    let subject = Label::subject(participant).map_err(|e| Failure::user(e.to_string(), None))?;
    let session = session
        .map(Label::session)
        .transpose()
        .map_err(|e| Failure::user(e.to_string(), None))?;
    let key = UnitKey::new(pipeline, &subject, session.as_ref());
    let (store, snapshot) = super::read_snapshot(config)?;
    let request = Request {
        selection: crate::plan::Selection {
            pipelines: vec![pipeline.to_string()],
            ..Default::default()
        },
        force: true,
    };
    let plan = plan::plan(config, &snapshot, engine::now(), &request);
    let renderer =
        Renderer::new(config).map_err(|e| Failure::user(super::error_chain(&e), None))?;
    let (subs, rendered) =
        engine::preview_submissions(config, store.as_ref(), &plan, &snapshot, &renderer)?;
    let token = "nfslurm-render-preview";
    let name = SlurmExecutor::array_job_name(config, pipeline);
    let cluster = config
        .pipeline(pipeline)
        .and_then(|p| p.scheduler.cluster.clone());
    let command_line = |name: &str, dependency: Option<String>| {
        let mut args = vec![
            "sbatch".to_string(),
            "--parsable".into(),
            format!("--job-name={name}"),
            format!("--comment={token}"),
            "--kill-on-invalid-dep=yes".into(),
        ];
        args.extend(dependency.map(|d| format!("--dependency={d}")));
        args.extend(cluster.as_ref().map(|c| format!("--clusters={c}")));
        args.join(" ")
    };
    let found = plan
        .actions
        .iter()
        .position(|a| a.key == key)
        .and_then(|i| {
            subs.iter()
                .enumerate()
                .find(|(_, s)| s.members.iter().any(|m| m.0 == i))
                .map(|(n, s)| (i, n, s))
        });
    let Some((index, number, sub)) = found else {
        return Ok(format!(
            "#### nfslurm: `{key}` is not a discovered unit of the study: its array cannot be shown\n"
        ));
    };
    if sub.members[0].1.is_none() {
        let r = &rendered[index];
        return Ok(format!(
            "#### nfslurm: in arrays mode `{key}` goes as a single job ({}), with\n#   {} {}\n",
            sub.note.as_deref().unwrap_or("alone"),
            command_line(&key.job_name(), None),
            crate::render::shell_quote(&r.script_path.to_string_lossy())
        ));
    }
    let task = sub
        .members
        .iter()
        .find(|m| m.0 == index)
        .and_then(|m| m.1)
        .unwrap_or(1);
    let tasks: Vec<arrays::Task> = sub
        .members
        .iter()
        .map(|&(i, t)| arrays::Task {
            index: t.unwrap_or(1),
            unit: &plan.actions[i].key,
            script: &rendered[i].script_path,
            log: &rendered[i].log_path,
        })
        .collect();
    let indices: Vec<u32> = tasks.iter().map(|t| t.index).collect();
    let p = config.pipeline(pipeline);
    let dependency = (!sub.after.is_empty()).then(|| {
        format!(
            "aftercorr:{}",
            sub.after
                .iter()
                .map(|a| format!("<job of sbatch call {}>", a + 1))
                .collect::<Vec<_>>()
                .join(":")
        )
    });
    let logs = config
        .paths
        .state_dir
        .join("logs")
        .join("arrays")
        .join(pipeline);
    let script_path = config
        .paths
        .state_dir
        .join("scripts")
        .join("arrays")
        .join(pipeline)
        .join(format!("{token}.sbatch"));
    let header = arrays::ArrayHeader {
        pipeline,
        template: p.map(|p| p.template_name.as_str()).unwrap_or("?"),
        directives: &sub.directives,
        spec: arrays::array_spec(&indices, p.and_then(|p| p.max_concurrent)),
        logs: &logs,
        command_line: format!(
            "{} {}",
            command_line(&name, dependency),
            crate::render::shell_quote(&script_path.to_string_lossy())
        ),
    };
    Ok(format!(
        "#### nfslurm: in arrays mode the script above runs as task {task} of this array job (sbatch call {} of a submission of every `{pipeline}` unit):\n{}",
        number + 1,
        arrays::array_script(&header, &tasks)
    ))
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
