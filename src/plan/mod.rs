//! What runs, and why: a pure function of (config, state snapshot, now).
//!
//! The planner does no I/O. It builds every unit of the study from the
//! registered sessions and the pipeline DAG, gives each its state and, when it
//! needs a run, its reason; then it picks the units a request asks for plus
//! the upstream units they wait on, each with the dependencies to pass to the
//! executor. Executors and the store are the shell around it.

pub mod limits;
pub mod policy;

use std::collections::BTreeMap;

use crate::config::{Config, Pipeline};
use crate::model::{Label, Level, Reason, RunState, UnitKey, UnitState};
use crate::state::{SessionRow, Snapshot, SnapshotRun, UnitRow};

/// Which units a command is about (the shared selection flags).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub pipelines: Vec<String>,
    pub subjects: Vec<Label>,
    pub sessions: Vec<Label>,
}

impl Selection {
    pub fn is_all(&self) -> bool {
        self.pipelines.is_empty() && self.subjects.is_empty() && self.sessions.is_empty()
    }

    pub fn matches(&self, key: &UnitKey) -> bool {
        (self.pipelines.is_empty() || self.pipelines.contains(&key.pipeline))
            && (self.subjects.is_empty() || self.subjects.contains(&key.subject))
            && (self.sessions.is_empty()
                || match &key.session {
                    Some(s) => self.sessions.contains(s),
                    // A subject-level unit is selected by a session of its subject.
                    None => true,
                })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub selection: Selection,
    /// Rerun the selected units even when done (`--force`).
    pub force: bool,
}

/// Something a unit waits on.
#[derive(Debug, Clone, PartialEq)]
pub enum Dependency {
    /// An upstream unit submitted in this same plan (index into `Plan::actions`).
    Planned(usize),
    /// An upstream run already in flight.
    InFlight { run_id: i64, job_id: Option<String> },
}

/// A unit and what the planner made of it.
#[derive(Debug, Clone)]
pub struct UnitPlan {
    pub key: UnitKey,
    pub level: Level,
    pub state: UnitState,
    /// Why it needs a run, when it does.
    pub reason: Option<Reason>,
    /// A sentence for people: `blocked by qsiprep/sub-01`, `next attempt 12:05`.
    pub detail: Option<String>,
    /// The unit that blocks it, or that it waits for.
    pub blocked_by: Option<UnitKey>,
    pub attempts: u32,
    pub job_id: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub last_run_id: Option<i64>,
    /// Would run now if requested.
    pub due: bool,
    /// Held by nfslurm, not by Slurm: its upstream (`blocked_by`) runs on
    /// another cluster, and Slurm dependencies do not cross clusters.
    pub held: bool,
}

/// One unit to submit now.
#[derive(Debug, Clone)]
pub struct Action {
    pub key: UnitKey,
    pub reason: Reason,
    /// Index into `Plan::units`.
    pub unit: usize,
    pub depends_on: Vec<Dependency>,
    /// Upstream units' runs this run will consume: their last success, or the
    /// run it waits for (`Dependency`), in the order of `UnitPlan::upstream`.
    pub inputs: Vec<Dependency>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub units: Vec<UnitPlan>,
    /// In dependency order: every action after the actions it depends on.
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn unit(&self, key: &UnitKey) -> Option<&UnitPlan> {
        self.units.iter().find(|u| &u.key == key)
    }

