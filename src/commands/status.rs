//! `nfslurm status`: the summary, `runs`, and `matrix`, for people and `--json`.
//!
//! Views are rendered to a string first, so that `--watch` can redraw in
//! place (cursor home, each line cleared to its end, the rest of the screen
//! cleared) without the flicker of clearing the whole screen. Colour only on
//! a terminal (see `output`). The JSON fields are a contract (docs/json.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};

use comfy_table::{CellAlignment, Table};
use serde_json::json;

use super::{Failure, SelectionSpec, Settings};
use crate::config::Config;
use crate::engine;
use crate::model::{Label, Level, RunState, UnitState};
use crate::output;
use crate::plan::{self, Plan, Request, Selection, UnitPlan};
use crate::state::{RunRow, Store};
use crate::views;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Summary,
    Runs,
    Matrix,
}

/// A rendered view: text for people or a JSON document.
enum Rendered {
    Text(String),
    Json(serde_json::Value),
}

pub fn run(
    settings: &Settings,
    view: View,
    spec: &SelectionSpec,
    states: &[String],
    watch: Option<u64>,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection = super::resolve_selection(&config, spec)?;
    for s in states {
        let ok = match view {
            View::Runs => RunState::parse(s).is_some() || UnitState::parse(s).is_some(),
            _ => UnitState::parse(s).is_some(),
        };
        if !ok {
            let words: Vec<&str> = UnitState::ALL.iter().map(|s| s.as_str()).collect();
            let runs: Vec<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
            let hint = match view {
                View::Runs => format!(
                    "run states: {}; unit states: {}",
                    runs.join(", "),
                    words.join(", ")
                ),
                _ => format!("unit states: {}", words.join(", ")),
            };
            return Err(Failure::user(
                format!("`--state {s}` is not a state"),
                Some(&hint),
            ));
        }
    }
    let Some(secs) = watch else {
        if settings.json && view == View::Summary {
            views::write_status_document(&config, &selection, states, std::io::stdout().lock())?;
            output::mark_json_printed();
            return Ok(0);
        }
        match render(settings, &config, view, &selection, states)? {
            Rendered::Text(text) => print!("{text}"),
            Rendered::Json(value) => output::print_json(&value),
        }
        return Ok(0);
    };
    let secs = secs.max(1);
    let live = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    if live && !settings.json {
        write!(out, "\x1b[2J")?;
    }
    loop {
        let rendered = render(settings, &config, view, &selection, states)?;
        let title = format!(
            "every {secs}s: nfslurm status   {}   (Ctrl-C to stop)",
            output::local_time(engine::now())
        );
        match rendered {
            // One document per line, for a consumer reading a stream.
            Rendered::Json(value) => writeln!(out, "{value}")?,
            Rendered::Text(text) if live => {
                // Home, then every line cleared to its end, then the rest.
                let mut frame = format!("\x1b[H{}\x1b[K\n\x1b[K\n", output::dim(&title));
                for line in text.lines() {
                    frame.push_str(line);
                    frame.push_str("\x1b[K\n");
                }
                frame.push_str("\x1b[J");
                write!(out, "{frame}")?;
            }
            Rendered::Text(text) => write!(out, "{title}\n\n{text}\n")?,
        }
        out.flush()?;
        std::thread::sleep(std::time::Duration::from_secs(secs));
    }
}

