//! `nfslurm status`: the summary, `runs`, and `matrix`, for people and `--json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use serde_json::json;

use super::{Failure, SelectionSpec, Settings};
use crate::config::Config;
use crate::engine;
use crate::model::{Label, RunState, UnitState};
use crate::output;
use crate::plan::{self, Plan, Request, Selection};
use crate::state::{RunRow, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Summary,
    Runs,
    Matrix,
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
            return Err(Failure::user(
                format!("`--state {s}` is not a state"),
                Some(&format!("unit states: {}", words.join(", "))),
            ));
        }
    }
    match watch {
        None => render(settings, &config, view, &selection, states),
        Some(secs) => loop {
            let mut out = std::io::stdout();
            // Clear the screen and go home, then draw.
            let _ = write!(out, "\x1b[2J\x1b[H");
            println!(
                "{}",
                output::dim(&format!(
                    "every {secs}s: nfslurm status   {}",
                    output::local_time(engine::now())
                ))
            );
            render(settings, &config, view, &selection, states)?;
            let _ = out.flush();
            std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
        },
    }
}

fn render(
    settings: &Settings,
    config: &Config,
    view: View,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<i32> {
    let (store, snapshot) = super::read_snapshot(config)?;
    let plan = plan::plan(config, &snapshot, engine::now(), &Request::default());
    let wanted = |state: UnitState| states.is_empty() || states.iter().any(|s| s == state.as_str());
    match view {
        View::Summary => summary(settings, config, &plan, selection, &wanted),
        View::Matrix => matrix(settings, config, &plan, selection, &wanted),
        View::Runs => runs(settings, store.as_ref(), selection, states)?,
    }
    Ok(0)
}

fn summary(
    settings: &Settings,
    config: &Config,
    plan: &Plan,
    selection: &Selection,
    wanted: &dyn Fn(UnitState) -> bool,
) {
    let units: Vec<_> = plan
        .units
        .iter()
        .filter(|u| selection.matches(&u.key) && wanted(u.state))
        .collect();
    if settings.json {
        let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for u in &units {
            *counts
                .entry(u.key.pipeline.as_str())
                .or_default()
                .entry(u.state.as_str())
                .or_default() += 1;
        }
        let list: Vec<_> = units
            .iter()
            .map(|u| {
                json!({
                    "pipeline": u.key.pipeline,
                    "subject": u.key.subject,
                    "session": u.key.session,
                    "state": u.state.as_str(),
                    "reason": u.reason.map(|r| r.as_str()),
                    "detail": u.detail,
                    "blocked_by": u.blocked_by.as_ref().map(|k| k.to_string()),
                    "attempts": u.attempts,
                    "job_id": u.job_id,
                    "next_attempt_at": output::rfc3339(u.next_attempt_at),
                })
            })
            .collect();
        output::print_json(&json!({ "units": list, "counts": counts }));
        return;
    }
    if plan.units.is_empty() {
        println!("no sessions registered yet: run `nfslurm discover` or `nfslurm sync`");
        return;
    }
    let shown = [
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
    ];
    let mut header = vec!["pipeline", "level"];
    header.extend(shown.iter().map(|s| s.as_str()));
    header.push("total");
    let mut table = output::table(&header);
    for p in &config.pipelines {
        let mine: Vec<_> = units.iter().filter(|u| u.key.pipeline == p.name).collect();
        if mine.is_empty() && !selection.pipelines.is_empty() {
            continue;
        }
        let mut row = vec![p.name.clone(), p.level.to_string()];
        for s in shown {
            let n = mine.iter().filter(|u| u.state == s).count();
            row.push(if n == 0 {
                output::dim("-")
            } else if s == UnitState::Done {
                n.to_string()
            } else {
                output::unit_state(s).replace(s.as_str(), &n.to_string())
            });
        }
        row.push(mine.len().to_string());
        table.add_row(row);
    }
    output::print_table(&table);
    let attention: Vec<_> = units
        .iter()
        .filter(|u| {
            matches!(
                u.state,
                UnitState::Failed | UnitState::Retrying | UnitState::Blocked
            )
        })
        .collect();
    if !attention.is_empty() {
        println!();
        for u in attention.iter().take(20) {
            println!(
                "{} {}: {}",
                output::unit_state(u.state),
                u.key,
                u.detail.as_deref().unwrap_or("")
            );
        }
        if attention.len() > 20 {
            println!(
                "… and {} more: `nfslurm status --state failed`",
                attention.len() - 20
            );
        }
    }
}

fn matrix(
    settings: &Settings,
    config: &Config,
    plan: &Plan,
    selection: &Selection,
    wanted: &dyn Fn(UnitState) -> bool,
) {
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
    let pipelines: Vec<_> = config
        .pipelines
        .iter()
        .filter(|p| selection.pipelines.is_empty() || selection.pipelines.contains(&p.name))
        .collect();
    if settings.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(sub, ses)| {
                let states: BTreeMap<&str, Option<&str>> = pipelines
                    .iter()
                    .map(|p| {
                        let ses_key = match p.level {
                            crate::model::Level::Session => Some(ses.clone()),
                            crate::model::Level::Subject => None,
                        };
                        (
                            p.name.as_str(),
                            cell.get(&(p.name.clone(), sub.clone(), ses_key))
                                .map(|s| s.as_str()),
                        )
                    })
                    .collect();
                json!({"subject": sub, "session": ses, "states": states})
            })
            .collect();
        output::print_json(&json!({ "rows": list }));
        return;
    }
    let mut header: Vec<String> = vec!["subject".into(), "session".into()];
    header.extend(pipelines.iter().map(|p| truncate(&p.name, 10)));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut table = output::table(&header_refs);
    for (sub, ses) in &rows {
        let mut row = vec![format!("sub-{sub}"), format!("ses-{ses}")];
        let mut any = false;
        for p in &pipelines {
            let ses_key = match p.level {
                crate::model::Level::Session => Some(ses.clone()),
                crate::model::Level::Subject => None,
            };
            match cell.get(&(p.name.clone(), sub.clone(), ses_key)) {
                Some(&s) => {
                    any |= wanted(s);
                    row.push(output::unit_symbol(s));
                }
                None => row.push(" ".into()),
            }
        }
        if any {
            table.add_row(row);
        }
    }
    output::print_table(&table);
    let legend: Vec<String> = UnitState::ALL
        .iter()
        .map(|&s| format!("{} {}", output::unit_symbol(s), s.as_str()))
        .collect();
    println!();
    println!("{}", legend[..5].join("  "));
    println!("{}", legend[5..].join("  "));
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

