//! `plan`, `submit` and `sync`: the planner's verdict, and acting on it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Failure, SelectionSpec, Settings};
use crate::config::{Config, ExecutorKind};
use crate::engine::{self, SubmittedRun};
use crate::executor::ExecError;
use crate::model::{RunState, UnitKey};
use crate::output;
use crate::plan::{self, Dependency, Plan, Request};
use crate::render::Renderer;
use crate::state::{self, LockGuard, Store};

/// The plan lock: only its holder plans and submits, so nothing is submitted twice.
pub fn plan_lock(config: &Config, wait: bool) -> anyhow::Result<Option<LockGuard>> {
    let dir = &config.paths.state_dir;
    let timeout = if wait {
        Duration::from_secs(60)
    } else {
        Duration::ZERO
    };
    match state::lock_with_timeout(dir, "plan.lock", timeout)? {
        Some(guard) => Ok(Some(guard)),
        None if wait => Err(Failure::user(
            format!(
                "another nfslurm command holds `{}`",
                dir.join("plan.lock").display()
            ),
            Some(
                "wait for it to finish (a sync can take a while on a busy controller), then try again",
            ),
        )),
        None => Ok(None),
    }
}

fn exec_failure(err: ExecError) -> anyhow::Error {
    match err {
        ExecError::Unreachable(msg) => Failure::unreachable(
            msg,
            Some("nothing was left half-done: run the same command again once the cluster answers"),
        ),
        other => other.into(),
    }
}

/// Reconciles the open runs of every executor that has some.
pub fn reconcile_all(
    config: &Config,
    store: &mut Store,
) -> anyhow::Result<Vec<crate::state::RunUpdate>> {
    let executors: HashSet<String> = store.open_runs()?.into_iter().map(|r| r.executor).collect();
    let mut all = Vec::new();
    let mut names: Vec<_> = executors.into_iter().collect();
    names.sort();
    for name in names {
        let mut exec = super::executor_named(config, &name);
        all.extend(
            engine::reconcile(config, store, exec.as_mut(), engine::now()).map_err(exec_failure)?,
        );
    }
    Ok(all)
}

fn dep_keys(plan: &Plan, deps: &[Dependency], store: Option<&Store>) -> Vec<String> {
    deps.iter()
        .map(|d| match d {
            Dependency::Planned(i) => plan.actions[*i].key.to_string(),
            Dependency::InFlight { run_id, job_id } => {
                let key = store
                    .and_then(|s| s.run(*run_id).ok())
                    .map(|r| r.key.to_string())
                    .unwrap_or_else(|| format!("run {run_id}"));
                match job_id {
                    Some(j) => format!("{key} (job {j})"),
                    None => key,
                }
            }
        })
        .collect()
}

pub fn print_plan(settings: &Settings, plan: &Plan, store: Option<&Store>) {
    if settings.json {
        let actions: Vec<_> = plan
            .actions
            .iter()
            .map(|a| {
                json!({
                    "pipeline": a.key.pipeline,
                    "subject": a.key.subject,
                    "session": a.key.session,
                    "reason": a.reason.as_str(),
                    "depends_on": dep_keys(plan, &a.depends_on, store),
                })
            })
            .collect();
        output::print_json(&json!({ "actions": actions }));
        return;
    }
    if plan.actions.is_empty() {
        println!("nothing to do");
    } else {
        let mut table = output::table(&["unit", "reason", "depends on"]);
        for a in &plan.actions {
            table.add_row(vec![
                a.key.to_string(),
                a.reason.to_string(),
                dep_keys(plan, &a.depends_on, store).join(", "),
            ]);
        }
        output::print_table(&table);
        println!("{} units to run", plan.actions.len());
    }
    let waiting: Vec<_> = plan
        .units
        .iter()
        .filter(|u| {
            u.detail.is_some()
                && matches!(
                    u.state,
                    crate::model::UnitState::Blocked
                        | crate::model::UnitState::Retrying
                        | crate::model::UnitState::Failed
                )
                && !u.due
        })
        .collect();
    if !waiting.is_empty() {
        println!("not runnable now:");
        for u in waiting {
            println!(
                "  {} {}: {}",
                u.key,
                output::unit_state(u.state),
                u.detail.as_deref().unwrap_or_default()
            );
        }
    }
}

