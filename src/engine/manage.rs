//! `cancel` and `retry` as use cases: the user's hand on the failure policy.

use std::collections::HashSet;

use crate::config::{Config, ExecutorKind};
use crate::error::Failure;
use crate::executor::ExecError;
use crate::model::{AuditFrom, Label, UnitAudit, UnitKey, UnitState};
use crate::plan::{self, Request, Selection};
use crate::state::{LockGuard, RunRow, Store, UnitUpdate};

use super::Submitted;

/// The run a user names: `run:N`, a job ID, or a unit key (its last run).
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

/// Runs named plus open runs matching the selection, each once.
fn selected_runs(
    store: &Store,
    runs: &[String],
    selection: Option<&Selection>,
) -> anyhow::Result<Vec<RunRow>> {
    let mut out: Vec<RunRow> = Vec::new();
    for r in runs {
        out.push(find_run(store, r)?);
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

/// What `cancel` did.
#[derive(Debug, Default)]
pub struct CancelReport {
    /// The runs named or selected, as they were before the cancel.
    pub runs: Vec<RunRow>,
    /// Units with no run in flight that the selection stopped, with their
    /// state before.
    pub idle: Vec<(UnitKey, UnitState)>,
}

/// Cancels the named runs and, with a selection, every unit it names that
/// is not done: they stay cancelled until `retry`.
pub fn cancel(
    config: &Config,
    store: &mut Store,
    _lock: &LockGuard,
    runs: &[String],
    selection: Option<&Selection>,
) -> anyhow::Result<CancelReport> {
    let targets = selected_runs(store, runs, selection)?;
    // With a selection (or `--all`), every unit it names stops until `retry`,
    // not only those with a run in flight: a waiting unit must not be
    // submitted by the next sync either. Done and invalid units stay as they are.
    let mut idle: Vec<(UnitKey, UnitState)> = Vec::new();
    if let Some(sel) = selection {
        let snapshot = store.snapshot()?;
        let plan = plan::plan(config, &snapshot, super::now(), &Request::default());
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
    let now = super::now();
    let mut updates = Vec::new();
    let mut by_exec: Vec<(ExecutorKind, Vec<RunRow>)> = Vec::new();
    for r in targets.iter().filter(|r| r.state.in_flight()) {
        match by_exec.iter_mut().find(|(k, _)| *k == r.executor) {
            Some((_, list)) => list.push(r.clone()),
            None => by_exec.push((r.executor, vec![r.clone()])),
        }
    }
    for (kind, list) in by_exec {
        let mut exec = super::executor_of(config, kind);
        updates.extend(exec.cancel(store, &list, now).map_err(|e| match e {
            ExecError::Unreachable(m) => {
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
                audit: Some(UnitAudit::new(None, UnitState::Cancelled, "nfslurm cancel")),
                ..Default::default()
            });
        }
    }
    let keys: Vec<&UnitKey> = idle.iter().map(|(k, _)| k).collect();
    let ids = store.ensure_units(&keys)?;
    for ((_, state), id) in idle.iter().zip(&ids) {
        if seen.insert(*id) {
            units.push(UnitUpdate {
                unit_id: *id,
                cancelled: Some(true),
                audit: Some(UnitAudit::new(
                    Some(AuditFrom::Unit(*state)),
                    UnitState::Cancelled,
                    "nfslurm cancel",
                )),
                ..Default::default()
            });
        }
    }
    store.apply(&updates, &units, now)?;
    Ok(CancelReport {
        runs: targets,
        idle,
    })
}

/// What `retry` asks for.
#[derive(Debug, Default)]
pub struct RetryRequest {
    /// Runs named (`run:N`, job IDs, unit keys): their units are retried.
    pub runs: Vec<String>,
    pub selection: Selection,
    /// Every failed, cancelled or retrying unit of the selection, even when
    /// the selection is the whole study.
    pub all: bool,
    /// Only the failed units of the selection.
    pub failed: bool,
}

/// What `retry` did.
#[derive(Debug, Default)]
pub struct RetryReport {
    /// The units whose budget was reset.
    pub retried: Vec<UnitKey>,
    /// What was submitted for them and their downstream chain.
    pub submitted: Submitted,
}

/// Resets the retry budget of the units asked for and submits them and
/// their downstream chain. The lock is released once they are submitted.
pub fn retry(
    config: &Config,
    store: &mut Store,
    lock: LockGuard,
    request: &RetryRequest,
) -> anyhow::Result<RetryReport> {
    super::reconcile_all(config, store)?;
    let snapshot = store.snapshot()?;
    let plan = plan::plan(config, &snapshot, super::now(), &Request::default());
    let named: HashSet<i64> = request
        .runs
        .iter()
        .map(|r| find_run(store, r).map(|r| r.unit_id))
        .collect::<anyhow::Result<_>>()?;
    let selection = &request.selection;
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
            ) && (!selection.is_all() || request.failed || request.all)
                && selection.matches(&u.key)
                && (!request.failed || u.state == UnitState::Failed));
        if pick {
            units.push(UnitUpdate {
                unit_id: rec.id,
                attempts: Some(0),
                infra_attempts: Some(0),
                next_attempt_at: Some(None),
                cancelled: Some(false),
                audit: Some(UnitAudit::new(
                    Some(AuditFrom::Unit(u.state)),
                    UnitState::Waiting,
                    "nfslurm retry: budget reset",
                )),
                ..Default::default()
            });
            chosen.push(u.key.clone());
        }
    }
    store.apply(&[], &units, super::now())?;
    if chosen.is_empty() {
        return Ok(RetryReport::default());
    }
    // Submit them and their downstream chain: their subjects' due units.
    let mut subjects: Vec<Label> = chosen.iter().map(|k| k.subject.clone()).collect();
    subjects.sort();
    subjects.dedup();
    let submit = Request {
        selection: Selection {
            subjects,
            ..Default::default()
        },
        force: false,
    };
    let submitted = super::submit_request(config, store, &submit)?;
    drop(lock);
    Ok(RetryReport {
        retried: chosen,
        submitted,
    })
}
