//! Submitting as a use case: reconcile, plan, render, submit, record.

use std::collections::HashSet;

use crate::config::{Config, ExecutorKind};
use crate::error::Failure;
use crate::executor::ExecError;
use crate::model::{UnitKey, UnitState};
use crate::output;
use crate::plan::{self, Request};
use crate::render::Renderer;
use crate::state::Store;

use super::SubmittedRun;

pub(crate) fn exec_failure(err: ExecError) -> anyhow::Error {
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
    let (local, slurm): (Vec<_>, Vec<_>) = store
        .open_runs()?
        .into_iter()
        .partition(|r| r.executor == ExecutorKind::Local);
    let mut all = Vec::new();
    for (kind, open) in [(ExecutorKind::Local, local), (ExecutorKind::Slurm, slurm)] {
        if open.is_empty() {
            continue;
        }
        let mut exec = super::executor_of(config, kind);
        all.extend(
            super::reconcile_open(config, store, exec.as_mut(), open, super::now())
                .map_err(exec_failure)?,
        );
    }
    Ok(all)
}

/// What a submission did, for the command to report.
#[derive(Debug, Default)]
pub struct Submitted {
    pub rows: Vec<SubmittedRun>,
    /// The cluster could not be reached (exit 2).
    pub unreachable: Option<String>,
    /// Submissions sbatch refused (a config error: exit 1); their runs were
    /// withdrawn.
    pub rejected: Vec<crate::executor::Rejected>,
    /// Units left for a later sync by submit limits.
    pub deferred: usize,
}

impl Submitted {
    /// What did not go as planned, in order, for stderr (stdout stays
    /// data); the limit note is left out when `quiet`.
    pub fn problem_lines(&self, quiet: bool) -> Vec<String> {
        let mut lines = Vec::new();
        // The last refusal is the command's error (unless the cluster went
        // unreachable, which is then); the others are said here, in order.
        let shown = if self.unreachable.is_none() {
            self.rejected.len().saturating_sub(1)
        } else {
            self.rejected.len()
        };
        for rejected in &self.rejected[..shown] {
            lines.push(format!("error: {}", rejected.message));
        }
        if self.deferred > 0 && !quiet {
            lines.push(format!(
                "{} {} for a later sync: a submit limit was reached (`max_submitted`, `max_concurrent` or the cluster's own)",
                self.deferred,
                if self.deferred == 1 {
                    "unit waits"
                } else {
                    "units wait"
                }
            ));
        }
        lines
    }

    /// The exit error, if any: unreachable (2), then refused (1).
    pub fn failure(&self, hint: &str) -> Option<anyhow::Error> {
        if let Some(msg) = &self.unreachable {
            return Some(Failure::unreachable(msg.clone(), Some(hint)));
        }
        let last = self.rejected.last()?;
        let units: usize = self.rejected.iter().map(|r| r.runs.len()).sum();
        Some(Failure::user(
            last.message.clone(),
            Some(&format!(
                "a config error: fix the directive in the template or the config; nothing was submitted for {} (no attempt spent), and the next `submit` or `sync` tries again",
                output::count(units, "unit", "units")
            )),
        ))
    }
}

/// Submits what the request asks for.
pub fn submit_request(
    config: &Config,
    store: &mut Store,
    request: &Request,
) -> anyhow::Result<Submitted> {
    let snapshot = store.snapshot()?;
    let plan = plan::plan(config, &snapshot, super::now(), request);
    if plan.actions.is_empty() {
        return Ok(Submitted::default());
    }
    let renderer =
        Renderer::new(config).map_err(|e| Failure::user(crate::error::error_chain(&e), None))?;
    let mut executor = super::make_executor(config);
    let (rows, outcome) = super::submit_actions(
        config,
        store,
        executor.as_mut(),
        &plan,
        &snapshot,
        &renderer,
        super::now(),
    )
    .map_err(|e| match e {
        super::SubmitError::Exec(x) => exec_failure(x),
        other => anyhow::Error::new(other),
    })?;
    Ok(Submitted {
        rows,
        unreachable: outcome.unreachable,
        rejected: outcome.rejected,
        deferred: outcome.deferred,
    })
}

/// Runs waiting and running now, over every executor: (pending, running).
pub fn queue_counts(store: &Store) -> anyhow::Result<(usize, usize)> {
    let open = store.open_runs()?;
    let running = open
        .iter()
        .filter(|r| r.state == crate::model::RunState::Running)
        .count();
    Ok((open.len() - running, running))
}

/// Units done before that are now `stale` because a forced upstream reruns:
/// the next `sync` (or `submit --all`) reruns them after it.
fn made_stale(
    config: &Config,
    store: &Store,
    done_before: &HashSet<UnitKey>,
) -> anyhow::Result<Vec<UnitKey>> {
    let plan = plan::plan(
        config,
        &store.snapshot()?,
        super::now(),
        &Request::default(),
    );
    Ok(plan
        .units
        .into_iter()
        .filter(|u| {
            done_before.contains(&u.key)
                && u.state == crate::model::UnitState::Stale
                && u.reason == Some(crate::model::Reason::UpstreamChanged)
        })
        .map(|u| u.key)
        .collect())
}

/// What `submit` did.
#[derive(Debug, Default)]
pub struct SubmitReport {
    pub submitted: Submitted,
    /// Done units a forced rerun made stale (they rerun at the next sync).
    pub made_stale: Vec<UnitKey>,
    /// Runs in flight after the submission: (pending, running).
    pub queue: (usize, usize),
}

/// The `submit` use case, under the plan lock the caller took: reconcile,
/// then submit what `request` asks for. The lock is released as soon as the
/// submissions are recorded. The caller decides what a problem in the
/// report means.
pub fn submit(
    config: &Config,
    store: &mut Store,
    request: &Request,
    lock: crate::state::LockGuard,
) -> anyhow::Result<SubmitReport> {
    reconcile_all(config, store)?;
    if store.sessions()?.is_empty() {
        return Err(Failure::user(
            "nothing to submit: no session is registered in this study yet",
            Some(
                "run `nfslurm discover` to register the sessions under `paths.dicom_root`, \
                 or `nfslurm sync` to discover and submit in one go",
            ),
        ));
    }
    let force = request.force;
    // Done units before, to say which ones a forced rerun makes stale.
    let done_before: HashSet<UnitKey> = if force {
        plan::plan(
            config,
            &store.snapshot()?,
            super::now(),
            &Request::default(),
        )
        .units
        .into_iter()
        .filter(|u| u.state == UnitState::Done)
        .map(|u| u.key)
        .collect()
    } else {
        HashSet::new()
    };
    let submitted = submit_request(config, store, request)?;
    drop(lock);
    let made_stale = if force && !submitted.rows.is_empty() {
        made_stale(config, store, &done_before)?
    } else {
        Vec::new()
    };
    let queue = queue_counts(store)?;
    Ok(SubmitReport {
        submitted,
        made_stale,
        queue,
    })
}