pub fn run_plan(settings: &Settings, spec: &SelectionSpec, force: bool) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    let (store, snapshot) = super::read_snapshot(&config)?;
    let plan = plan::plan(
        &config,
        &snapshot,
        engine::now(),
        &Request { selection, force },
    );
    print_plan(settings, &plan, store.as_ref());
    Ok(0)
}

/// Submits what the request asks for; returns the rows and whether the cluster was reachable.
fn submit_request(
    config: &Config,
    store: &mut Store,
    request: &Request,
) -> anyhow::Result<(Vec<SubmittedRun>, Option<String>)> {
    let snapshot = store.snapshot()?;

    let plan = plan::plan(config, &snapshot, engine::now(), request);
    if plan.actions.is_empty() {
        return Ok((Vec::new(), None));
    }
    let renderer = Renderer::new(config).map_err(|e| Failure::user(e.to_string(), None))?;
    let mut executor = super::make_executor(config);
    let (rows, outcome) = engine::submit_actions(
        config,
        store,
        executor.as_mut(),
        &plan,
        &snapshot,
        &renderer,
        engine::now(),
    )
    .map_err(|e| match e {
        engine::SubmitError::Exec(x) => exec_failure(x),
        other => anyhow::Error::new(other),
    })?;
    for (run, why) in &outcome.rejected {
        eprintln!("error: run {run} was refused: {why}");
    }
    if outcome.deferred > 0 {
        println!(
            "{} units wait for a later sync: `max_submitted` or `max_concurrent` reached",
            outcome.deferred
        );
    }
    Ok((rows, outcome.unreachable))
}

fn print_submitted(settings: &Settings, rows: &[SubmittedRun]) {
    if settings.json {
        let runs: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"run_id": r.run_id, "pipeline": r.key.pipeline, "subject": r.key.subject,
                       "session": r.key.session, "job_id": r.job_id, "reason": r.reason,
                       "depends_on": r.depends_on})
            })
            .collect();
        output::print_json(&json!({ "submitted": runs }));
        return;
    }
    if settings.quiet {
        return;
    }
    if rows.is_empty() {
        println!("nothing to submit");
        return;
    }
    let mut table = output::table(&["job", "unit", "reason", "after"]);
    for r in rows {
        table.add_row(vec![
            r.job_id.clone().unwrap_or_else(|| "-".into()),
            r.key.to_string(),
            r.reason.clone(),
            r.depends_on.join(","),
        ]);
    }
    output::print_table(&table);
    println!(
        "{} runs submitted",
        rows.iter().filter(|r| r.job_id.is_some()).count()
    );
}

pub fn run_submit(
    settings: &Settings,
    spec: &SelectionSpec,
    force: bool,
    dry_run: bool,
    wait: bool,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    let request = Request { selection, force };
    if dry_run {
        let (store, snapshot) = super::read_snapshot(&config)?;
        let plan = plan::plan(&config, &snapshot, engine::now(), &request);
        print_plan(settings, &plan, store.as_ref());
        return Ok(0);
    }
    let lock = plan_lock(&config, true)?;
    let mut store = super::open_store(&config)?;
    reconcile_all(&config, &mut store)?;
    let (rows, unreachable) = submit_request(&config, &mut store, &request)?;
    drop(lock);
    print_submitted(settings, &rows);
    if let Some(msg) = unreachable {
        return Err(Failure::unreachable(
            msg,
            Some(
                "the runs that reached the cluster are recorded; `nfslurm sync` submits the rest later",
            ),
        ));
    }
    if wait {
        // Follow what was submitted and what of the selection was already in flight.
        let mut ids: Vec<i64> = rows.iter().map(|r| r.run_id).collect();
        for run in store.open_runs()? {
            if request.selection.matches(&run.key) && !ids.contains(&run.id) {
                ids.push(run.id);
            }
        }
        return follow(settings, &config, &mut store, ids);
    }
    Ok(0)
}