fn render(
    settings: &Settings,
    config: &Config,
    view: View,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<Rendered> {
    // The JSON documents are built in one place, shared with the server.
    if settings.json {
        match view {
            View::Summary => {
                return Ok(Rendered::Json(views::status_document(
                    config, selection, states,
                )?));
            }
            View::Runs => {
                return Ok(Rendered::Json(views::runs_document(
                    config, None, selection, states,
                )?));
            }
            View::Matrix => {}
        }
    }
    let (store, snapshot) = super::read_snapshot(config)?;
    let now = engine::now();
    // The runs view reads runs, not the plan.
    if view == View::Runs {
        return runs(config, store.as_ref(), selection, states, now);
    }
    let last_sync = store
        .as_ref()
        .map(crate::notify::last_sync)
        .unwrap_or_default();
    // Closed before the plan: the connection frees its page cache in large
    // blocks, and each large free makes the allocator walk every small block
    // freed before it (the snapshot's and the plan's, were it closed last).
    drop(store);
    let plan = plan::plan(config, &snapshot, now, &Request::default());
    let wanted = |state: UnitState| states.is_empty() || states.iter().any(|s| s == state.as_str());
    if view == View::Matrix {
        return Ok(matrix(settings, config, &plan, selection, &wanted));
    }
    let alerts = crate::alerts::tally(
        config,
        &plan,
        |k| selection.matches(k),
        |id| snapshot.runs.get(&id),
    );
    Ok(summary(
        config, &plan, &last_sync, selection, &wanted, &alerts,
    ))
}

/// The summary's state columns, in reading order (the run and unit states' words).
const SUMMARY_STATES: [UnitState; 11] = [
    UnitState::Done,
    UnitState::Running,
    UnitState::Queued,
    UnitState::Waiting,
    UnitState::Retrying,
    UnitState::Failed,
    UnitState::Blocked,
    UnitState::Stale,
    UnitState::Cancelled,
    UnitState::Invalid,
    UnitState::Disabled,
];

/// Short column headers, used when the full words do not fit.
fn short_header(state: UnitState) -> &'static str {
    match state {
        UnitState::Done => "done",
        UnitState::Running => "run",
        UnitState::Queued => "queue",
        UnitState::Waiting => "wait",
        UnitState::Retrying => "retry",
        UnitState::Failed => "fail",
        UnitState::Blocked => "block",
        UnitState::Stale => "stale",
        UnitState::Cancelled => "cancel",
        UnitState::Invalid => "inval",
        UnitState::Disabled => "off",
    }
}

/// Cuts `text` to `max` characters with `…` (on a terminal only).
fn fit(text: &str, max: Option<usize>) -> String {
    match max {
        Some(max) if text.chars().count() > max && max > 1 => {
            let mut s: String = text.chars().take(max - 1).collect();
            s.push('…');
            s
        }
        _ => text.to_string(),
    }
}

fn ago(secs: i64) -> String {
    if secs < 60 {
        "just now".into()
    } else {
        format!("{} ago", output::duration(secs))
    }
}

/// How many of `units` each pipeline has in each state, counted in one
/// pass: the summary asks for every pipeline and state, for each table
/// width it tries, and 35,000 units each time added up.
fn state_counts<'a>(units: &[&'a UnitPlan]) -> HashMap<(&'a str, UnitState), usize> {
    let mut counts = HashMap::new();
    for u in units {
        *counts
            .entry((u.key.pipeline.as_str(), u.state))
            .or_default() += 1;
    }
    counts
}

