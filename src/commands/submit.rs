//! `plan`, `submit` and `sync`: the planner's verdict, and acting on it.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde_json::json;

use super::{Failure, SelectionSpec, Settings};
use crate::config::{Config, ExecutorKind};
use crate::engine::{self, SubmittedRun};
use crate::model::UnitKey;
use crate::output;
use crate::plan::{self, Dependency, Plan, Request};
use crate::render::Renderer;
use crate::state::{self, Store};

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
    let mut store = super::open_store(&config)?;
    let lock = engine::lock::acquire(&config)?;
    let report = engine::submit::submit(&config, &mut store, &request, lock)?;
    let (submitted, made_stale, queue) = (report.submitted, report.made_stale, report.queue);
    // Over a refusal with nothing submitted, the error says it all.
    if !submitted.rows.is_empty() || submitted.rejected.is_empty() {
        print_submitted(settings, &submitted.rows, &made_stale, queue, wait);
    }
    report_problems(settings, &submitted);
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

/// Says on stderr what did not go as planned (stdout stays data).
pub fn report_problems(settings: &Settings, submitted: &engine::Submitted) {
    for line in submitted.problem_lines(settings.quiet) {
        eprintln!("{line}");
    }
}

/// What a person sees while `--wait` follows the runs: one bar per
/// pipeline on a terminal, one line per change elsewhere (cron, CI logs).
struct Progress {
    multi: indicatif::MultiProgress,
    style: indicatif::ProgressStyle,
    /// One bar per pipeline, in config order.
    bars: BTreeMap<usize, indicatif::ProgressBar>,
    pipelines: Vec<String>,
    lines: bool,
    seen: std::collections::HashMap<i64, crate::model::RunState>,
    quiet: bool,
}

impl Progress {
    fn new(settings: &Settings, config: &Config) -> Progress {
        let hidden = settings.quiet || settings.json;
        let multi = if hidden {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        } else {
            indicatif::MultiProgress::new()
        };
        let style =
            indicatif::ProgressStyle::with_template("{prefix:>12} {bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        Progress {
            multi,
            style,
            bars: BTreeMap::new(),
            pipelines: config.pipelines.iter().map(|p| p.name.clone()).collect(),
            // Off a terminal bars are hidden: say each change on a line instead.
            lines: !hidden && !std::io::IsTerminal::is_terminal(&std::io::stderr()),
            seen: std::collections::HashMap::new(),
            quiet: settings.quiet,
        }
    }
}

impl engine::wait::Observer for Progress {
    fn runs(&mut self, runs: &[crate::state::RunRow]) {
        if self.lines {
            for r in runs {
                if self.seen.insert(r.id, r.state) != Some(r.state) {
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
        for (index, pipeline) in self.pipelines.iter().enumerate() {
            let mine: Vec<_> = runs
                .iter()
                .filter(|r| &r.key.pipeline == pipeline)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let bar = self.bars.entry(index).or_insert_with(|| {
                let bar = self.multi.add(indicatif::ProgressBar::new(0));
                bar.set_style(self.style.clone());
                bar.set_prefix(pipeline.clone());
                bar
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
    }

    fn retry_at(&mut self, at: i64) {
        for bar in self.bars.values() {
            bar.set_message(format!("next retry at {}", output::local_time(at)));
        }
    }

    fn tick(&mut self) {
        for bar in self.bars.values() {
            bar.tick();
        }
    }

    fn submitted(&mut self, submitted: &engine::Submitted) {
        for line in submitted.problem_lines(self.quiet) {
            self.multi.suspend(|| eprintln!("{line}"));
        }
    }
}

/// Follows runs until they have all ended (the `wait` use case), showing
/// progress. Exit 3 when a followed unit did not end `done`.
pub fn follow(
    settings: &Settings,
    config: &Config,
    store: &mut Store,
    request: &Request,
    ids: Vec<i64>,
) -> anyhow::Result<i32> {
    let mut progress = Progress::new(settings, config);
    let waited = engine::wait::wait(config, store, request, ids, &mut progress);
    progress.multi.clear().ok();
    let report = waited?;
    Ok(finish_follow(settings, store, &report))
}

/// The end of `--wait`: how the followed units ended; 3 if any is not done.
fn finish_follow(settings: &Settings, store: &Store, report: &engine::wait::WaitReport) -> i32 {
    let units = &report.units;
    let not_done: Vec<_> = units
        .iter()
        .filter(|u| u.state != crate::model::UnitState::Done)
        .collect();
    if !settings.quiet && !settings.json && !units.is_empty() {
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

pub fn run_sync(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let printer = settings.printer();
    let Some(lock) = engine::lock::try_acquire(&config)? else {
        printer.result(
            || json!({"locked": true}),
            || "another sync holds the lock; leaving this one to it\n".into(),
        );
        return Ok(0);
    };
    let mut store = super::open_store(&config)?;
    let done = engine::sync::sync(&config, &mut store, lock)?;
    printer.result(
        || crate::views::sync_json(&done),
        || {
            let mut out = String::new();
            for a in &done.changes {
                match (a.unit_id.and_then(|u| done.keys.get(&u)), &a.scan_id) {
                    (Some(key), _) => out.push_str(&format!("{}\n", describe_change(key, a))),
                    (None, Some(scan)) => out.push_str(&format!(
                        "session `{scan}`: {} ({})\n",
                        a.new_state, a.reason
                    )),
                    _ => {}
                }
            }
            let n = done.submitted.rows.len();
            if n > 0 {
                out.push_str(&format!("{} submitted\n", output::count(n, "run", "runs")));
            }
            // Standing conditions are not changes: shown with -v (and by `discover`).
            if settings.verbose > 0 {
                for scan_id in &done.unmapped {
                    out.push_str(&format!(
                        "unmapped session folder `{scan_id}`: add it to the mapping CSV\n"
                    ));
                }
                for p in &done.problems {
                    out.push_str(&format!("mapping: {p}\n"));
                }
            }
            out
        },
    );
    let submitted = done.submitted;
    report_problems(settings, &submitted);
    if let Some(err) = submitted
        .failure("state is unchanged for what could not be checked; the next sync picks it up")
    {
        return Err(err);
    }
    Ok(0)
}
