//! `plan`, `submit` and `sync`: the planner's verdict, and acting on it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Failure, SelectionSpec, Settings};
use crate::config::{Config, ExecutorKind};
use crate::engine::{self, SubmittedRun};
use crate::executor::ExecError;
use crate::model::UnitKey;
use crate::output;
use crate::plan::{self, Dependency, Plan, Request};
use crate::render::Renderer;
use crate::state::{self, LockGuard, Store, fingerprint};

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
    let open = store.open_runs()?;
    let mut all = Vec::new();
    for kind in [ExecutorKind::Local, ExecutorKind::Slurm] {
        if !open.iter().any(|r| r.executor == kind) {
            continue;
        }
        let mut exec = super::executor_of(config, kind);
        all.extend(
            engine::reconcile(config, store, exec.as_mut(), engine::now()).map_err(exec_failure)?,
        );
    }
    Ok(all)
}

fn dep_keys(
    plan: &Plan,
    deps: &[Dependency],
    store: Option<&Store>,
    with_jobs: bool,
) -> Vec<String> {
    deps.iter()
        .map(|d| match d {
            Dependency::Planned(i) => plan.actions[*i].key.to_string(),
            Dependency::InFlight { run_id, job_id } => {
                let key = store
                    .and_then(|s| s.run(*run_id).ok())
                    .map(|r| r.key.to_string())
                    .unwrap_or_else(|| format!("run:{run_id}"));
                match (job_id, with_jobs) {
                    (Some(j), true) => format!("{key} (job {j})"),
                    _ => key,
                }
            }
        })
        .collect()
}

pub fn print_plan(settings: &Settings, plan: &Plan, store: Option<&Store>) {
    if settings.json {
        // Streamed, one action at a time: a plan of 350,000 units would
        // otherwise be a JSON tree of a gigabyte. Fields in alphabetical
        // order, as `serde_json::Value` prints them elsewhere.
        #[derive(serde::Serialize)]
        struct ActionJson<'a> {
            depends_on: Vec<String>,
            depends_on_jobs: Vec<&'a str>,
            pipeline: &'a str,
            reason: &'a str,
            session: Option<&'a crate::model::Label>,
            subject: &'a crate::model::Label,
        }
        #[derive(serde::Serialize)]
        struct PlanJson<I: Iterator + Clone>
        where
            I::Item: serde::Serialize,
        {
            #[serde(serialize_with = "serialize_iter")]
            actions: I,
        }
        fn serialize_iter<I, S>(items: &I, serializer: S) -> Result<S::Ok, S::Error>
        where
            I: Iterator + Clone,
            I::Item: serde::Serialize,
            S: serde::Serializer,
        {
            serializer.collect_seq(items.clone())
        }
        let actions = plan.actions.iter().map(|a| ActionJson {
            depends_on: dep_keys(plan, &a.depends_on, store, false),
            depends_on_jobs: a
                .depends_on
                .iter()
                .filter_map(|d| match d {
                    Dependency::InFlight { job_id, .. } => job_id.as_deref(),
                    Dependency::Planned(_) => None,
                })
                .collect(),
            pipeline: &a.key.pipeline,
            reason: a.reason.as_str(),
            session: a.key.session.as_ref(),
            subject: &a.key.subject,
        });
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        output::mark_json_printed();
        if serde_json::to_writer_pretty(&mut out, &PlanJson { actions }).is_ok() {
            let _ = writeln!(out);
        }
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
                dep_keys(plan, &a.depends_on, store, true).join(", "),
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
                && (u.held
                    || matches!(
                        u.state,
                        crate::model::UnitState::Blocked
                            | crate::model::UnitState::Retrying
                            | crate::model::UnitState::Failed
                    ))
                && !u.due
        })
        .collect();
    // Pipelines switched off, with how many units they leave alone.
    let mut disabled: BTreeMap<&str, usize> = BTreeMap::new();
    for u in plan
        .units
        .iter()
        .filter(|u| u.state == crate::model::UnitState::Disabled)
    {
        *disabled.entry(u.key.pipeline.as_str()).or_default() += 1;
    }
    for (pipeline, n) in &disabled {
        println!(
            "disabled: `{pipeline}` (`enabled: false`): {} never submitted",
            output::count(*n, "unit", "units")
        );
    }
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
    print_submissions(settings, &config, store.as_ref(), &plan, &snapshot)?;
    Ok(0)
}

