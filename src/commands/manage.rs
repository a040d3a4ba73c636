//! `cancel` and `retry`: the user's hand on the failure policy.

use std::collections::HashSet;

use super::{Failure, SelectionSpec, Settings};
use crate::engine;
use crate::model::UnitState;
use crate::plan::{self, Request};
use crate::state::{RunRow, UnitUpdate};

/// Runs named on the command line plus open runs matching the selection.
fn selected_runs(
    store: &crate::state::Store,
    runs: &[String],
    selection: Option<&crate::plan::Selection>,
) -> anyhow::Result<Vec<RunRow>> {
    let mut out: Vec<RunRow> = Vec::new();
    for r in runs {
        out.push(super::inspect::find_run(store, r)?);
    }
    if let Some(sel) = selection {
        out.extend(
            store
                .open_runs()?
                .into_iter()
                .filter(|r| sel.matches(&r.key)),
        );
    }
    let mut seen = HashSet::new();
    out.retain(|r| seen.insert(r.id));
    Ok(out)
}

pub fn cancel(
    settings: &Settings,
    runs: &[String],
    spec: &SelectionSpec,
    all: bool,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    if runs.is_empty() && selection.is_all() && !all {
        return Err(Failure::user(
            "say what to cancel: job IDs, or selection flags",
            Some("`nfslurm cancel --all` cancels every unit of the study that is not done"),
        ));
    }
    let _lock = super::submit::plan_lock(&config, true)?;
    let mut store = super::open_store(&config)?;
    let sel = (!selection.is_all() || all).then_some(&selection);
    let targets = selected_runs(&store, runs, sel)?;
    // With a selection (or `--all`), every unit it names stops until `retry`,
    // not only those with a run in flight: a waiting unit must not be
    // submitted by the next sync either. Done and invalid units stay as they are.
    let mut idle: Vec<(crate::model::UnitKey, UnitState)> = Vec::new();
    if let Some(sel) = sel {
        let snapshot = store.snapshot()?;
        let plan = plan::plan(&config, &snapshot, engine::now(), &Request::default());
        idle = plan
            .units
            .iter()
            .filter(|u| sel.matches(&u.key))
            .filter(|u| {
                !matches!(
                    u.state,
                    UnitState::Done
                        | UnitState::Invalid
                        | UnitState::Disabled
                        | UnitState::Cancelled
                        | UnitState::Queued
                        | UnitState::Running
                )
            })
            .map(|u| (u.key.clone(), u.state))
            .collect();
    }
    let open: Vec<RunRow> = targets
        .iter()
        .filter(|r| r.state.in_flight())
        .cloned()
        .collect();
    let now = engine::now();
    let mut updates = Vec::new();
    let mut by_exec: Vec<(crate::config::ExecutorKind, Vec<RunRow>)> = Vec::new();
    for r in open {
        match by_exec.iter_mut().find(|(k, _)| *k == r.executor) {
            Some((_, list)) => list.push(r),
            None => by_exec.push((r.executor, vec![r])),
        }
    }
    for (kind, list) in by_exec {
        let mut exec = super::executor_of(&config, kind);
        updates.extend(exec.cancel(&store, &list, now).map_err(|e| match e {
            crate::executor::ExecError::Unreachable(m) => {
                Failure::unreachable(m, Some("nothing was marked cancelled; try again"))
            }
            other => other.into(),
        })?);
    }
    // Units stay cancelled until `retry`, whatever state their last run had.
    let mut units: Vec<UnitUpdate> = Vec::new();
    let mut seen = HashSet::new();
    for r in &targets {
        if seen.insert(r.unit_id) {
            units.push(UnitUpdate {
                unit_id: r.unit_id,
                cancelled: Some(true),
                audit: Some(("-".into(), "cancelled".into(), "nfslurm cancel".into())),
                ..Default::default()
            });
        }
    }
    let keys: Vec<&crate::model::UnitKey> = idle.iter().map(|(k, _)| k).collect();
    let ids = store.ensure_units(&keys)?;
    for ((_, state), id) in idle.iter().zip(&ids) {
        if seen.insert(*id) {
            units.push(UnitUpdate {
                unit_id: *id,
                cancelled: Some(true),
                audit: Some((
                    state.as_str().into(),
                    "cancelled".into(),
                    "nfslurm cancel".into(),
                )),
                ..Default::default()
            });
        }
    }
    store.apply(&updates, &units, now)?;
    if settings.json {
        let mut cancelled: Vec<serde_json::Value> = targets
            .iter()
            .map(|r| {
                serde_json::json!({"pipeline": r.key.pipeline, "subject": r.key.subject,
                    "session": r.key.session, "run_id": r.id, "job_id": r.job_id,
                    "was": r.state.as_str()})
            })
            .collect();
        cancelled.extend(idle.iter().map(|(key, state)| {
            serde_json::json!({"pipeline": key.pipeline, "subject": key.subject,
                "session": key.session, "run_id": null, "job_id": null, "was": state.as_str()})
        }));
        crate::output::print_json(&serde_json::json!({ "cancelled": cancelled }));
    } else if !settings.quiet {
        for r in &targets {
            println!(
                "cancelled {} (job {})",
                r.key,
                r.job_id.as_deref().unwrap_or("-")
            );
        }
        for (key, state) in &idle {
            println!("cancelled {key} (was {})", state.as_str());
        }
        if targets.is_empty() && idle.is_empty() {
            println!("nothing to cancel");
        }
    }
    Ok(0)
}