/// Follows runs until all have ended (and their retries, when due within the wait).
pub fn follow(
    settings: &Settings,
    config: &Config,
    store: &mut Store,
    ids: Vec<i64>,
) -> anyhow::Result<i32> {
    if ids.is_empty() {
        return Ok(0);
    }
    let total = ids.len() as u64;
    let bar = if settings.quiet || settings.json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    };
    // Slurm: from the site's poll_interval, growing by half while nothing
    // changes, up to 8 times it (squeue and sacct are RPCs on a shared
    // controller). Local: the state is a file here, look often.
    let base = if config.executor == ExecutorKind::Local {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(config.site.scheduler.poll_interval_s.max(1))
    };
    let cap = if config.executor == ExecutorKind::Local {
        base * 2
    } else {
        base * 8
    };
    let mut interval = base;
    let mut last_done = 0;
    loop {
        {
            let _lock = plan_lock(config, true)?;
            reconcile_all(config, store)?;
        }
        let runs = store.runs_by_ids(&ids)?;
        let done = runs.iter().filter(|r| !r.state.in_flight()).count();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &runs {
            *counts.entry(r.state.as_str()).or_default() += 1;
        }
        bar.set_position(done as u64);
        bar.set_message(
            counts
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if done == runs.len() {
            bar.finish_and_clear();
            let failed: Vec<_> = runs
                .iter()
                .filter(|r| r.state != RunState::Succeeded)
                .collect();
            if !settings.quiet && !settings.json {
                println!(
                    "{} of {} runs succeeded",
                    runs.len() - failed.len(),
                    runs.len()
                );
                for r in &failed {
                    println!(
                        "  {} {}: {}",
                        r.key,
                        output::run_state(r.state),
                        r.reason.as_deref().unwrap_or("")
                    );
                }
            }
            return Ok(if failed.is_empty() { 0 } else { 3 });
        }
        // Poll less often while nothing changes, never slower than the site's interval.
        interval = if done == last_done {
            (interval * 3 / 2).min(cap)
        } else {
            base
        };
        last_done = done;
        let until = Instant::now() + interval;
        while Instant::now() < until {
            bar.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What `sync` reports: one line per change.
fn describe_change(key: &UnitKey, row: &state::AuditRow) -> String {
    let old = row.old_state.as_deref().unwrap_or("-");
    format!("{key}: {old} -> {} ({})", row.new_state, row.reason)
}

pub fn run_sync(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let Some(lock) = plan_lock(&config, false)? else {
        if !settings.quiet {
            println!("another sync holds the lock; leaving this one to it");
        }
        return Ok(0);
    };
    let mut store = super::open_store(&config)?;
    let first_audit = store.last_audit_id()?;
    let now = engine::now();
    let (report, changes) = super::discover::discover_and_register(&config, &mut store, now)?;
    let reconciled = reconcile_all(&config, &mut store);
    let (rows, unreachable) = match reconciled {
        Ok(_) => submit_request(&config, &mut store, &Request::default())?,
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    drop(lock);

    let keys = store.unit_keys()?;
    let audit = store.audit_since(first_audit)?;
    if settings.json {
        let changes_json: Vec<_> = audit
            .iter()
            .map(|(_, a)| {
                json!({"unit": a.unit_id.and_then(|u| keys.get(&u)).map(|k| k.to_string()),
                       "scan_id": a.scan_id, "run_id": a.run_id, "old_state": a.old_state,
                       "new_state": a.new_state, "reason": a.reason, "at": output::rfc3339(Some(a.at))})
            })
            .collect();
        output::print_json(&json!({"changes": changes_json, "submitted": rows.len(),
            "unmapped": report.unmapped.len(), "unreachable": unreachable}));
    } else {
        for (_, a) in &audit {
            match (a.unit_id.and_then(|u| keys.get(&u)), &a.scan_id) {
                (Some(key), _) => println!("{}", describe_change(key, a)),
                (None, Some(scan)) => println!("session `{scan}`: {} ({})", a.new_state, a.reason),
                _ => {}
            }
        }
        if !rows.is_empty() && !settings.quiet {
            println!("{} runs submitted", rows.len());
        }
        // Standing conditions are not changes: shown with -v (and by `discover`).
        if settings.verbose > 0 {
            for u in &report.unmapped {
                println!(
                    "unmapped session folder `{}`: add it to the mapping CSV",
                    u.scan_id
                );
            }
            for p in &report.problems {
                println!("mapping: {p}");
            }
        }
        let _ = changes;
    }
    if let Some(msg) = unreachable {
        return Err(Failure::unreachable(
            msg,
            Some("state is unchanged for what could not be checked; the next sync picks it up"),
        ));
    }
    Ok(0)
}