/// In arrays mode, the sbatch calls `submit` would make: each array with
/// its units, each single job with the reason it is one, and why arrays of a
/// pipeline are split (their `#SBATCH` directives differ). Text only: the
/// JSON plan stays one action per unit.
fn print_submissions(
    settings: &Settings,
    config: &Config,
    store: Option<&Store>,
    plan: &Plan,
    snapshot: &crate::state::Snapshot,
) -> anyhow::Result<()> {
    if settings.json
        || plan.actions.is_empty()
        || config.executor != ExecutorKind::Slurm
        || config.site.scheduler.submission != crate::config::SubmissionMode::Arrays
    {
        return Ok(());
    }
    let renderer =
        Renderer::new(config).map_err(|e| Failure::user(super::error_chain(&e), None))?;
    let (subs, _) = engine::preview_submissions(config, store, plan, snapshot, &renderer)?;
    println!(
        "as {} (arrays mode):",
        output::count(subs.len(), "sbatch call", "sbatch calls")
    );
    for sub in &subs {
        let units: Vec<String> = sub
            .members
            .iter()
            .map(|&(i, _)| plan.actions[i].key.to_string())
            .collect();
        let shown = if units.len() > 4 {
            format!("{}, … {}", units[..3].join(", "), units[units.len() - 1])
        } else {
            units.join(", ")
        };
        let head = if sub.members[0].1.is_some() {
            format!(
                "  array of {} `{}` units: {shown}",
                units.len(),
                sub.pipeline
            )
        } else {
            format!("  job {shown}")
        };
        match &sub.note {
            Some(note) => println!("{head} ({note})"),
            None => println!("{head}"),
        }
    }
    Ok(())
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
    /// Says on stderr what did not go as planned (stdout stays data).
    pub fn report_problems(&self, settings: &Settings) {
        // The last refusal is the command's error (unless the cluster went
        // unreachable, which is then); the others are said here, in order.
        let shown = if self.unreachable.is_none() {
            self.rejected.len().saturating_sub(1)
        } else {
            self.rejected.len()
        };
        for rejected in &self.rejected[..shown] {
            eprintln!("error: {}", rejected.message);
        }
        if self.deferred > 0 && !settings.quiet {
            eprintln!(
                "{} {} for a later sync: a submit limit was reached (`max_submitted`, `max_concurrent` or the cluster's own)",
                self.deferred,
                if self.deferred == 1 {
                    "unit waits"
                } else {
                    "units wait"
                }
            );
        }
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
    let plan = plan::plan(config, &snapshot, engine::now(), request);
    if plan.actions.is_empty() {
        return Ok(Submitted::default());
    }
    let renderer =
        Renderer::new(config).map_err(|e| Failure::user(super::error_chain(&e), None))?;
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
    Ok(Submitted {
        rows,
        unreachable: outcome.unreachable,
        rejected: outcome.rejected,
        deferred: outcome.deferred,
    })
}

/// Runs waiting and running now, over every executor: (pending, running).
fn queue_counts(store: &Store) -> anyhow::Result<(usize, usize)> {
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
        engine::now(),
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

fn print_submitted(
    settings: &Settings,
    rows: &[SubmittedRun],
    made_stale: &[UnitKey],
    (pending, running): (usize, usize),
    wait: bool,
) {
    if settings.json {
        let runs: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"run_id": r.run_id, "pipeline": r.key.pipeline, "subject": r.key.subject,
                       "session": r.key.session, "job_id": r.job_id, "reason": r.reason,
                       "depends_on": r.depends_on})
            })
            .collect();
        output::print_json(&json!({
            "submitted": runs,
            "made_stale": made_stale.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "queue": {"pending": pending, "running": running},
        }));
        return;
    }
    if settings.quiet {
        return;
    }
    if rows.is_empty() {
        println!("nothing to submit: every selected unit is done, in flight or waiting");
        println!(
            "hint: `nfslurm plan` says why each unit does not run; `--force` reruns done units"
        );
    } else {
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
            "{} submitted",
            output::count(
                rows.iter().filter(|r| r.job_id.is_some()).count(),
                "run",
                "runs"
            )
        );
    }
    if !made_stale.is_empty() {
        println!(
            "made stale downstream: {} (they rerun after it at the next `sync`)",
            output::count(made_stale.len(), "unit", "units")
        );
        for key in made_stale.iter().take(10) {
            println!("  {key}");
        }
        if made_stale.len() > 10 {
            println!("  … and {} more", made_stale.len() - 10);
        }
        println!("  to rerun them now: `nfslurm submit --all`");
    }
    if !wait {
        println!("queue: {pending} pending, {running} running");
        println!("follow: `nfslurm status --watch` (or `nfslurm submit --all --wait`)");
    }
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
        print_submissions(settings, &config, store.as_ref(), &plan, &snapshot)?;
        return Ok(0);
    }
    let lock = plan_lock(&config, true)?;
    let mut store = super::open_store(&config)?;
    reconcile_all(&config, &mut store)?;
    if store.sessions()?.is_empty() {
        return Err(Failure::user(
            "nothing to submit: no session is registered in this study yet",
            Some(
                "run `nfslurm discover` to register the sessions under `paths.dicom_root`, \
                 or `nfslurm sync` to discover and submit in one go",
            ),
        ));
    }
    // Done units before, to say which ones a forced rerun makes stale.
    let done_before: HashSet<UnitKey> = if force {
        plan::plan(
            &config,
            &store.snapshot()?,
            engine::now(),
            &Request::default(),
        )
        .units
        .into_iter()
        .filter(|u| u.state == crate::model::UnitState::Done)
        .map(|u| u.key)
        .collect()
    } else {
        HashSet::new()
    };
    let submitted = submit_request(&config, &mut store, &request)?;
    drop(lock);
    let made_stale = if force && !submitted.rows.is_empty() {
        made_stale(&config, &store, &done_before)?
    } else {
        Vec::new()
    };
    let queue = queue_counts(&store)?;
    // Over a refusal with nothing submitted, the error says it all.
    if !submitted.rows.is_empty() || submitted.rejected.is_empty() {
        print_submitted(settings, &submitted.rows, &made_stale, queue, wait);
    }
    submitted.report_problems(settings);
    if let Some(err) = submitted.failure(
        "the runs that reached the cluster are recorded; `nfslurm sync` submits the rest later",
    ) {
        return Err(err);
    }
    if wait {
        // Follow what was submitted and what of the selection was already in flight.
        let mut ids: Vec<i64> = submitted.rows.iter().map(|r| r.run_id).collect();
        for run in store.open_runs()? {
            if request.selection.matches(&run.key) && !ids.contains(&run.id) {
                ids.push(run.id);
            }
        }
        return follow(settings, &config, &mut store, &request, ids);
    }
    Ok(0)
}

