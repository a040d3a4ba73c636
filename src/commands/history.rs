//! `nfslurm show sub-01` (one subject: its sessions and units) and
//! `nfslurm log` (the study's history of state changes, from the audit table).

use std::collections::HashMap;

use serde_json::json;

use super::{Failure, SelectionSpec, Settings, display_path, json_path};
use crate::engine;
use crate::model::{Label, UnitKey};
use crate::output;
use crate::plan::{self, Request, Selection};
use crate::state::{AuditRow, Store};

/// `sub-01` (or `sub-01/`): a subject, as `show` takes it. A bare label is
/// not taken, so that job IDs keep their meaning.
pub fn subject_target(target: &str) -> Option<Label> {
    let rest = target.trim_end_matches('/').strip_prefix("sub-")?;
    if rest.contains('/') {
        return None;
    }
    Label::subject(rest).ok()
}

pub fn show_subject(settings: &Settings, subject: &Label) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let store = Store::open_existing(&config.paths.state_dir)?;
    let snapshot = match &store {
        Some(s) => s.snapshot()?,
        None => Default::default(),
    };
    let sessions: Vec<_> = snapshot
        .sessions
        .iter()
        .filter(|s| &s.subject == subject)
        .collect();
    if sessions.is_empty() {
        let mut known: Vec<String> = snapshot
            .sessions
            .iter()
            .map(|s| format!("sub-{}", s.subject))
            .collect();
        known.sort();
        known.dedup();
        let hint = if known.is_empty() {
            "no session is registered yet: run `nfslurm discover`".to_string()
        } else {
            let more = if known.len() > 8 { ", …" } else { "" };
            known.truncate(8);
            format!("subjects: {}{more}", known.join(", "))
        };
        return Err(Failure::user(
            format!("no subject `sub-{subject}` in this study"),
            Some(&hint),
        ));
    }
    let plan = plan::plan(&config, &snapshot, engine::now(), &Request::default());
    let units: Vec<_> = plan
        .units
        .iter()
        .filter(|u| &u.key.subject == subject)
        .collect();
    // The last change of each unit, from its audit trail.
    let mut last_change: HashMap<&UnitKey, AuditRow> = HashMap::new();
    if let Some(store) = &store {
        for u in &units {
            if let Some(id) = store.unit_id(&u.key)?
                && let Some(row) = store.audit_of_unit(id)?.pop()
            {
                last_change.insert(&u.key, row);
            }
        }
    }
    let latest = last_change.values().map(|a| a.at).max();
    if settings.json {
        output::print_json(&json!({
            "subject": subject,
            "sessions": sessions.iter().map(|s| json!({
                "scan_id": s.scan_id, "session": s.session, "valid": s.valid,
                "problem": s.problem, "n_files": s.n_files, "dicom_dir": json_path(&s.dicom_dir),
            })).collect::<Vec<_>>(),
            "units": units.iter().map(|u| {
                let last = last_change.get(&u.key);
                json!({
                    "unit": u.key.to_string(), "pipeline": u.key.pipeline,
                    "session": u.key.session, "state": u.state.as_str(),
                    "reason": u.reason.map(|r| r.as_str()), "detail": u.detail,
                    "attempts": u.attempts, "job_id": u.job_id,
                    "last_change": last.map(|a| json!({
                        "at": output::rfc3339(Some(a.at)), "old_state": a.old_state,
                        "new_state": a.new_state, "reason": a.reason,
                    })),
                })
            }).collect::<Vec<_>>(),
            "last_change_at": output::rfc3339(latest),
        }));
        return Ok(0);
    }
    println!("{}", output::bold(&format!("sub-{subject}")));
    let valid = sessions.iter().filter(|s| s.valid).count();
    println!(
        "{}, {valid} valid; last change {}",
        output::count(sessions.len(), "session", "sessions"),
        latest.map_or("never".to_string(), output::local_time)
    );
    println!();
    let mut table = output::table(&["session", "scan ID", "files", "valid"]);
    for s in &sessions {
        table.add_row(vec![
            format!("ses-{}", s.session),
            output::escape_controls(&s.scan_id).into_owned(),
            s.n_files.to_string(),
            if s.valid { "yes".into() } else { "no".into() },
        ]);
    }
    output::print_table(&table);
    for s in sessions.iter().filter(|s| !s.valid) {
        println!(
            "  ses-{}: {}",
            s.session,
            s.problem.as_deref().unwrap_or("invalid")
        );
    }
    for s in &sessions {
        println!("  ses-{}: `{}`", s.session, display_path(&s.dicom_dir));
    }
    println!();
    let mut table = output::table(&["unit", "state", "tries", "job", "changed"]);
    for u in &units {
        table.add_row(vec![
            u.key.to_string(),
            output::unit_state(u.state),
            u.attempts.to_string(),
            u.job_id.clone().unwrap_or_else(|| "-".into()),
            last_change
                .get(&u.key)
                .map_or("-".to_string(), |a| short_time(a.at)),
        ]);
    }
    output::print_table(&table);
    for u in units.iter().filter(|u| u.detail.is_some()) {
        println!("  {}: {}", u.key, u.detail.as_deref().unwrap_or_default());
    }
    println!();
    println!("hint: `nfslurm show <unit>` shows a unit's attempts;");
    println!("      `nfslurm log --participant {subject}` the subject's history");
    Ok(0)
}