fn summary(
    config: &Config,
    plan: &Plan,
    last: &crate::notify::LastSync,
    selection: &Selection,
    wanted: &dyn Fn(UnitState) -> bool,
    alerts: &[crate::alerts::Tally],
) -> Rendered {
    let units: Vec<&UnitPlan> = plan
        .units
        .iter()
        .filter(|u| selection.matches(&u.key) && wanted(u.state))
        .collect();
    let mut out = String::new();
    if plan.units.is_empty() {
        out.push_str("no sessions registered yet: run `nfslurm discover` or `nfslurm sync`\n");
        return Rendered::Text(out);
    }
    let pipelines: Vec<_> = config
        .pipelines
        .iter()
        .filter(|p| selection.pipelines.is_empty() || selection.pipelines.contains(&p.name))
        .collect();
    let counts = state_counts(&units);
    let count =
        |pipeline: &str, state: UnitState| counts.get(&(pipeline, state)).copied().unwrap_or(0);
    // Only the states some pipeline has: the table stays narrow.
    let shown: Vec<UnitState> = SUMMARY_STATES
        .into_iter()
        .filter(|&s| pipelines.iter().any(|p| count(&p.name, s) > 0))
        .collect();
    let build = |short: bool, with_level: bool| {
        let mut header: Vec<&str> = vec!["pipeline"];
        if with_level {
            header.push("level");
        }
        header.extend(
            shown
                .iter()
                .map(|&s| if short { short_header(s) } else { s.as_str() }),
        );
        header.push("total");
        let mut table = output::table(&header);
        for p in &pipelines {
            let mut row = vec![p.name.clone()];
            if with_level {
                row.push(p.level.to_string());
            }
            for &s in &shown {
                let n = count(&p.name, s);
                row.push(if n == 0 {
                    output::dim("-")
                } else if s == UnitState::Done {
                    n.to_string()
                } else {
                    output::unit_state(s).replace(s.as_str(), &n.to_string())
                });
            }
            let total: usize = UnitState::ALL.iter().map(|&s| count(&p.name, s)).sum();
            row.push(total.to_string());
            table.add_row(row);
        }
        let first_count = if with_level { 2 } else { 1 };
        for i in first_count..header.len() {
            if let Some(col) = table.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        table
    };
    let max = output::width();
    let table = [(false, true), (false, false), (true, false)]
        .into_iter()
        .map(|(short, level)| build(short, level))
        .find(|t| output::table_width(t) <= max)
        .unwrap_or_else(|| build(true, false));
    out.push_str(&output::table_text(&table));

    // What needs a person: failures one per line, blocked units grouped by
    // the unit that blocks them, retries with their time.
    let fit_to = output::terminal_width();
    let mut notes: Vec<String> = Vec::new();
    for u in units.iter().filter(|u| u.state == UnitState::Failed) {
        notes.push(format!(
            "{} {}: {}",
            output::unit_state(u.state),
            u.key,
            u.detail.as_deref().unwrap_or("attempts used up")
        ));
    }
    let mut blocked: BTreeMap<String, usize> = BTreeMap::new();
    for u in units.iter().filter(|u| u.state == UnitState::Blocked) {
        let by = u
            .blocked_by
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_else(|| "an upstream unit".into());
        *blocked.entry(by).or_default() += 1;
    }
    for (by, n) in &blocked {
        let what = if *n == 1 { "unit waits" } else { "units wait" };
        notes.push(format!(
            "{} {n} {what} on {by}",
            output::unit_state(UnitState::Blocked)
        ));
    }
    // Held by nfslurm until an upstream on another cluster is done.
    for u in units.iter().filter(|u| u.held) {
        notes.push(format!(
            "{} {}: {}",
            output::unit_state(u.state),
            u.key,
            u.detail.as_deref().unwrap_or("")
        ));
    }
    for u in units.iter().filter(|u| u.state == UnitState::Retrying) {
        notes.push(format!(
            "{} {}: {}",
            output::unit_state(u.state),
            u.key,
            u.detail.as_deref().unwrap_or("")
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        let limit = 12;
        for n in notes.iter().take(limit) {
            out.push_str(&fit(n, fit_to));
            out.push('\n');
        }
        if notes.len() > limit {
            out.push_str(&format!(
                "… and {} more: `nfslurm status --state failed`, `--state blocked`\n",
                notes.len() - limit
            ));
        }
        if units.iter().any(|u| u.state == UnitState::Failed) {
            out.push_str(&output::dim(
                "`nfslurm show UNIT` tells why; `nfslurm retry --failed` runs failed units again",
            ));
            out.push('\n');
        }
    }

    // Known causes, from the pipelines' `alert_patterns`.
    if !alerts.is_empty() {
        out.push('\n');
        out.push_str("alerts in the logs of failed runs:\n");
        for a in alerts {
            let mut shown: Vec<&str> = a.units.iter().take(3).map(String::as_str).collect();
            if a.units.len() > 3 {
                shown.push("…");
            }
            out.push_str(&fit(
                &format!(
                    "  {}: `{}` in {}",
                    a.pipeline,
                    output::escape_controls(&a.pattern),
                    output::count(a.units.len(), "unit", "units"),
                ),
                fit_to,
            ));
            out.push('\n');
            out.push_str(&format!("    {}\n", shown.join(", ")));
        }
    }

    // The queue and the last sync.
    let in_flight = units
        .iter()
        .filter(|u| matches!(u.state, UnitState::Queued | UnitState::Running))
        .count();
    let mut footer = vec![format!(
        "{in_flight} {} in flight (cap {})",
        if in_flight == 1 { "job" } else { "jobs" },
        config.site.scheduler.max_submitted
    )];
    match last.at {
        Some(at) => footer.push(format!(
            "last sync {} ({})",
            output::local_time(at),
            ago(engine::now() - at)
        )),
        None => footer.push("no sync yet".into()),
    }
    out.push('\n');
    out.push_str(&output::dim(&footer.join(" · ")));
    out.push('\n');
    if last.unreachable_count > 0 {
        let why = last.unreachable_error.as_deref().unwrap_or("no answer");
        let syncs = if last.unreachable_count == 1 {
            "the last sync".to_string()
        } else {
            format!("the last {} syncs", last.unreachable_count)
        };
        out.push_str(&fit(
            &output::yellow(&format!("the cluster did not answer {syncs}: {why}")),
            fit_to,
        ));
        out.push('\n');
    }
    Rendered::Text(out)
}

fn matrix(
    settings: &Settings,
    config: &Config,
    plan: &Plan,
    selection: &Selection,
    wanted: &dyn Fn(UnitState) -> bool,
) -> Rendered {
    // Rows: one per (subject, session); subject-level units fill every row of their subject.
    let mut rows: BTreeSet<(Label, Label)> = BTreeSet::new();
    let mut cell: BTreeMap<(String, Label, Option<Label>), UnitState> = BTreeMap::new();
    for u in &plan.units {
        if !selection.matches(&u.key) {
            continue;
        }
        if let Some(ses) = &u.key.session {
            rows.insert((u.key.subject.clone(), ses.clone()));
        }
        cell.insert(
            (
                u.key.pipeline.clone(),
                u.key.subject.clone(),
                u.key.session.clone(),
            ),
            u.state,
        );
    }
    // A subject with only subject-level units still gets its row.
    let with_rows: BTreeSet<Label> = rows.iter().map(|(s, _)| s.clone()).collect();
    let lone: Vec<Label> = cell
        .keys()
        .filter(|(_, sub, ses)| ses.is_none() && !with_rows.contains(sub))
        .map(|(_, sub, _)| sub.clone())
        .collect();
    let pipelines: Vec<_> = config
        .pipelines
        .iter()
        .filter(|p| selection.pipelines.is_empty() || selection.pipelines.contains(&p.name))
        .collect();
    let state_of = |p: &crate::config::Pipeline, sub: &Label, ses: Option<&Label>| {
        let ses_key = match p.level {
            Level::Session => ses.cloned(),
            Level::Subject => None,
        };
        cell.get(&(p.name.clone(), sub.clone(), ses_key)).copied()
    };
    if settings.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(sub, ses)| {
                let states: BTreeMap<&str, Option<&str>> = pipelines
                    .iter()
                    .map(|p| {
                        (
                            p.name.as_str(),
                            state_of(p, sub, Some(ses)).map(|s| s.as_str()),
                        )
                    })
                    .collect();
                json!({"subject": sub, "session": ses, "states": states})
            })
            .collect();
        return Rendered::Json(json!({ "rows": list }));
    }
    let mut out = String::new();
    if cell.is_empty() {
        out.push_str("no sessions registered yet: run `nfslurm discover` or `nfslurm sync`\n");
        return Rendered::Text(out);
    }
    let mut header: Vec<String> = vec!["subject".into(), "session".into()];
    header.extend(pipelines.iter().map(|p| fit(&p.name, Some(10))));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = output::table(&header_refs);
    let mut present: BTreeSet<UnitState> = BTreeSet::new();
    let mut last_subject: Option<Label> = None;
    let mut all_rows: Vec<(Label, Option<Label>)> = rows
        .iter()
        .map(|(s, e)| (s.clone(), Some(e.clone())))
        .collect();
    all_rows.extend(lone.into_iter().map(|s| (s, None)));
    all_rows.sort();
    all_rows.dedup();
    for (sub, ses) in &all_rows {
        let cells: Vec<Option<UnitState>> = pipelines
            .iter()
            .map(|p| state_of(p, sub, ses.as_ref()))
            .collect();
        if !cells.iter().flatten().any(|&s| wanted(s)) {
            continue;
        }
        // The subject is written once, on its first row.
        let subject = if last_subject.as_ref() == Some(sub) {
            String::new()
        } else {
            format!("sub-{sub}")
        };
        last_subject = Some(sub.clone());
        let mut row = vec![
            subject,
            ses.as_ref().map(|s| format!("ses-{s}")).unwrap_or_default(),
        ];
        for c in cells {
            match c {
                Some(s) => {
                    present.insert(s);
                    row.push(output::unit_symbol(s));
                }
                None => row.push(String::new()),
            }
        }
        table.add_row(row);
    }
    for i in 2..header_refs.len() {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Center);
        }
    }
    out.push_str(&output::table_text(&table));
    // The legend: the states on screen, in the documented order, wrapped to fit.
    let entries: Vec<String> = UnitState::ALL
        .iter()
        .filter(|s| present.contains(s))
        .map(|&s| format!("{} {}", output::unit_symbol(s), s.as_str()))
        .collect();
    out.push('\n');
    let max = output::width();
    let mut line = String::new();
    let mut line_width = 0;
    for e in entries {
        let w = output::text_width(&e);
        if line_width > 0 && line_width + 2 + w > max {
            out.push_str(&line);
            out.push('\n');
            line.clear();
            line_width = 0;
        }
        if line_width > 0 {
            line.push_str("  ");
            line_width += 2;
        }
        line.push_str(&e);
        line_width += w;
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    Rendered::Text(out)
}

