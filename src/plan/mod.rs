//! What runs, and why (SPEC §2): a pure function of (config, state snapshot, now).
//!
//! The planner does no I/O. It builds every unit of the study from the
//! registered sessions and the pipeline DAG, gives each its state and, when it
//! needs a run, its reason; then it picks the units a request asks for plus
//! the upstream units they wait on, each with the dependencies to pass to the
//! executor. Executors and the store are the shell around it.

pub mod limits;
pub mod policy;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::{Config, Pipeline};
use crate::model::{Label, Level, Reason, RunState, UnitKey, UnitState};
use crate::state::{RunRow, SessionRow, Snapshot};

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
    /// Upstream units, in a stable order.
    pub upstream: Vec<UnitKey>,
    /// Would run now if requested.
    pub due: bool,
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
    valid: Vec<&'a SessionRow>,
    invalid: Vec<&'a SessionRow>,
}

/// The upstream units of `key` under SPEC §1's level table.
fn upstream_units(
    config: &Config,
    pipeline: &Pipeline,
    key: &UnitKey,
    subject: &SubjectSessions<'_>,
) -> Vec<UnitKey> {
    let mut out = Vec::new();
    for name in &pipeline.depends_on {
        let Some(up) = config.pipeline(name) else {
            continue;
        };
        match (pipeline.level, up.level) {
            (Level::Session, Level::Session) => {
                out.push(UnitKey::new(name, &key.subject, key.session.as_ref()));
            }
            (Level::Subject, Level::Session) => {
                for s in &subject.valid {
                    out.push(UnitKey::new(name, &key.subject, Some(&s.session)));
                }
            }
            (_, Level::Subject) => out.push(UnitKey::new(name, &key.subject, None)),
        }
    }
    out
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

fn failure_detail(run: &RunRow) -> String {
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
pub fn plan(config: &Config, snapshot: &Snapshot, now: i64, request: &Request) -> Plan {
    let mut by_subject: BTreeMap<&Label, SubjectSessions<'_>> = BTreeMap::new();
    for s in &snapshot.sessions {
        let entry = by_subject.entry(&s.subject).or_insert(SubjectSessions {
            valid: Vec::new(),
            invalid: Vec::new(),
        });
        if s.valid {
            entry.valid.push(s);
        } else {
            entry.invalid.push(s);
        }
    }

    let mut units: Vec<UnitPlan> = Vec::new();
    let mut index: HashMap<UnitKey, usize> = HashMap::new();
    let mut upstream_of: Vec<Vec<usize>> = Vec::new();

    for pipeline in &config.pipelines {
        for (subject, sessions) in &by_subject {
            let mut keys: Vec<(UnitKey, bool)> = Vec::new();
            match pipeline.level {
                Level::Session => {
                    let mut all: Vec<(&SessionRow, bool)> = sessions
                        .valid
                        .iter()
                        .map(|s| (*s, true))
                        .chain(sessions.invalid.iter().map(|s| (*s, false)))
                        .collect();
                    all.sort_by(|a, b| a.0.session.cmp(&b.0.session));
                    for (s, valid) in all {
                        keys.push((
                            UnitKey::new(&pipeline.name, subject, Some(&s.session)),
                            valid,
                        ));
                    }
                }
                Level::Subject => {
                    if !sessions.valid.is_empty() {
                        keys.push((UnitKey::new(&pipeline.name, subject, None), true));
                    }
                }
            }
            for (key, valid) in keys {
                let upstream = if valid {
                    upstream_units(config, pipeline, &key, sessions)
                } else {
                    Vec::new()
                };
                let up_idx: Vec<usize> = upstream
                    .iter()
                    .filter_map(|k| index.get(k).copied())
                    .collect();
                let unit = evaluate(
                    config, pipeline, snapshot, now, request, &key, valid, &upstream, &up_idx,
                    &units,
                );
                index.insert(key, units.len());
                upstream_of.push(up_idx);
                units.push(unit);
            }
        }
    }

    // Actions: the requested due units, plus the due upstream units they wait on.
    let mut wanted = vec![false; units.len()];
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
        for &up in &upstream_of[i] {
            if units[up].due && !wanted[up] {
                stack.push(up);
            }
        }
    }
    // Units are already in dependency order (pipelines are topologically sorted).
    let mut actions = Vec::new();
    let mut action_of: HashMap<usize, usize> = HashMap::new();
    for (i, unit) in units.iter().enumerate() {
        if !wanted[i] {
            continue;
        }
        let mut depends_on = Vec::new();
        let mut inputs = Vec::new();
        for &up in &upstream_of[i] {
            let dep = if let Some(&a) = action_of.get(&up) {
                Some(Dependency::Planned(a))
            } else {
                let key = &units[up].key;
                match snapshot.last_run(key) {
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
                    if let Some(success) = snapshot.success_run(&units[up].key) {
                        inputs.push(Dependency::InFlight {
                            run_id: success.id,
                            job_id: None,
                        });
                    }
                }
            }
        }
        action_of.insert(i, actions.len());
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

/// Gives one unit its state, reason and due-ness; upstream units are already evaluated.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    config: &Config,
    pipeline: &Pipeline,
    snapshot: &Snapshot,
    now: i64,
    request: &Request,
    key: &UnitKey,
    valid: bool,
    upstream: &[UnitKey],
    up_idx: &[usize],
    done_units: &[UnitPlan],
) -> UnitPlan {
    let rec = snapshot.units.get(key);
    let last = snapshot.last_run(key);
    let success = snapshot.success_run(key);
    let mut unit = UnitPlan {
        key: key.clone(),
        level: pipeline.level,
        state: UnitState::Waiting,
        reason: None,
        detail: None,
        blocked_by: None,
        attempts: rec.map(|r| r.attempts).unwrap_or(0),
        job_id: last.and_then(|r| r.job_id.clone()),
        next_attempt_at: None,
        last_run_id: last.map(|r| r.id),
        upstream: upstream.to_vec(),
        due: false,
    };

    if !valid {
        unit.state = UnitState::Invalid;
        unit.detail = Some("session failed validation".into());
        return unit;
    }
    if let Some(run) = last
        && run.state.in_flight()
    {
        unit.state = if run.state == RunState::Running {
            UnitState::Running
        } else {
            UnitState::Queued
        };
        unit.reason = Reason::from_plan_text(&run.plan_reason);
        return unit;
    }
    if rec.is_some_and(|r| r.cancelled) {
        unit.state = UnitState::Cancelled;
        unit.detail = Some("cancelled: `nfslurm retry` resumes it".into());
        return unit;
    }

    let forced = request.force && request.selection.matches(key);
    let upstream_units: Vec<&UnitPlan> = up_idx.iter().map(|&i| &done_units[i]).collect();
    // An upstream unit that is anything but done will produce new output
    // (or is stuck trying to): this unit's output is out of date with it.
    let upstream_moving = upstream_units.iter().any(|u| u.state != UnitState::Done);
    let inputs_changed = success.is_some_and(|s| {
        let current: HashSet<i64> = upstream
            .iter()
            .filter_map(|k| snapshot.units.get(k).and_then(|u| u.success_run_id))
            .collect();
        let consumed: HashSet<i64> = s.inputs.iter().copied().collect();
        current != consumed
    });

    let need = if forced {
        Some(Reason::Forced)
    } else if let Some(s) = success {
        if s.config_hash != pipeline.config_hash {
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
        return unit;
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
                rec.attempts >= max_attempts
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
                return unit;
            }
            reason = Reason::Retry;
            if let Some(at) = rec.next_attempt_at
                && at > now
            {
                unit.state = UnitState::Retrying;
                unit.reason = Some(reason);
                unit.next_attempt_at = Some(at);
                unit.detail = Some(format!("{}; {}", failure_detail(run), retrying_detail(at)));
                return unit;
            }
        }
    }

    // Upstream units must be done, in flight, or due with this one.
    for up in &upstream_units {
        match up.state {
            UnitState::Done | UnitState::Queued | UnitState::Running => {}
            _ if up.due => {}
            UnitState::Failed | UnitState::Cancelled => {
                unit.state = UnitState::Blocked;
                unit.blocked_by = Some(up.key.clone());
                unit.detail = Some(format!("blocked by {} ({})", up.key, up.state));
                return unit;
            }
            UnitState::Blocked => {
                unit.state = UnitState::Blocked;
                unit.blocked_by = up.blocked_by.clone();
                unit.detail = up.detail.clone();
                return unit;
            }
            _ => {
                unit.state = UnitState::Waiting;
                unit.reason = Some(reason);
                unit.blocked_by = Some(up.key.clone());
                unit.detail = Some(format!("waiting for {} ({})", up.key, up.state));
                return unit;
            }
        }
    }
    if upstream.len() != up_idx.len() {
        // An upstream unit does not exist (cannot happen with a validated DAG).
        unit.state = UnitState::Waiting;
        unit.detail = Some("an upstream unit is missing".into());
        return unit;
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
    unit
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
