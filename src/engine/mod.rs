//! The shell around the planner: reconcile open runs, apply the failure
//! policy, prepare and submit the planned actions. Shared by `submit`, `sync`,
//! `retry` and the local worker, so every path records state the same way.

pub mod clean;
pub mod discover;
pub mod lock;
pub mod manage;
pub mod selection;
pub mod submit;
pub mod sync;
pub mod wait;

pub use discover::discover_and_register;
pub use submit::{Submitted, reconcile_all, submit_request};

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{Config, ExecutorKind, Resources};
use crate::executor::local::LocalExecutor;
use crate::executor::slurm::SlurmExecutor;
use crate::executor::{ExecError, Executor, Prepared, SubmitOutcome};
use crate::model::{Label, RunState, UnitKey};
use crate::plan::{Dependency, Plan, policy};
use crate::render::{Renderer, ScriptInput, SessionInfo};
use crate::state::{NewRun, RunRow, RunUpdate, Snapshot, StateError, Store};

/// Opens (and creates) the study's state.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.paths.state_dir).with_context(|| {
        format!(
            "cannot open the state in `{}`",
            config.paths.state_dir.display()
        )
    })
}

/// A snapshot of the state, or an empty one when the study never ran.
pub fn read_snapshot(config: &Config) -> anyhow::Result<(Option<Store>, Snapshot)> {
    match Store::open_existing(&config.paths.state_dir)? {
        Some(store) => {
            let snap = store.snapshot()?;
            Ok((Some(store), snap))
        }
        None => Ok((None, Snapshot::default())),
    }
}

pub fn make_executor(config: &Config) -> Box<dyn Executor> {
    executor_of(config, config.executor)
}

/// The executor of `kind` (for the open runs it owns).
pub fn executor_of(config: &Config, kind: ExecutorKind) -> Box<dyn Executor> {
    match kind {
        ExecutorKind::Local => Box::new(LocalExecutor::new(config)),
        ExecutorKind::Slurm => Box::new(SlurmExecutor::new(config)),
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A random value in -1..=1 for backoff jitter.
fn jitter() -> f64 {
    rand::random_range(-1.0..=1.0)
}

/// The engine's side of [`crate::executor::Journal`]: what an executor
/// records goes through [`apply_updates`] and its failure policy.
pub struct EngineJournal<'a> {
    config: &'a Config,
    store: &'a mut Store,
    now: i64,
}

impl<'a> EngineJournal<'a> {
    pub fn new(config: &'a Config, store: &'a mut Store, now: i64) -> EngineJournal<'a> {
        EngineJournal { config, store, now }
    }
}

impl crate::executor::Journal for EngineJournal<'_> {
    fn store(&self) -> &Store {
        self.store
    }

    fn record(&mut self, updates: &[RunUpdate]) -> Result<(), StateError> {
        apply_updates(self.config, self.store, updates, self.now)
    }

    fn set_tokens(&mut self, tokens: &[(i64, String)]) -> Result<(), StateError> {
        self.store.set_tokens(tokens)
    }
}

/// Applies run updates and, for runs that just ended, the failure policy.
pub fn apply_updates(
    config: &Config,
    store: &mut Store,
    updates: &[RunUpdate],
    now: i64,
) -> Result<(), StateError> {
    if updates.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = updates.iter().map(|u| u.run_id).collect();
    let before: HashMap<i64, RunRow> = store
        .runs_by_ids(&ids)?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    apply_updates_to(config, store, updates, &before, now)
}