/// `MM-DD HH:MM`, local: short enough for an 80-column table.
fn short_time(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

/// `--since`: a duration back from now (`2h`, `3d`, `90m`), a date
/// (`2026-12-01`, local midnight) or an RFC 3339 time.
pub fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(at.timestamp());
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let midnight = day.and_hms_opt(0, 0, 0).map(|d| {
            d.and_local_timezone(chrono::Local)
                .earliest()
                .map(|l| l.timestamp())
        });
        if let Some(Some(at)) = midnight {
            return Ok(at);
        }
    }
    match crate::config::parse_duration(t) {
        Ok(secs) => Ok(now - secs as i64),
        Err(_) => Err(format!(
            "`--since {text}` is neither a duration (`2h`, `3d`) nor a date (`2026-12-01`) \
             nor a time (`2026-12-01T08:00:00Z`)"
        )),
    }
}

/// One line of the history, resolved for printing.
struct Entry<'a> {
    row: &'a AuditRow,
    unit: Option<&'a UnitKey>,
    /// For a session change: (subject, session) of its scan ID.
    session: Option<(&'a Label, &'a Label)>,
}

pub fn log(
    settings: &Settings,
    spec: &SelectionSpec,
    since: Option<&str>,
    limit: Option<usize>,
) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let selection: Selection = super::resolve_selection(&config, spec)?;
    let now = engine::now();
    let since_at = match since {
        Some(text) => Some(
            parse_since(text, now)
                .map_err(|e| Failure::user(e, Some("`--since 1d` shows the last 24 hours")))?,
        ),
        None => None,
    };
    let Some(store) = Store::open_existing(&config.paths.state_dir)? else {
        if settings.json {
            output::print_json(&json!({ "changes": [] }));
        } else {
            println!("no history yet: nothing was registered");
            println!("hint: `nfslurm discover` registers the sessions, `nfslurm sync` runs them");
        }
        return Ok(0);
    };
    let rows = match since_at {
        Some(at) => store.audit_from_time(at)?,
        None => store.audit_since(0)?,
    };
    let keys = store.unit_keys()?;
    let sessions = store.sessions()?;
    let by_scan: HashMap<&str, (&Label, &Label)> = sessions
        .iter()
        .map(|s| (s.scan_id.as_str(), (&s.subject, &s.session)))
        .collect();
    let mut entries: Vec<(i64, Entry<'_>)> = rows
        .iter()
        .map(|(id, row)| {
            (
                *id,
                Entry {
                    row,
                    unit: row.unit_id.and_then(|u| keys.get(&u)),
                    session: row.scan_id.as_deref().and_then(|s| by_scan.get(s).copied()),
                },
            )
        })
        .filter(|(_, e)| match (e.unit, e.session) {
            (Some(key), _) => selection.matches(key),
            // Session changes belong to no pipeline: shown unless the
            // selection names pipelines.
            (None, Some((subject, session))) => {
                selection.pipelines.is_empty()
                    && (selection.subjects.is_empty() || selection.subjects.contains(subject))
                    && (selection.sessions.is_empty() || selection.sessions.contains(session))
            }
            (None, None) => selection.is_all(),
        })
        .collect();
    if let Some(n) = limit
        && entries.len() > n
    {
        entries.drain(..entries.len() - n);
    }
    if settings.json {
        let changes: Vec<_> = entries
            .iter()
            .map(|(id, e)| {
                json!({
                    "id": id, "at": output::rfc3339(Some(e.row.at)),
                    "unit": e.unit.map(|k| k.to_string()),
                    "pipeline": e.unit.map(|k| k.pipeline.clone()),
                    "subject": e.unit.map(|k| &k.subject).or(e.session.map(|s| s.0)),
                    "session": e.unit.map_or(e.session.map(|s| s.1), |k| k.session.as_ref()),
                    "scan_id": e.row.scan_id, "run_id": e.row.run_id,
                    "old_state": e.row.old_state, "new_state": e.row.new_state,
                    "reason": e.row.reason,
                })
            })
            .collect();
        output::print_json(&json!({ "changes": changes }));
        return Ok(0);
    }
    if entries.is_empty() {
        println!("no state change matches");
        return Ok(0);
    }
    for (_, e) in &entries {
        let what = match (e.unit, &e.row.scan_id) {
            (Some(key), _) => key.to_string(),
            (None, Some(scan)) => format!("session `{}`", output::escape_controls(scan)),
            (None, None) => "study".to_string(),
        };
        let mut line = format!(
            "{}  {what}: {} -> {}",
            output::local_time(e.row.at),
            e.row.old_state.as_deref().unwrap_or("-"),
            e.row.new_state
        );
        if let Some(run) = e.row.run_id {
            line.push_str(&format!(" (run {run})"));
        }
        println!("{line}");
        if !e.row.reason.is_empty() {
            println!("    {}", output::escape_controls(&e.row.reason));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_dates_and_times() {
        let now = 1_000_000;
        assert_eq!(parse_since("2h", now), Ok(now - 7200));
        assert_eq!(parse_since("1d", now), Ok(now - 86_400));
        assert_eq!(
            parse_since("2026-12-01T08:00:00Z", now),
            Ok(chrono::DateTime::parse_from_rfc3339("2026-12-01T08:00:00Z")
                .unwrap()
                .timestamp())
        );
        assert!(parse_since("2026-12-01", now).is_ok());
        let err = parse_since("yesterday", now).unwrap_err();
        assert!(err.contains("`--since yesterday`"), "{err}");
    }

    #[test]
    fn a_subject_target_needs_the_sub_prefix_and_no_session() {
        assert_eq!(subject_target("sub-01"), Label::subject("01").ok());
        assert_eq!(subject_target("sub-01/"), Label::subject("01").ok());
        assert_eq!(subject_target("sub-01/ses-1"), None);
        assert_eq!(subject_target("01"), None);
        assert_eq!(subject_target("qsiprep/sub-01"), None);
        assert_eq!(subject_target("sub-0;1"), None);
    }
}