fn efficiency(run: &RunRow) -> Option<String> {
    let rss = run.max_rss_mb?;
    (run.mem_mb > 0).then(|| format!("{}%", (rss as f64 * 100.0 / run.mem_mb as f64).round()))
}

pub fn run_json(run: &RunRow) -> serde_json::Value {
    json!({
        "run_id": run.id,
        "pipeline": run.key.pipeline,
        "subject": run.key.subject,
        "session": run.key.session,
        "attempt": run.attempt,
        "job_id": run.job_id,
        "token": run.token,
        "state": run.state.as_str(),
        "slurm_state": run.slurm_state,
        "exit_code": run.exit_code,
        "node": run.node,
        "submitted_at": output::rfc3339(run.submitted_at),
        "started_at": output::rfc3339(run.started_at),
        "ended_at": output::rfc3339(run.ended_at),
        "elapsed_s": run.elapsed_s,
        "max_rss_mb": run.max_rss_mb,
        "mem_mb": run.mem_mb,
        "cpus": run.cpus,
        "time_limit_s": run.time_limit_s,
        "reason": run.reason.clone().or_else(|| Some(run.plan_reason.clone())),
        "script": run.script_path,
        "log": run.log_path,
    })
}

fn runs(
    settings: &Settings,
    store: Option<&Store>,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<()> {
    let all = match store {
        Some(s) => s.all_runs()?,
        None => Vec::new(),
    };
    let runs: Vec<_> = all
        .into_iter()
        .filter(|r| selection.matches(&r.key))
        .filter(|r| states.is_empty() || states.iter().any(|s| s == r.state.as_str()))
        .collect();
    if settings.json {
        output::print_json(&json!({ "runs": runs.iter().map(run_json).collect::<Vec<_>>() }));
        return Ok(());
    }
    if runs.is_empty() {
        println!("no runs");
        return Ok(());
    }
    let mut table = output::table(&[
        "job", "unit", "try", "state", "slurm", "exit", "elapsed", "maxrss", "mem", "eff", "time",
        "reason",
    ]);
    for r in &runs {
        table.add_row(vec![
            r.job_id.clone().unwrap_or_else(|| "-".into()),
            r.key.to_string(),
            r.attempt.to_string(),
            output::run_state(r.state),
            r.slurm_state.clone().unwrap_or_default(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            r.elapsed_s.map(output::duration).unwrap_or_default(),
            r.max_rss_mb.map(output::megabytes).unwrap_or_default(),
            output::megabytes(r.mem_mb as i64),
            efficiency(r).unwrap_or_default(),
            crate::config::format_slurm_time(r.time_limit_s),
            r.reason.clone().unwrap_or_else(|| r.plan_reason.clone()),
        ]);
    }
    output::print_table(&table);
    Ok(())
}