    /// Unit counts per pipeline and state, pipelines in config order.
    pub fn counts(&self) -> BTreeMap<String, BTreeMap<UnitState, usize>> {
        let mut counts: BTreeMap<String, BTreeMap<UnitState, usize>> = BTreeMap::new();
        for unit in &self.units {
            *counts
                .entry(unit.key.pipeline.clone())
                .or_default()
                .entry(unit.state)
                .or_default() += 1;
        }
        counts
    }
}

/// The sessions of one subject, valid ones first-class.
struct SubjectSessions<'a> {
    label: &'a Label,
    valid: Vec<&'a SessionRow>,
    /// Every session, valid or not, ordered by label: the order of the
    /// subject's session-level units in every pipeline.
    sorted: Vec<(&'a SessionRow, bool)>,
}

/// Where each unit is in `Plan::units`, found without hashing keys: units are
/// laid out pipeline by pipeline, subject by subject, and a subject's
/// session-level units follow [`SubjectSessions::sorted`].
struct Layout {
    /// `first[pipeline][subject]`: the index of the subject's first unit of
    /// that pipeline, if it has any.
    first: Vec<Vec<Option<usize>>>,
}

/// Pushes the indices of the upstream units of one unit (the level
/// table) onto `out`, in a stable order; `position` is the unit's place in
/// its subject's sorted sessions (`None` for a subject-level unit). Returns
/// false if an upstream unit does not exist (cannot happen with a validated
/// DAG).
fn upstream_units(
    config: &Config,
    pipeline: &Pipeline,
    layout: &Layout,
    subject_index: usize,
    subject: &SubjectSessions<'_>,
    position: Option<usize>,
    out: &mut Vec<usize>,
) -> bool {
    let mut complete = true;
    for name in &pipeline.depends_on {
        let Some(up) = config.pipelines.iter().position(|p| &p.name == name) else {
            continue;
        };
        let first = layout.first[up][subject_index];
        let mut push = |offset: Option<usize>| match (first, offset) {
            (Some(first), Some(offset)) => out.push(first + offset),
            _ => complete = false,
        };
        match (pipeline.level, config.pipelines[up].level) {
            (Level::Session, Level::Session) => push(position),
            (Level::Subject, Level::Session) => {
                for s in &subject.valid {
                    push(
                        subject
                            .sorted
                            .iter()
                            .position(|(row, _)| std::ptr::eq(*row, *s)),
                    );
                }
            }
            (_, Level::Subject) => push(Some(0)),
        }
    }
    complete
}

fn retrying_detail(at: i64) -> String {
    let time = chrono::DateTime::from_timestamp(at, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| at.to_string());
    format!("next attempt at {time}")
}

fn failure_detail(run: &SnapshotRun) -> String {
    if let Some(code) = run.exit_code.filter(|&c| crate::model::cannot_run(c))
        && run.state == RunState::Failed
    {
        return format!(
            "attempt {} failed: {}, not retried",
            run.attempt,
            crate::model::exit_reason(code)
        );
    }
    let mut text = format!("attempt {} {}", run.attempt, run.state);
    if let Some(code) = run.exit_code
        && code != 0
    {
        text.push_str(&format!(" (exit {code})"));
    }
    // Say the exit code once: Slurm's reason often repeats it.
    if let Some(reason) = &run.reason
        && !reason.is_empty()
        && !reason.starts_with("exit code")
    {
        text.push_str(": ");
        text.push_str(reason);
    }
    text
}

/// Plans the study: every unit's state, and the actions `request` asks for.
///
/// Built for studies of 100,000 sessions: units are found by their place in
/// a fixed layout rather than by hashing keys, the snapshot is read once per
/// unit, and vectors are sized before they are filled (see
/// `docs/performance.md`).
pub fn plan(config: &Config, snapshot: &Snapshot, now: i64, request: &Request) -> Plan {
    let mut by_subject: BTreeMap<&Label, (Vec<&SessionRow>, Vec<&SessionRow>)> = BTreeMap::new();
    for s in &snapshot.sessions {
        let (valid, invalid) = by_subject.entry(&s.subject).or_default();
        if s.valid {
            valid.push(s);
        } else {
            invalid.push(s);
        }
    }
    let subjects: Vec<SubjectSessions<'_>> = by_subject
        .into_iter()
        .map(|(label, (valid, invalid))| {
            let mut sorted: Vec<(&SessionRow, bool)> = valid
                .iter()
                .map(|s| (*s, true))
                .chain(invalid.iter().map(|s| (*s, false)))
                .collect();
            sorted.sort_by(|a, b| a.0.session.cmp(&b.0.session));
            SubjectSessions {
                label,
                valid,
                sorted,
            }
        })
        .collect();

    // The layout, and so the exact number of units.
    let mut layout = Layout {
        first: Vec::with_capacity(config.pipelines.len()),
    };
    let mut n_units = 0;
    for pipeline in &config.pipelines {
        let firsts = subjects
            .iter()
            .map(|subject| {
                let n = match pipeline.level {
                    Level::Session => subject.sorted.len(),
                    Level::Subject => usize::from(!subject.valid.is_empty()),
                };
                let first = (n > 0).then_some(n_units);
                n_units += n;
                first
            })
            .collect();
        layout.first.push(firsts);
    }

    let mut units: Vec<UnitPlan> = Vec::with_capacity(n_units);
    let mut facts: Vec<Facts<'_>> = Vec::with_capacity(n_units);
    // Upstream unit indices of unit `i`: `up_flat[up_start[i]..up_start[i + 1]]`.
    let mut up_start: Vec<usize> = Vec::with_capacity(n_units + 1);
    let mut up_flat: Vec<usize> = Vec::with_capacity(n_units);
    up_start.push(0);
    for pipeline in &config.pipelines {
        for (subject_index, subject) in subjects.iter().enumerate() {
            let mut add = |key: UnitKey, valid: bool, position: Option<usize>| {
                let from = up_flat.len();
                let complete = !valid
                    || upstream_units(
                        config,
                        pipeline,
                        &layout,
                        subject_index,
                        subject,
                        position,
                        &mut up_flat,
                    );
                let up_idx = &up_flat[from..];
                let (unit, unit_facts) = evaluate(
                    config, pipeline, snapshot, now, request, key, valid, up_idx, complete, &units,
                    &facts,
                );
                units.push(unit);
                facts.push(unit_facts);
                up_start.push(up_flat.len());
            };
            match pipeline.level {
                Level::Session => {
                    for (position, (s, valid)) in subject.sorted.iter().enumerate() {
                        let key = UnitKey::new(&pipeline.name, subject.label, Some(&s.session));
                        add(key, *valid, Some(position));
                    }
                }
                Level::Subject => {
                    if !subject.valid.is_empty() {
                        add(
                            UnitKey::new(&pipeline.name, subject.label, None),
                            true,
                            None,
                        );
                    }
                }
            }
        }
    }
    // What is left is only the units' business: free the rest before the
    // actions add their own share to the peak.
    drop(subjects);
    drop(layout);
    let upstream_of = |i: usize| &up_flat[up_start[i]..up_start[i + 1]];

    // Actions: the requested due units, plus the due upstream units they wait on.
    let mut wanted = vec![false; units.len()];
    {
        let mut stack: Vec<usize> = units
            .iter()
            .enumerate()
            .filter(|(_, u)| u.due && request.selection.matches(&u.key))
            .map(|(i, _)| i)
            .collect();
        while let Some(i) = stack.pop() {
            if wanted[i] {
                continue;
            }
            wanted[i] = true;
            for &up in upstream_of(i) {
                if units[up].due && !wanted[up] {
                    stack.push(up);
                }
            }
        }
    }
    // Units are already in dependency order (pipelines are topologically sorted).
    let mut actions = Vec::with_capacity(wanted.iter().filter(|w| **w).count());
    let mut action_of: Vec<Option<usize>> = vec![None; units.len()];
    for (i, unit) in units.iter().enumerate() {
        if !wanted[i] {
            continue;
        }
        let upstream = upstream_of(i);
        let mut depends_on = Vec::with_capacity(upstream.len());
        let mut inputs = Vec::with_capacity(upstream.len());
        for &up in upstream {
            let dep = if let Some(a) = action_of[up] {
                Some(Dependency::Planned(a))
            } else {
                match facts[up].last(snapshot) {
                    Some(run) if run.state.in_flight() => Some(Dependency::InFlight {
                        run_id: run.id,
                        job_id: run.job_id.clone(),
                    }),
                    _ => None,
                }
            };
            match dep {
                Some(dep) => {
                    depends_on.push(dep.clone());
                    inputs.push(dep);
                }
                None => {
                    if let Some(success) = facts[up].success(snapshot) {
                        inputs.push(Dependency::InFlight {
                            run_id: success.id,
                            job_id: None,
                        });
                    }
                }
            }
        }
        action_of[i] = Some(actions.len());
        actions.push(Action {
            key: unit.key.clone(),
            reason: unit.reason.unwrap_or(Reason::New),
            unit: i,
            depends_on,
            inputs,
        });
    }
    Plan { units, actions }
}

/// A unit's bookkeeping row in the snapshot, looked up by key once (a
/// pointer per unit: its runs are found by ID when needed).
#[derive(Clone, Copy)]
struct Facts<'a>(Option<&'a UnitRow>);