/// [`apply_updates`] to runs whose rows the caller has just read (`before`,
/// by run ID): reconciling reads the open runs anyway, and reading them
/// again for every poll of a `--wait` was a third of its CPU.
fn apply_updates_to(
    config: &Config,
    store: &mut Store,
    updates: &[RunUpdate],
    before: &HashMap<i64, RunRow>,
    now: i64,
) -> Result<(), StateError> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut unit_ids: Vec<i64> = before.values().map(|r| r.unit_id).collect();
    unit_ids.sort_unstable();
    unit_ids.dedup();
    let units = store.unit_rows(&unit_ids)?;
    let mut unit_updates = Vec::new();
    for update in updates {
        let (Some(run), Some(new_state)) = (before.get(&update.run_id), update.state) else {
            continue;
        };
        if run.state == new_state || new_state.in_flight() {
            continue;
        }
        let Some(pipeline) = config.pipeline(&run.key.pipeline) else {
            continue;
        };
        let mut ended = run.clone();
        ended.state = new_state;
        ended.ended_at = update.ended_at.or(run.ended_at);
        ended.max_rss_mb = update.max_rss_mb.or(run.max_rss_mb);
        ended.exit_code = update.exit_code.or(run.exit_code);
        let Some(unit) = units.get(&run.unit_id) else {
            continue;
        };
        let u = policy::on_run_end(&config.retry, pipeline, unit, &ended, now, jitter());
        if u != (crate::state::UnitUpdate {
            unit_id: unit.id,
            run_id: Some(run.id),
            ..Default::default()
        }) {
            unit_updates.push(u);
        }
    }
    store.apply(updates, &unit_updates, now)?;
    // Each ended run's provenance file gets its job, nodes and resources used.
    let ended: Vec<i64> = updates
        .iter()
        .filter(|u| before.contains_key(&u.run_id) && u.state.is_some_and(|s| !s.in_flight()))
        .map(|u| u.run_id)
        .collect();
    if !ended.is_empty() {
        let _ = crate::provenance::refresh_files(store, &ended);
    }
    Ok(())
}

/// Reconciles every open run of `executor` with what it reports.
pub fn reconcile(
    config: &Config,
    store: &mut Store,
    executor: &mut dyn Executor,
    now: i64,
) -> Result<Vec<RunUpdate>, ExecError> {
    let open = store.open_runs()?;
    reconcile_open(config, store, executor, open, now)
}

/// [`reconcile`] with the open runs already read (`open`: of any executor;
/// this one's are kept): [`submit::reconcile_all`] reads them once for all.
pub(crate) fn reconcile_open(
    config: &Config,
    store: &mut Store,
    executor: &mut dyn Executor,
    open: Vec<RunRow>,
    now: i64,
) -> Result<Vec<RunUpdate>, ExecError> {
    let open: Vec<RunRow> = open
        .into_iter()
        .filter(|r| r.executor == executor.kind())
        .collect();
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let updates = executor.reconcile(store, &open, now)?;
    // The executor only read the store: the rows are still the runs' own.
    let before: HashMap<i64, RunRow> = open.into_iter().map(|r| (r.id, r)).collect();
    apply_updates_to(config, store, &updates, &before, now)?;
    Ok(updates)
}

/// Effective resources of a unit: the pipeline's, with escalations after OOM/TIMEOUT.
pub fn effective_resources(config: &Config, snapshot: &Snapshot, key: &UnitKey) -> Resources {
    let mut res = config
        .pipeline(&key.pipeline)
        .map(|p| p.resources.clone())
        .unwrap_or(Resources {
            cpus: 1,
            mem_mb: 1024,
            time_s: 3600,
            gpus: 0,
        });
    if let Some(unit) = snapshot.units.get(key) {
        if let Some(mem) = unit.mem_mb {
            res.mem_mb = res.mem_mb.max(mem);
        }
        if let Some(time) = unit.time_s {
            res.time_s = res.time_s.max(time);
        }
    }
    res
}

pub fn scripts_dir(config: &Config, key: &UnitKey) -> PathBuf {
    config
        .paths
        .state_dir
        .join("scripts")
        .join(&key.pipeline)
        .join(key.dir_name())
}

pub fn logs_dir(config: &Config, key: &UnitKey) -> PathBuf {
    config
        .paths
        .state_dir
        .join("logs")
        .join(&key.pipeline)
        .join(key.dir_name())
}

/// A fresh run token: unique across studies and time, safe in `--comment`.
pub fn new_token() -> String {
    let bytes: [u8; 8] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("nfslurm-{hex}")
}