/// MaxRSS as a share of the memory asked for.
fn efficiency(run: &RunRow) -> Option<u64> {
    let rss = run.max_rss_mb?;
    (run.mem_mb > 0).then(|| (rss as f64 * 100.0 / run.mem_mb as f64).round() as u64)
}

/// Elapsed time: as recorded, or so far for a running job.
fn elapsed(run: &RunRow, now: i64) -> Option<i64> {
    run.elapsed_s.or_else(|| {
        (run.state == RunState::Running)
            .then_some(run.started_at)
            .flatten()
            .map(|t| now - t)
    })
}

/// What a person needs to know about why a run is in its state.
fn run_reason(run: &RunRow) -> String {
    let mut reason = run.reason.clone().unwrap_or_default();
    if let Some(code) = run.exit_code
        && code != 0
        && !reason.contains("exit")
    {
        reason = if reason.is_empty() {
            format!("exit {code}")
        } else {
            format!("exit {code}: {reason}")
        };
    }
    if reason.is_empty() {
        reason = run.plan_reason.to_string();
    }
    reason
}

/// The columns of the runs table, in order.
const RUN_COLUMNS: [&str; 7] = ["job", "unit", "try", "state", "elapsed", "memory", "reason"];

/// MaxRSS against the memory asked for, and the share (red for an OOM).
fn run_memory(r: &RunRow) -> String {
    let memory = match (r.max_rss_mb, efficiency(r)) {
        (Some(rss), Some(eff)) => format!(
            "{}/{} {eff:>3}%",
            output::megabytes(rss),
            output::megabytes(r.mem_mb as i64)
        ),
        _ => format!("-/{}", output::megabytes(r.mem_mb as i64)),
    };
    if r.state == RunState::Oom {
        output::red(&memory)
    } else {
        memory
    }
}