impl<'a> Facts<'a> {
    fn last(self, snapshot: &'a Snapshot) -> Option<&'a SnapshotRun> {
        self.0
            .and_then(|r| r.last_run_id)
            .and_then(|id| snapshot.runs.get(&id))
    }

    fn success(self, snapshot: &'a Snapshot) -> Option<&'a SnapshotRun> {
        self.success_id().and_then(|id| snapshot.runs.get(&id))
    }

    /// The unit's `success_run_id`, even if that run is not in the snapshot.
    fn success_id(self) -> Option<i64> {
        self.0.and_then(|r| r.success_run_id)
    }
}

/// Whether `ids` and `other` hold the same run IDs, as sets. Both are a
/// unit's upstream count long (one or a few), so looking each one up in the
/// other beats sorting copies (two allocations per unit of a large study).
fn same_set(ids: impl Iterator<Item = i64> + Clone, other: &[i64]) -> bool {
    ids.clone().all(|id| other.contains(&id))
        && other.iter().all(|&id| ids.clone().any(|x| x == id))
}

/// Gives one unit its state, reason and due-ness; upstream units (`up_idx`,
/// indices into `done_units`) are already evaluated. `complete` is false
/// when an upstream unit does not exist.
#[allow(clippy::too_many_arguments)]
fn evaluate<'s>(
    config: &Config,
    pipeline: &Pipeline,
    snapshot: &'s Snapshot,
    now: i64,
    request: &Request,
    key: UnitKey,
    valid: bool,
    up_idx: &[usize],
    complete: bool,
    done_units: &[UnitPlan],
    done_facts: &[Facts<'s>],
) -> (UnitPlan, Facts<'s>) {
    let rec = snapshot.units.get(&key);
    let facts = Facts(rec);
    let last = facts.last(snapshot);
    let success = facts.success(snapshot);
    let mut unit = UnitPlan {
        key,
        level: pipeline.level,
        state: UnitState::Waiting,
        reason: None,
        detail: None,
        blocked_by: None,
        attempts: rec.map(|r| r.attempts).unwrap_or(0),
        job_id: last.and_then(|r| r.job_id.clone()),
        next_attempt_at: None,
        last_run_id: last.map(|r| r.id),
        due: false,
        held: false,
    };
    if !valid {
        unit.state = UnitState::Invalid;
        unit.detail = Some("session failed validation".into());
        return (unit, facts);
    }
    if let Some(run) = last
        && run.state.in_flight()
    {
        unit.state = if run.state == RunState::Running {
            UnitState::Running
        } else {
            UnitState::Queued
        };
        unit.reason = Some(run.plan_reason);
        return (unit, facts);
    }
    if !pipeline.enabled {
        unit.state = UnitState::Disabled;
        unit.detail = Some(format!(
            "pipeline `{}` is disabled (`enabled: false`): never submitted",
            pipeline.name
        ));
        return (unit, facts);
    }
    if rec.is_some_and(|r| r.cancelled) {
        unit.state = UnitState::Cancelled;
        unit.detail = Some("cancelled: `nfslurm retry` resumes it".into());
        return (unit, facts);
    }

    let forced = request.force && request.selection.matches(&unit.key);
    // An upstream unit that is anything but done will produce new output
    // (or is stuck trying to): this unit's output is out of date with it.
    // An upstream run that this unit's last success consumed (its job ran
    // after that run succeeded: afterok, or the worker's own check) is that
    // upstream's output even while its end is not recorded yet, as when a
    // sync sees the downstream job end before the upstream one.
    let consumed = |i: usize| -> Option<i64> {
        let up = &done_units[i];
        let id = up.last_run_id?;
        (matches!(up.state, UnitState::Queued | UnitState::Running)
            && success?.inputs.contains(&id))
        .then_some(id)
    };
    // A disabled upstream unit that succeeded before keeps its output: it
    // counts as done; one that never did is waited for.
    let settled = |i: usize| match done_units[i].state {
        UnitState::Done => true,
        UnitState::Disabled => done_facts[i].success_id().is_some(),
        _ => false,
    };
    let upstream_moving = up_idx.iter().any(|&i| !settled(i) && consumed(i).is_none());
    let inputs_changed = success.is_some_and(|s| {
        let current = up_idx
            .iter()
            .filter_map(|&i| consumed(i).or(done_facts[i].success_id()));
        !same_set(current, &s.inputs)
    });

    let need = if forced {
        Some(Reason::Forced)
    } else if let Some(s) = success {
        if *s.config_hash != *pipeline.config_hash
            && !pipeline
                .config_hash_aliases
                .iter()
                .any(|a| **a == *s.config_hash)
        {
            Some(Reason::ConfigChanged)
        } else if upstream_moving || inputs_changed {
            Some(Reason::UpstreamChanged)
        } else {
            None
        }
    } else {
        Some(Reason::New)
    };
    let Some(mut reason) = need else {
        unit.state = UnitState::Done;
        return (unit, facts);
    };
    let stale = success.is_some();

    // The retry policy, unless the user forces the unit.
    if let (Some(run), false) = (last, forced) {
        let rec = rec.cloned().unwrap_or_default();
        let max_attempts = pipeline.max_attempts;
        if run.state.counts_attempt() || run.state.is_infra() {
            let exhausted = if run.state.is_infra() {
                rec.infra_attempts > config.retry.infra_max
            } else {
                // A command that cannot run is not retried (until `retry`
                // resets the budget).
                rec.attempts >= max_attempts
                    || (rec.attempts > 0
                        && run.state == RunState::Failed
                        && run.exit_code.is_some_and(crate::model::cannot_run))
            };
            if exhausted {
                unit.state = UnitState::Failed;
                unit.detail = Some(format!(
                    "{} attempts used: {}",
                    if run.state.is_infra() {
                        rec.infra_attempts
                    } else {
                        rec.attempts
                    },
                    failure_detail(run)
                ));
                return (unit, facts);
            }
            reason = Reason::Retry;
            if let Some(at) = rec.next_attempt_at
                && at > now
            {
                unit.state = UnitState::Retrying;
                unit.reason = Some(reason);
                unit.next_attempt_at = Some(at);
                unit.detail = Some(format!("{}; {}", failure_detail(run), retrying_detail(at)));
                return (unit, facts);
            }
        }
    }

    // Upstream units must be done, in flight, or due with this one.
    for &i in up_idx {
        let up = &done_units[i];
        // Slurm dependencies do not cross clusters: a unit whose upstream
        // runs on another cluster waits until that upstream is done, and the
        // sync that sees it done submits this one.
        if up.state != UnitState::Done
            && (matches!(up.state, UnitState::Queued | UnitState::Running) || up.due)
            && let Some(other) = other_cluster(config, pipeline, &up.key.pipeline)
        {
            unit.state = UnitState::Waiting;
            unit.reason = Some(reason);
            unit.blocked_by = Some(up.key.clone());
            unit.detail = Some(format!("waits for {} on {other}", up.key));
            unit.held = true;
            return (unit, facts);
        }
        match up.state {
            UnitState::Done | UnitState::Queued | UnitState::Running => {}
            UnitState::Disabled if settled(i) => {}
            _ if up.due => {}
            UnitState::Failed | UnitState::Cancelled => {
                unit.state = UnitState::Blocked;
                unit.blocked_by = Some(up.key.clone());
                unit.detail = Some(format!("blocked by {} ({})", up.key, up.state));
                return (unit, facts);
            }
            UnitState::Blocked => {
                unit.state = UnitState::Blocked;
                unit.blocked_by = up.blocked_by.clone();
                unit.detail = up.detail.clone();
                return (unit, facts);
            }
            _ => {
                unit.state = UnitState::Waiting;
                unit.reason = Some(reason);
                unit.blocked_by = Some(up.key.clone());
                unit.detail = Some(format!("waiting for {} ({})", up.key, up.state));
                return (unit, facts);
            }
        }
    }
    if !complete {
        // An upstream unit does not exist (cannot happen with a validated DAG).
        unit.state = UnitState::Waiting;
        unit.detail = Some("an upstream unit is missing".into());
        return (unit, facts);
    }

    unit.due = true;
    unit.reason = Some(reason);
    unit.state = if reason == Reason::Retry {
        UnitState::Retrying
    } else if stale {
        UnitState::Stale
    } else {
        UnitState::Waiting
    };
    if let (Reason::Retry, Some(run)) = (reason, last) {
        unit.detail = Some(failure_detail(run));
    }
    (unit, facts)
}

/// The cluster `upstream` runs on, when it is not the one `pipeline` runs
/// on (Slurm only: the local executor has one machine).
fn other_cluster(config: &Config, pipeline: &Pipeline, upstream: &str) -> Option<String> {
    if config.executor != crate::config::ExecutorKind::Slurm {
        return None;
    }
    let theirs = &config.pipeline(upstream)?.scheduler.cluster;
    (theirs != &pipeline.scheduler.cluster).then(|| match theirs {
        Some(name) => format!("cluster {name}"),
        None => "the default cluster".to_string(),
    })
}

impl Reason {
    /// Reads back the reason stored with a run.
    pub fn from_plan_text(text: &str) -> Option<Reason> {
        [
            Reason::New,
            Reason::Retry,
            Reason::UpstreamChanged,
            Reason::ConfigChanged,
            Reason::Forced,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

#[cfg(test)]
mod tests;