/// A retry due within this long is waited for by `--wait`.
const MAX_RETRY_WAIT_S: i64 = 15 * 60;

/// Follows runs until they have all ended, submitting the retries that come
/// due (and waiting for those due within 15 minutes) on the way. Exit 3 when
/// a followed unit did not end `done`.
pub fn follow(
    settings: &Settings,
    config: &Config,
    store: &mut Store,
    request: &Request,
    mut ids: Vec<i64>,
) -> anyhow::Result<i32> {
    if ids.is_empty() {
        return Ok(0);
    }
    // A forced request is consumed by the submission that carried it: from
    // here on only retries of what is followed are submitted, or a `--force
    // --wait` would submit the forced units again each time their runs end.
    let request = &Request {
        selection: request.selection.clone(),
        force: false,
    };
    let multi = if settings.quiet || settings.json {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        indicatif::MultiProgress::new()
    };
    let style = indicatif::ProgressStyle::with_template("{prefix:>12} {bar:30} {pos}/{len} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    // One bar per pipeline, in config order.
    let mut bars: BTreeMap<usize, (String, indicatif::ProgressBar)> = BTreeMap::new();
    // Slurm: from the site's poll_interval, growing by half while nothing
    // changes, up to 8 times it (squeue and sacct are RPCs on a shared
    // controller). Local: the state is a file here, look often.
    let local = config.executor == ExecutorKind::Local;
    let base = if local {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(config.site.scheduler.poll_interval_s.max(1))
    };
    let cap = if local { base * 2 } else { base * 8 };
    let mut interval = base;
    let mut last_done = 0;
    // Off a terminal (cron, a pipe, CI logs) bars are hidden: say each change
    // on a line of its own instead.
    let lines =
        !settings.quiet && !settings.json && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut seen: std::collections::HashMap<i64, crate::model::RunState> =
        std::collections::HashMap::new();
    loop {
        {
            let _lock = plan_lock(config, true)?;
            reconcile_all(config, store)?;
        }
        let runs = store.runs_by_ids(&ids)?;
        if lines {
            for r in &runs {
                if seen.insert(r.id, r.state) != Some(r.state) {
                    let mut line = format!("{}: {}", r.key, r.state);
                    if let Some(job) = &r.job_id {
                        line.push_str(&format!(" (job {job})"));
                    }
                    if !r.state.in_flight()
                        && let Some(reason) = &r.reason
                    {
                        line.push_str(&format!(": {}", output::escape_controls(reason)));
                    }
                    eprintln!("{line}");
                }
            }
        }
        let done = runs.iter().filter(|r| !r.state.in_flight()).count();
        for (index, pipeline) in config.pipelines.iter().enumerate() {
            let mine: Vec<_> = runs
                .iter()
                .filter(|r| r.key.pipeline == pipeline.name)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (_, bar) = bars.entry(index).or_insert_with(|| {
                let bar = multi.add(indicatif::ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(pipeline.name.clone());
                (pipeline.name.clone(), bar)
            });
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &mine {
                *counts.entry(r.state.as_str()).or_default() += 1;
            }
            bar.set_length(mine.len() as u64);
            bar.set_position(mine.iter().filter(|r| !r.state.in_flight()).count() as u64);
            bar.set_message(
                counts
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        let mut wait_until: Option<Instant> = None;
        if done == runs.len() {
            let now = engine::now();
            let followed: HashSet<&UnitKey> = runs.iter().map(|r| &r.key).collect();
            let plan = plan::plan(config, &store.snapshot()?, now, request);
            // Retries (and their chains) of what is followed, and units of
            // the selection held until an upstream on another cluster was
            // done, are due: submit them and go on.
            if plan
                .actions
                .iter()
                .any(|a| followed.contains(&a.key) || request.selection.matches(&a.key))
            {
                let submitted = {
                    let _lock = plan_lock(config, true)?;
                    submit_request(config, store, request)?
                };
                submitted.report_problems(settings);
                if let Some(err) = submitted
                    .failure("the runs already submitted go on; `nfslurm sync` picks up the rest")
                {
                    multi.clear().ok();
                    return Err(err);
                }
                if !submitted.rows.is_empty() {
                    ids.extend(submitted.rows.iter().map(|r| r.run_id));
                    continue;
                }
            }
            let next_retry = plan
                .units
                .iter()
                .filter(|u| {
                    followed.contains(&u.key) && u.state == crate::model::UnitState::Retrying
                })
                .filter_map(|u| u.next_attempt_at)
                .filter(|&t| t - now <= MAX_RETRY_WAIT_S)
                .min();
            match next_retry {
                Some(t) => {
                    for (_, bar) in bars.values() {
                        bar.set_message(format!("next retry at {}", output::local_time(t)));
                    }
                    wait_until =
                        Some(Instant::now() + Duration::from_secs((t - now).max(1) as u64));
                }
                None => {
                    multi.clear().ok();
                    return Ok(finish_follow(settings, store, &plan, &followed));
                }
            }
        }
        // Poll less often while nothing changes, never slower than 8 poll intervals.
        interval = if done == last_done {
            (interval * 3 / 2).min(cap)
        } else {
            base
        };
        last_done = done;
        let until = wait_until.unwrap_or_else(|| Instant::now() + interval);
        while Instant::now() < until {
            for (_, bar) in bars.values() {
                bar.tick();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The end of `--wait`: how the followed units ended; 3 if any is not done.
fn finish_follow(
    settings: &Settings,
    store: &Store,
    plan: &Plan,
    followed: &HashSet<&UnitKey>,
) -> i32 {
    let units: Vec<_> = plan
        .units
        .iter()
        .filter(|u| followed.contains(&u.key))
        .collect();
    let not_done: Vec<_> = units
        .iter()
        .filter(|u| u.state != crate::model::UnitState::Done)
        .collect();
    if !settings.quiet && !settings.json {
        println!(
            "{} of {} units done",
            units.len() - not_done.len(),
            units.len()
        );
        for u in &not_done {
            println!(
                "  {} {}: {}",
                u.key,
                output::unit_state(u.state),
                u.detail.as_deref().unwrap_or("")
            );
            // Why, at a glance: the end of the failed attempt's log.
            let tail = u
                .last_run_id
                .and_then(|id| store.run(id).ok())
                .filter(|r| r.state.is_failure())
                .and_then(|r| output::log_tail(&r.log_path, output::LOG_TAIL_LINES));
            for line in tail.unwrap_or_default() {
                println!("    | {line}");
            }
        }
    }
    if not_done.is_empty() { 0 } else { 3 }
}

/// What `sync` reports: one line per change.
pub(super) fn describe_change(key: &UnitKey, row: &state::AuditRow) -> String {
    let old = row.old_state.as_deref().unwrap_or("-");
    if row.reason.is_empty() {
        format!("{key}: {old} -> {}", row.new_state)
    } else {
        format!("{key}: {old} -> {} ({})", row.new_state, row.reason)
    }
}

/// Where the previous sync stopped reporting changes (meta `sync.audit_cursor`).
const AUDIT_CURSOR: &str = "sync.audit_cursor";

/// What a sync with nothing to do prints: what [`run_sync`] prints when no
/// change, submission or problem came of it.
fn print_unchanged(settings: &Settings, unmapped: &[String], problems: &[String]) {
    if settings.json {
        output::print_json(&json!({"changes": [], "submitted": 0, "deferred": 0,
            "unmapped": unmapped.len(), "unreachable": null}));
    } else if !settings.quiet && settings.verbose > 0 {
        for scan_id in unmapped {
            println!("unmapped session folder `{scan_id}`: add it to the mapping CSV");
        }
        for p in problems {
            println!("mapping: {p}");
        }
    }
}

pub fn run_sync(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let Some(lock) = plan_lock(&config, false)? else {
        if settings.json {
            output::print_json(&json!({"locked": true}));
        } else if !settings.quiet {
            println!("another sync holds the lock; leaving this one to it");
        }
        return Ok(0);
    };
    let mut store = super::open_store(&config)?;
    // Changes since the previous sync, whoever made them (the local worker,
    // `submit`, `cancel`), are reported once, by the next sync.
    let cursor: i64 = match store.meta(AUDIT_CURSOR)? {
        Some(v) => v.parse().unwrap_or(0),
        None => store.last_audit_id()?,
    };
    let now = engine::now();
    let check = fingerprint::check(&config, &store, now)?;
    if let Some(mark) = check.unchanged() {
        tracing::info!("nothing changed since the last sync: nothing to reconcile or plan");
        print_unchanged(settings, &mark.unmapped, &mark.problems);
        let last_sync = (crate::notify::META_LAST_SYNC.into(), Some(now.to_string()));
        fingerprint::skipped(&mut store, &check, &[last_sync])?;
        return Ok(0);
    }
    // Reconcile first: what Slurm did is recorded even when the mapping sheet
    // or a template is broken and the rest of the sync stops with an error.
    let reconciled = reconcile_all(&config, &mut store);
    let unreachable_err = match reconciled {
        Ok(_) => None,
        Err(e) if e.downcast_ref::<Failure>().is_some_and(|f| f.code == 2) => {
            Some(format!("{e:#}"))
        }
        Err(e) => return Err(e),
    };
    let (report, _) = super::discover::discover_and_register(&config, &mut store, now)?;
    // With the controller unreachable nothing is submitted on a view of the
    // queue nfslurm could not refresh.
    let submitted = match unreachable_err {
        None => submit_request(&config, &mut store, &Request::default())?,
        Some(msg) => Submitted {
            unreachable: Some(msg),
            ..Default::default()
        },
    };
    drop(lock);

    let audit = store.audit_since(cursor)?;
    // Keys of the units the audit names only (a no-op sync names none).
    let mut named: Vec<i64> = audit.iter().filter_map(|(_, a)| a.unit_id).collect();
    named.sort_unstable();
    named.dedup();
    let keys = store.unit_keys_of(&named)?;
    if let Some((last, _)) = audit.last() {
        store.set_meta(AUDIT_CURSOR, &last.to_string())?;
    } else if store.meta(AUDIT_CURSOR)?.is_none() {
        store.set_meta(AUDIT_CURSOR, &cursor.to_string())?;
    }
    crate::notify::after_sync(&config, &store, submitted.unreachable.as_deref());
    let end = fingerprint::SyncEnd {
        quiet: submitted.rows.is_empty()
            && submitted.deferred == 0
            && submitted.rejected.is_empty()
            && submitted.unreachable.is_none(),
        audit_seen: audit.last().map_or(cursor, |(id, _)| *id),
        unmapped: report.unmapped.iter().map(|u| u.scan_id.clone()).collect(),
        problems: report.problems.iter().map(ToString::to_string).collect(),
    };
    if let Err(e) = fingerprint::record(&mut store, check, end) {
        tracing::warn!("the next sync plans in full: {e:#}");
    }
    if settings.json {
        let changes_json: Vec<_> = audit
            .iter()
            .map(|(_, a)| {
                json!({"unit": a.unit_id.and_then(|u| keys.get(&u)).map(|k| k.to_string()),
                       "scan_id": a.scan_id, "run_id": a.run_id, "old_state": a.old_state,
                       "new_state": a.new_state, "reason": a.reason, "at": output::rfc3339(Some(a.at))})
            })
            .collect();
        output::print_json(
            &json!({"changes": changes_json, "submitted": submitted.rows.len(),
            "deferred": submitted.deferred, "unmapped": report.unmapped.len(),
            "unreachable": submitted.unreachable}),
        );
    } else if !settings.quiet {
        for (_, a) in &audit {
            match (a.unit_id.and_then(|u| keys.get(&u)), &a.scan_id) {
                (Some(key), _) => println!("{}", describe_change(key, a)),
                (None, Some(scan)) => println!("session `{scan}`: {} ({})", a.new_state, a.reason),
                _ => {}
            }
        }
        if !submitted.rows.is_empty() {
            let n = submitted.rows.len();
            println!("{n} {} submitted", if n == 1 { "run" } else { "runs" });
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
    }
    submitted.report_problems(settings);
    if let Some(err) = submitted
        .failure("state is unchanged for what could not be checked; the next sync picks it up")
    {
        return Err(err);
    }
    Ok(0)
}