/// Sessions of the study for the script context, by subject.
pub fn session_infos(snapshot: &Snapshot) -> HashMap<Label, Vec<SessionInfo>> {
    let mut out: HashMap<Label, Vec<SessionInfo>> = HashMap::new();
    for s in snapshot.sessions.iter().filter(|s| s.valid) {
        out.entry(s.subject.clone()).or_default().push(SessionInfo {
            label: s.session.clone(),
            scan_id: s.scan_id.clone(),
            dicom_dir: s.dicom_dir.clone(),
        });
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("cannot render the script for `{unit}`")]
    Render {
        unit: UnitKey,
        #[source]
        source: Box<crate::render::RenderError>,
    },
    #[error("cannot write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A run as submitted, for the table `submit` prints.
#[derive(Debug, Clone)]
pub struct SubmittedRun {
    pub run_id: i64,
    pub key: UnitKey,
    pub reason: String,
    pub job_id: Option<String>,
    pub depends_on: Vec<String>,
    pub mem_mb: u64,
    pub time_s: u64,
}

/// One planned action, rendered: what its run's script and files will be.
#[derive(Debug, Clone)]
pub struct RenderedAction {
    pub resources: Resources,
    pub attempt: u32,
    pub token: String,
    pub script_path: PathBuf,
    pub log_path: PathBuf,
    /// The whole script, from the pipeline's template.
    pub script: String,
}

/// Renders every action of the plan (in plan order), each with a fresh
/// token, its effective resources and its next attempt number (from
/// `attempts`, 1 when absent). Writes nothing.
pub fn render_actions(
    config: &Config,
    plan: &Plan,
    snapshot: &Snapshot,
    renderer: &Renderer,
    attempts: &HashMap<UnitKey, u32>,
    kind: ExecutorKind,
) -> Result<Vec<RenderedAction>, SubmitError> {
    let sessions = session_infos(snapshot);
    let no_sessions = Vec::new();
    let mut out = Vec::with_capacity(plan.actions.len());
    for action in &plan.actions {
        let key = &action.key;
        let pipeline = config
            .pipeline(&key.pipeline)
            .expect("planned pipelines exist");
        let resources = effective_resources(config, snapshot, key);
        let attempt = attempts.get(key).copied().unwrap_or(1);
        let token = new_token();
        let script_path = scripts_dir(config, key).join(format!("attempt-{attempt}.sbatch"));
        let log_path = logs_dir(config, key).join(format!("attempt-{attempt}.out"));
        let subject_sessions = sessions.get(&key.subject).unwrap_or(&no_sessions);
        let session = key
            .session
            .as_ref()
            .and_then(|label| subject_sessions.iter().find(|s| &s.label == label));
        let work_dir = crate::render::work_dir_for(config, key);
        let input = ScriptInput {
            config,
            pipeline,
            unit: key,
            session,
            subject_sessions,
            resources: &resources,
            attempt,
            token: &token,
            output_path: &log_path,
            work_dir: &work_dir,
            executor: kind,
        };
        let script = renderer
            .render_script(&input)
            .map_err(|source| SubmitError::Render {
                unit: key.clone(),
                source: Box::new(source),
            })?;
        out.push(RenderedAction {
            resources,
            attempt,
            token,
            script_path,
            log_path,
            script,
        });
    }
    Ok(out)
}

/// Renders, records and submits the plan's actions (all of them, in order).
///
/// Every intent is written (`submitting`, with its token) in one transaction
/// before the executor is called, so a crash at any point leaves runs the
/// next sync can adopt or resubmit, never a job nobody knows about.
pub fn submit_actions(
    config: &Config,
    store: &mut Store,
    executor: &mut dyn Executor,
    plan: &Plan,
    snapshot: &Snapshot,
    renderer: &Renderer,
    now: i64,
) -> Result<(Vec<SubmittedRun>, SubmitOutcome), SubmitError> {
    if plan.actions.is_empty() {
        return Ok((Vec::new(), SubmitOutcome::default()));
    }
    // Submit limits: max_submitted for the study, max_concurrent per pipeline.
    let budget = submit_budget(config, store, executor.kind())?;
    let (limited, deferred) = crate::plan::limits::limit(plan, &budget, &store.subject_ages()?);
    if deferred > 0 {
        tracing::info!(
            deferred,
            "submit limits reached: the rest waits for a later sync"
        );
    }
    let plan = &limited;
    if plan.actions.is_empty() {
        return Ok((
            Vec::new(),
            SubmitOutcome {
                deferred,
                ..Default::default()
            },
        ));
    }
    let kind = executor.kind();
    let keys: Vec<&UnitKey> = plan.actions.iter().map(|a| &a.key).collect();
    let attempts = store.next_attempts(&keys)?;
    let rendered = render_actions(config, plan, snapshot, renderer, &attempts, kind)?;

    let mut new_runs = Vec::with_capacity(plan.actions.len());
    let mut scripts = Vec::with_capacity(plan.actions.len());
    let mut directives = Vec::with_capacity(plan.actions.len());
    for (action, r) in plan.actions.iter().zip(rendered) {
        let pipeline = config
            .pipeline(&action.key.pipeline)
            .expect("planned pipelines exist");
        let to_ref = |d: &Dependency| match d {
            Dependency::Planned(i) => -1 - *i as i64,
            Dependency::InFlight { run_id, .. } => *run_id,
        };
        new_runs.push(NewRun {
            key: action.key.clone(),
            token: r.token,
            executor: kind,
            state: RunState::Submitting,
            plan_reason: action.reason,
            cpus: r.resources.cpus,
            mem_mb: r.resources.mem_mb,
            time_limit_s: r.resources.time_s,
            gpus: r.resources.gpus,
            config_hash: pipeline.config_hash.clone(),
            inputs: action.inputs.iter().map(to_ref).collect(),
            depends_on: action.depends_on.iter().map(to_ref).collect(),
            script_path: r.script_path.clone(),
            log_path: r.log_path.clone(),
            cluster: match kind {
                ExecutorKind::Slurm => pipeline.scheduler.cluster.clone(),
                ExecutorKind::Local => None,
            },
        });
        directives.push(crate::executor::slurm::directives::shared(&r.script));
        scripts.push((r.script_path, r.log_path, r.script));
    }

    // Scripts first (kept, named by attempt), then the intents, then the executor.
    for (script_path, log_path, text) in &scripts {
        write_file(script_path, text)?;
        if let Some(dir) = log_path.parent() {
            fs::create_dir_all(dir).map_err(|source| SubmitError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
    }
    let ids = store.create_runs(&new_runs, now)?;
    let texts: Vec<String> = scripts.iter().map(|(_, _, t)| t.clone()).collect();
    crate::provenance::record_submission(config, store, &new_runs, &ids, &texts)?;
    let prepared: Vec<Prepared> = new_runs
        .iter()
        .zip(&ids)
        .zip(directives)
        .map(|((run, &run_id), directives)| Prepared {
            run_id,
            key: run.key.clone(),
            token: run.token.clone(),
            script_path: run.script_path.clone(),
            log_path: run.log_path.clone(),
            cpus: run.cpus,
            mem_mb: run.mem_mb,
            time_limit_s: run.time_limit_s,
            gpus: run.gpus,
            directives,
            retry: run.plan_reason == crate::model::Reason::Retry,
            depends_on: run
                .depends_on
                .iter()
                .map(|&d| if d < 0 { ids[(-1 - d) as usize] } else { d })
                .collect(),
        })
        .collect();
    let mut outcome =
        executor.submit(&mut EngineJournal::new(config, store, now), &prepared, now)?;
    outcome.deferred += deferred;
    if !outcome.withdrawn.is_empty() {
        store.withdraw_runs(&outcome.withdrawn, "not submitted", now)?;
    }
    // A refused submission leaves nothing behind: its intents are withdrawn
    // (no attempt spent; the next submit renders them afresh).
    for rejected in &outcome.rejected {
        let ids: Vec<i64> = rejected.runs.iter().map(|(id, _)| *id).collect();
        store.withdraw_runs(&ids, &format!("not submitted: {}", rejected.message), now)?;
    }
    let gone: std::collections::HashSet<i64> = outcome
        .withdrawn
        .iter()
        .copied()
        .chain(
            outcome
                .rejected
                .iter()
                .flat_map(|r| r.runs.iter().map(|(id, _)| *id)),
        )
        .collect();
    // Their scripts name runs that no longer exist.
    for p in prepared.iter().filter(|p| gone.contains(&p.run_id)) {
        let _ = fs::remove_file(&p.script_path);
    }
    let job_of: HashMap<i64, String> = outcome.submitted.iter().cloned().collect();
    let mut key_of: HashMap<i64, &UnitKey> = HashMap::new();
    for p in &prepared {
        key_of.insert(p.run_id, &p.key);
    }
    let open_jobs: HashMap<i64, String> = store
        .runs_by_ids(
            &prepared
                .iter()
                .flat_map(|p| p.depends_on.iter().copied())
                .filter(|id| !job_of.contains_key(id))
                .collect::<Vec<_>>(),
        )?
        .into_iter()
        .filter_map(|r| r.job_id.map(|j| (r.id, j)))
        .collect();
    let rows = prepared
        .iter()
        .zip(&new_runs)
        .filter(|(p, _)| !gone.contains(&p.run_id))
        .map(|(p, run)| SubmittedRun {
            run_id: p.run_id,
            key: p.key.clone(),
            reason: run.plan_reason.to_string(),
            job_id: job_of.get(&p.run_id).cloned(),
            depends_on: p
                .depends_on
                .iter()
                .filter_map(|d| job_of.get(d).or(open_jobs.get(d)).cloned())
                .collect(),
            mem_mb: run.mem_mb,
            time_s: run.time_limit_s,
        })
        .collect();
    Ok((rows, outcome))
}

/// What may be submitted now: `max_submitted` and `max_concurrent` less what is in flight.
fn submit_budget(
    config: &Config,
    store: &Store,
    executor: ExecutorKind,
) -> Result<crate::plan::limits::Budget, StateError> {
    let open = store.open_runs()?;
    let mine: Vec<_> = open.iter().filter(|r| r.executor == executor).collect();
    let total = (config.site.scheduler.max_submitted as usize).saturating_sub(mine.len());
    let arrays = executor == ExecutorKind::Slurm
        && config.site.scheduler.submission == crate::config::SubmissionMode::Arrays;
    let mut per_pipeline = HashMap::new();
    for p in &config.pipelines {
        // In arrays mode `max_concurrent` is the array's throttle (`%N`) instead.
        if let (Some(max), false) = (p.max_concurrent, arrays) {
            let in_flight = mine.iter().filter(|r| r.key.pipeline == p.name).count();
            per_pipeline.insert(p.name.clone(), (max as usize).saturating_sub(in_flight));
        }
    }
    Ok(crate::plan::limits::Budget {
        total,
        per_pipeline,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), SubmitError> {
    let err = |source| SubmitError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    fs::write(path, text).map_err(err)
}

/// One sbatch call of a submission, as `plan` and `render` show it before
/// anything is submitted.
#[derive(Debug, Clone)]
pub struct PreviewSubmission {
    pub pipeline: String,
    /// (index into the plan's actions, array task index): one member and no
    /// task index for a single job.
    pub members: Vec<(usize, Option<u32>)>,
    /// The members' shared `#SBATCH` directives.
    pub directives: Vec<String>,
    /// For an array: the earlier submissions (indices into the preview) it
    /// follows task by task (`aftercorr`).
    pub after: Vec<usize>,
    /// Why a unit goes as a single job, or why this array is split from the
    /// pipeline's first one; `None` for the pipeline's first array.
    pub note: Option<String>,
}

/// The sbatch calls `submit` would make for `plan` in arrays mode: every
/// action rendered (nothing written), shaped as the Slurm executor shapes
/// a batch. Also returns the rendered actions, in plan order.
pub fn preview_submissions(
    config: &Config,
    store: Option<&Store>,
    plan: &Plan,
    snapshot: &Snapshot,
    renderer: &Renderer,
) -> Result<(Vec<PreviewSubmission>, Vec<RenderedAction>), SubmitError> {
    use crate::executor::slurm::{arrays, directives};
    let keys: Vec<&UnitKey> = plan.actions.iter().map(|a| &a.key).collect();
    let attempts = match store {
        Some(s) => s.next_attempts(&keys)?,
        None => HashMap::new(),
    };
    let rendered = render_actions(
        config,
        plan,
        snapshot,
        renderer,
        &attempts,
        ExecutorKind::Slurm,
    )?;
    // Planned actions get negative run IDs; runs in flight keep theirs.
    let id_of = |i: usize| -1 - i as i64;
    let batch: Vec<Prepared> = plan
        .actions
        .iter()
        .zip(&rendered)
        .enumerate()
        .map(|(i, (a, r))| Prepared {
            run_id: id_of(i),
            key: a.key.clone(),
            token: r.token.clone(),
            script_path: r.script_path.clone(),
            log_path: r.log_path.clone(),
            cpus: r.resources.cpus,
            mem_mb: r.resources.mem_mb,
            time_limit_s: r.resources.time_s,
            gpus: r.resources.gpus,
            directives: directives::shared(&r.script),
            retry: a.reason == crate::model::Reason::Retry,
            depends_on: a
                .depends_on
                .iter()
                .map(|d| match d {
                    Dependency::Planned(j) => id_of(*j),
                    Dependency::InFlight { run_id, .. } => *run_id,
                })
                .collect(),
        })
        .collect();
    let shape = arrays::shape(&batch, 1000);
    let mut first_of: HashMap<String, Vec<String>> = HashMap::new();
    let mut placed: HashMap<i64, bool> = HashMap::new();
    let mut out = Vec::with_capacity(shape.len());
    for sub in shape {
        let members: Vec<(usize, Option<u32>)> = match &sub {
            arrays::Submission::Single(i) => vec![(*i, None)],
            arrays::Submission::Array { members, .. } => {
                members.iter().map(|&(i, t)| (i, Some(t))).collect()
            }
        };
        let p = &batch[members[0].0];
        let differs = |reference: &Vec<String>| {
            let added: Vec<&String> = p
                .directives
                .iter()
                .filter(|d| !reference.contains(d))
                .collect();
            let dropped: Vec<&String> = reference
                .iter()
                .filter(|d| !p.directives.contains(d))
                .collect();
            (!added.is_empty() || !dropped.is_empty()).then(|| {
                let list = |v: &[&String]| {
                    v.iter()
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                match (added.is_empty(), dropped.is_empty()) {
                    (false, false) => format!(
                        "its directives differ from the first `{}` submission's: {} instead of {}",
                        p.key.pipeline,
                        list(&added),
                        list(&dropped)
                    ),
                    (false, true) => format!(
                        "its directives differ from the first `{}` submission's: {} added",
                        p.key.pipeline,
                        list(&added)
                    ),
                    _ => format!(
                        "its directives differ from the first `{}` submission's: without {}",
                        p.key.pipeline,
                        list(&dropped)
                    ),
                }
            })
        };
        let reference = first_of.get(&p.key.pipeline);
        let note = match &sub {
            arrays::Submission::Single(_) if p.retry => {
                Some("a retry goes as a single job".to_string())
            }
            arrays::Submission::Single(_)
                if p.depends_on
                    .iter()
                    .any(|d| !placed.get(d).copied().unwrap_or(false)) =>
            {
                Some(
                    "an upstream unit is in flight or goes as a single job: `afterok` on its job"
                        .to_string(),
                )
            }
            arrays::Submission::Single(_) => {
                Some(reference.and_then(differs).unwrap_or_else(|| {
                    "no other unit has the same directives, resources and upstream arrays"
                        .to_string()
                }))
            }
            arrays::Submission::Array { .. } => reference.and_then(differs),
        };
        first_of
            .entry(p.key.pipeline.clone())
            .or_insert_with(|| p.directives.clone());
        let is_array = matches!(sub, arrays::Submission::Array { .. });
        for &(i, _) in &members {
            placed.insert(batch[i].run_id, is_array);
        }
        let after = match &sub {
            arrays::Submission::Array { after, .. } => after.clone(),
            arrays::Submission::Single(_) => Vec::new(),
        };
        out.push(PreviewSubmission {
            pipeline: p.key.pipeline.clone(),
            members,
            directives: p.directives.clone(),
            after,
            note,
        });
    }
    Ok((out, rendered))
}