/// The runs table with the first `columns` of [`RUN_COLUMNS`].
fn runs_table(runs: &[RunRow], now: i64, columns: usize) -> Table {
    let mut table = output::table(&RUN_COLUMNS[..columns]);
    for r in runs {
        let mut row = vec![
            r.job_id.clone().unwrap_or_else(|| "-".into()),
            r.key.to_string(),
            r.attempt.to_string(),
            output::run_state(r.state),
            elapsed(r, now).map(output::duration).unwrap_or_default(),
            run_memory(r),
            run_reason(r),
        ];
        row.truncate(columns);
        table.add_row(row);
    }
    for i in [2, 4, 5].into_iter().filter(|&i| i < columns) {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The reason column is never narrower than this: below it, each reason
/// goes on its own line under its run.
const MIN_REASON_WIDTH: usize = 24;

/// The runs table as text for a terminal `width` columns wide (`None`: no
/// limit). The reason is the last column, wrapped at word boundaries to fit.
/// When the other columns leave it less than [`MIN_REASON_WIDTH`], each
/// run's reason goes on the lines under it instead, indented, and when the
/// table is still too wide, its memory too. Nothing is cut.
fn runs_text(runs: &[RunRow], now: i64, width: Option<usize>) -> String {
    let Some(width) = width else {
        return output::table_text(&runs_table(runs, now, 7));
    };
    if output::table_width(&runs_table(runs, now, 6)) + 2 + MIN_REASON_WIDTH <= width {
        let mut table = runs_table(runs, now, 7);
        output::wrap_to_width(&mut table, 6, Some(width));
        return output::table_text(&table);
    }
    let mut columns = 6;
    let mut table = runs_table(runs, now, columns);
    if output::table_width(&table) > width {
        columns = 5;
        table = runs_table(runs, now, columns);
    }
    // No column wraps, so each run is one line of the table, after the header's.
    let text = output::table_text(&table);
    let mut lines = text.lines();
    let mut out = String::new();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (line, run) in lines.zip(runs) {
        out.push_str(line);
        out.push('\n');
        let below = if columns == 5 {
            format!("memory {}; {}", run_memory(run), run_reason(run))
        } else {
            run_reason(run)
        };
        for part in output::wrap_words(&below, width.saturating_sub(4).max(20)) {
            out.push_str("    ");
            out.push_str(&part);
            out.push('\n');
        }
    }
    out
}

fn runs(
    config: &Config,
    store: Option<&Store>,
    selection: &Selection,
    states: &[String],
    now: i64,
) -> anyhow::Result<Rendered> {
    let runs = match store {
        Some(store) => views::select_runs(config, Some(store), selection, states)?,
        None => Vec::new(),
    };
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("no runs\n");
        return Ok(Rendered::Text(out));
    }
    out.push_str(&runs_text(&runs, now, output::terminal_width()));
    // Per pipeline: the most memory a successful run used, against the ask.
    let mut peaks: Vec<(&str, i64, u64)> = Vec::new();
    for p in &config.pipelines {
        let peak = runs
            .iter()
            .filter(|r| r.key.pipeline == p.name && r.state == RunState::Succeeded)
            .filter_map(|r| r.max_rss_mb.map(|rss| (rss, r.mem_mb)))
            .max_by_key(|(rss, _)| *rss);
        if let Some((rss, mem)) = peak {
            peaks.push((p.name.as_str(), rss, mem));
        }
    }
    let by_state = {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &runs {
            *counts.entry(r.state.as_str()).or_default() += 1;
        }
        counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push('\n');
    let noun = if runs.len() == 1 { "run" } else { "runs" };
    out.push_str(&output::dim(&format!("{} {noun}: {by_state}", runs.len())));
    out.push('\n');
    if !peaks.is_empty() {
        let list: Vec<String> = peaks
            .iter()
            .map(|(p, rss, mem)| {
                format!(
                    "{p} {}/{}",
                    output::megabytes(*rss),
                    output::megabytes(*mem as i64)
                )
            })
            .collect();
        out.push_str(&output::dim(&format!(
            "peak memory of successful runs: {}",
            list.join(", ")
        )));
        out.push('\n');
    }
    Ok(Rendered::Text(out))
}

#[cfg(test)]
mod runs_layout_tests {
    use super::*;
    use crate::model::UnitKey;

    fn key(text: &str) -> UnitKey {
        UnitKey::parse(text).unwrap()
    }

    /// The widest runs a study shows: array task IDs, a long unit key,
    /// `upstream_failed`, an OOM with its memory figures, a long reason.
    fn wide_runs() -> Vec<RunRow> {
        let mut oom = RunRow::example(1, key("bids/sub-0001/ses-2"));
        oom.job_id = Some("1234567_12".into());
        oom.state = RunState::Oom;
        oom.exit_code = Some(253);
        oom.elapsed_s = Some(3725);
        oom.max_rss_mb = Some(7900);
        oom.mem_mb = 8192;
        oom.reason = Some("out of memory (requested 8192 MB, MaxRSS 7900 MB)".into());
        let mut failed = RunRow::example(2, key("qsirecon/sub-0001/ses-2"));
        failed.job_id = Some("1234570".into());
        failed.state = RunState::UpstreamFailed;
        failed.attempt = 10;
        let mut missing = RunRow::example(3, key("qsiprep/sub-0001"));
        missing.state = RunState::Failed;
        missing.exit_code = Some(127);
        missing.reason = Some("exit code 127: bash: line 3: qsiprpe: command not found".into());
        vec![oom, failed, missing]
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_runs_table_fits_80_columns_and_cuts_no_reason() {
        let runs = wide_runs();
        for width in [80, 100, 132] {
            let text = runs_text(&runs, 0, Some(width));
            for line in text.lines() {
                assert!(
                    output::text_width(line) <= width,
                    "{width}: {line:?}\n{text}"
                );
            }
            let all = words(&text);
            for reason in runs.iter().map(run_reason) {
                for w in words(&reason) {
                    assert!(all.contains(&w), "{width}: `{w}` of `{reason}` in\n{text}");
                }
            }
            assert!(!text.contains('…'), "{text}");
        }
        // Off a terminal: one line per run, the reason last.
        let text = runs_text(&runs, 0, None);
        assert_eq!(text.lines().count(), 1 + runs.len(), "{text}");
        assert!(text.lines().nth(3).unwrap().ends_with("command not found"));
    }
}