/// `all`: every failed, cancelled or retrying unit (`--all`), as a
/// selection flag says; `failed`: only the failed ones.
pub fn retry(
    settings: &Settings,
    runs: &[String],
    spec: &SelectionSpec,
    all: bool,
    failed: bool,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    if runs.is_empty() && selection.is_all() && !failed && !all {
        return Err(Failure::user(
            "say what to retry: job IDs, selection flags, `--failed` or `--all`",
            Some("`nfslurm retry --all` retries every failed or cancelled unit"),
        ));
    }
    let lock = super::submit::plan_lock(&config, true)?;
    let mut store = super::open_store(&config)?;
    super::submit::reconcile_all(&config, &mut store)?;
    let snapshot = store.snapshot()?;
    let plan = plan::plan(&config, &snapshot, engine::now(), &Request::default());
    let named: HashSet<i64> = runs
        .iter()
        .map(|r| super::inspect::find_run(&store, r).map(|r| r.unit_id))
        .collect::<anyhow::Result<_>>()?;
    let mut units = Vec::new();
    let mut chosen = Vec::new();
    for u in &plan.units {
        let Some(rec) = snapshot.units.get(&u.key) else {
            continue;
        };
        let pick = named.contains(&rec.id)
            || (matches!(
                u.state,
                UnitState::Failed | UnitState::Cancelled | UnitState::Retrying
            ) && (!selection.is_all() || failed || all)
                && selection.matches(&u.key)
                && (!failed || u.state == UnitState::Failed));
        if pick {
            units.push(UnitUpdate {
                unit_id: rec.id,
                attempts: Some(0),
                infra_attempts: Some(0),
                next_attempt_at: Some(None),
                cancelled: Some(false),
                audit: Some((
                    u.state.as_str().into(),
                    "waiting".into(),
                    "nfslurm retry: budget reset".into(),
                )),
                ..Default::default()
            });
            chosen.push(u.key.clone());
        }
    }
    let now = engine::now();
    store.apply(&[], &units, now)?;
    if chosen.is_empty() {
        if settings.json {
            crate::output::print_json(&serde_json::json!({"retried": [], "submitted": []}));
        } else if !settings.quiet {
            println!("nothing to retry");
        }
        return Ok(0);
    }
    // Submit them and their downstream chain: their subjects' due units.
    let mut subjects: Vec<crate::model::Label> = chosen.iter().map(|k| k.subject.clone()).collect();
    subjects.sort();
    subjects.dedup();
    let request = Request {
        selection: crate::plan::Selection {
            subjects,
            ..Default::default()
        },
        force: false,
    };
    let submitted = super::submit::submit_request(&config, &mut store, &request)?;
    let rows = &submitted.rows;
    drop(lock);
    if settings.json {
        let retried: Vec<_> = chosen
            .iter()
            .map(|k| {
                serde_json::json!({"pipeline": k.pipeline, "subject": k.subject,
                    "session": k.session})
            })
            .collect();
        let submitted_json: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"run_id": r.run_id, "pipeline": r.key.pipeline,
                    "subject": r.key.subject, "session": r.key.session, "job_id": r.job_id,
                    "reason": r.reason})
            })
            .collect();
        crate::output::print_json(
            &serde_json::json!({"retried": retried, "submitted": submitted_json}),
        );
    } else if !settings.quiet {
        for k in &chosen {
            println!("retrying {k}");
        }
        println!(
            "{} submitted",
            crate::output::count(rows.len(), "run", "runs")
        );
    }
    submitted.report_problems(settings);
    if let Some(err) = submitted
        .failure("the budgets are reset: `nfslurm sync` submits them once the cluster answers")
    {
        return Err(err);
    }
    Ok(0)
}
