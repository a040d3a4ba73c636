//! The study's state as JSON documents, read-only: what `status --json` and
//! `status runs --json` print, and what the dashboard and the server read.
//!
//! One place builds each document so that every reader sees the same fields
//! (a contract: docs/json.md). Nothing here writes to the state.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::Config;
use crate::engine;
use crate::output;
use crate::plan::{self, Request, Selection, UnitPlan};
use crate::state::{RunRow, Snapshot, Store};

/// The document of `status --json`: every selected unit with its state,
/// counts per pipeline and state, and the alerts found in failed runs' logs.
/// `states` keeps only units in those states (unit state words); empty keeps all.
pub fn status_document(
    config: &Config,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<Value> {
    let (_store, snapshot) = crate::engine::read_snapshot(config)?;
    let plan = plan::plan(config, &snapshot, engine::now(), &Request::default());
    Ok(status_document_of(
        config, &snapshot, &plan, selection, states,
    ))
}

/// Writes [`status_document`] to `out` as `serde_json::to_string_pretty`
/// would print it (the same bytes), one unit at a time: tens of thousands
/// of units built as `Value`s first are tens of MB and a good part of the
/// time of `status --json`.
pub fn write_status_document(
    config: &Config,
    selection: &Selection,
    states: &[String],
    out: impl std::io::Write,
) -> anyhow::Result<()> {
    let (store, snapshot) = crate::engine::read_snapshot(config)?;
    // Closed before the plan: the connection frees its page cache in large
    // blocks, and each large free makes the allocator walk every small block
    // freed before it (the snapshot's and the plan's, when it came last).
    drop(store);
    let plan = plan::plan(config, &snapshot, engine::now(), &Request::default());
    let (units, counts, alerts) = status_parts(config, &snapshot, &plan, selection, states);
    drop(snapshot);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    write_status_parts(&mut out, &units, &counts, &alerts)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// The status document of [`status_parts`], laid out as serde_json's pretty
/// printer lays out [`status_document_of`]'s `Value` (keys sorted, two
/// spaces a level, a final newline). The units are written by
/// [`write_status_unit`]; `counts` and `alerts` are small and go through
/// serde_json.
fn write_status_parts(
    out: &mut impl std::io::Write,
    units: &[&UnitPlan],
    counts: &Value,
    alerts: &Value,
) -> std::io::Result<()> {
    out.write_all(b"{\n  \"alerts\": ")?;
    write_nested_value(out, alerts)?;
    out.write_all(b",\n  \"counts\": ")?;
    write_nested_value(out, counts)?;
    out.write_all(b",\n  \"units\": [")?;
    for (i, u) in units.iter().enumerate() {
        out.write_all(if i == 0 { b"\n    " } else { b",\n    " })?;
        write_status_unit(out, u)?;
    }
    if !units.is_empty() {
        out.write_all(b"\n  ")?;
    }
    out.write_all(b"]\n}\n")
}

/// `value` pretty-printed one level deep (its lines after the first
/// indented by two more spaces). A JSON string holds no raw newline, so
/// every newline of the text is a line break of the layout.
fn write_nested_value(out: &mut impl std::io::Write, value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    out.write_all(text.replace('\n', "\n  ").as_bytes())
}

/// One unit of the status document, the fields of [`status_unit_json`] in
/// its (sorted) order, at the indentation of an item of the document's
/// `units`. Written field by field: serde_json's generic serializer, which
/// indents and escapes each constant key again, was a fifth of
/// `status --json` on 35,000 units.
fn write_status_unit(out: &mut impl std::io::Write, u: &UnitPlan) -> std::io::Result<()> {
    write!(out, "{{\n      \"attempts\": {}", u.attempts)?;
    out.write_all(b",\n      \"blocked_by\": ")?;
    write_json_str(out, u.blocked_by.as_ref().map(|k| k.to_string()).as_deref())?;
    out.write_all(b",\n      \"detail\": ")?;
    write_json_str(out, u.detail.as_deref())?;
    out.write_all(b",\n      \"job_id\": ")?;
    write_json_str(out, u.job_id.as_deref())?;
    out.write_all(b",\n      \"next_attempt_at\": ")?;
    write_json_str(out, output::rfc3339(u.next_attempt_at).as_deref())?;
    out.write_all(b",\n      \"pipeline\": ")?;
    write_json_str(out, Some(&u.key.pipeline))?;
    out.write_all(b",\n      \"reason\": ")?;
    write_json_str(out, u.reason.map(|r| r.as_str()))?;
    out.write_all(b",\n      \"session\": ")?;
    write_json_str(out, u.key.session.as_ref().map(|s| s.as_str()))?;
    out.write_all(b",\n      \"state\": ")?;
    write_json_str(out, Some(u.state.as_str()))?;
    out.write_all(b",\n      \"subject\": ")?;
    write_json_str(out, Some(u.key.subject.as_str()))?;
    out.write_all(b"\n    }")
}

/// A JSON string (escaped by serde_json), or `null`.
fn write_json_str(out: &mut impl std::io::Write, text: Option<&str>) -> std::io::Result<()> {
    match text {
        Some(text) => serde_json::to_writer(out, text).map_err(std::io::Error::other),
        None => out.write_all(b"null"),
    }
}

/// [`status_document`] from a snapshot and its plan already made.
pub fn status_document_of(
    config: &Config,
    snapshot: &Snapshot,
    plan: &plan::Plan,
    selection: &Selection,
    states: &[String],
) -> Value {
    let (units, counts, alerts) = status_parts(config, snapshot, plan, selection, states);
    let list: Vec<Value> = units.iter().map(|u| status_unit_json(u)).collect();
    json!({ "units": list, "counts": counts, "alerts": alerts })
}

/// The parts of [`status_document_of`]: the units kept, in order, and the
/// `counts` and `alerts` values (for a writer that serializes the units one
/// at a time).
pub fn status_parts<'p>(
    config: &Config,
    snapshot: &Snapshot,
    plan: &'p plan::Plan,
    selection: &Selection,
    states: &[String],
) -> (Vec<&'p UnitPlan>, Value, Value) {
    let alerts = crate::alerts::tally(
        config,
        plan,
        |k| selection.matches(k),
        |id| snapshot.runs.get(&id),
    );
    let units: Vec<&UnitPlan> = plan
        .units
        .iter()
        .filter(|u| selection.matches(&u.key))
        .filter(|u| states.is_empty() || states.iter().any(|s| s == u.state.as_str()))
        .collect();
    let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for u in &units {
        *counts
            .entry(u.key.pipeline.as_str())
            .or_default()
            .entry(u.state.as_str())
            .or_default() += 1;
    }
    (units, json!(counts), json!(alerts))
}

/// One unit's object in [`status_document_of`].
pub fn status_unit_json(u: &UnitPlan) -> Value {
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
}

/// The document of `status runs --json`: `{"runs": [...]}`, oldest first.
pub fn runs_document(
    config: &Config,
    store: Option<&Store>,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<Value> {
    Ok(json!({ "runs": runs_list(config, store, selection, states)? }))
}

/// The items of [`runs_document`], each the object of [`run_json`].
pub fn runs_list(
    config: &Config,
    store: Option<&Store>,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<Vec<Value>> {
    Ok(select_runs(config, store, selection, states)?
        .iter()
        .map(run_json)
        .collect())
}

/// The runs kept by `selection` and `states` (run or unit state words;
/// empty keeps all), oldest first. `store` is the study's open state; with
/// `None` the study's state is read if there is one (a study that never
/// ran has no runs).
pub fn select_runs(
    config: &Config,
    store: Option<&Store>,
    selection: &Selection,
    states: &[String],
) -> anyhow::Result<Vec<RunRow>> {
    let all = match store {
        Some(s) => s.all_runs()?,
        None => match Store::open_existing(&config.paths.state_dir)? {
            Some(s) => s.all_runs()?,
            None => Vec::new(),
        },
    };
    Ok(all
        .into_iter()
        .filter(|r| selection.matches(&r.key))
        .filter(|r| states.is_empty() || states.iter().any(|s| s == r.state.as_str()))
        .collect())
}

/// One run as JSON: an item of `status runs --json`, a job of the server.
pub fn run_json(run: &RunRow) -> Value {
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
        "reason": run.reason.clone().or_else(|| Some(run.plan_reason.to_string())),
        "script": run.script_path,
        "log": run.log_path,
    })
}

/// The `cancelled` list of `cancel --json` (and of the server's cancel).
pub fn cancel_json(report: &engine::manage::CancelReport) -> Vec<serde_json::Value> {
    let mut cancelled: Vec<serde_json::Value> = report
        .runs
        .iter()
        .map(|r| {
            json!({"pipeline": r.key.pipeline, "subject": r.key.subject,
                "session": r.key.session, "run_id": r.id, "job_id": r.job_id,
                "was": r.state.as_str()})
        })
        .collect();
    cancelled.extend(report.idle.iter().map(|(key, state)| {
        json!({"pipeline": key.pipeline, "subject": key.subject,
            "session": key.session, "run_id": null, "job_id": null, "was": state.as_str()})
    }));
    cancelled
}

/// The document of `retry --json` (and of the server's retry).
pub fn retry_json(report: &engine::manage::RetryReport) -> serde_json::Value {
    let retried: Vec<_> = report
        .retried
        .iter()
        .map(|k| json!({"pipeline": k.pipeline, "subject": k.subject, "session": k.session}))
        .collect();
    let submitted: Vec<_> = report
        .submitted
        .rows
        .iter()
        .map(|r| {
            json!({"run_id": r.run_id, "pipeline": r.key.pipeline,
                "subject": r.key.subject, "session": r.key.session, "job_id": r.job_id,
                "reason": r.reason})
        })
        .collect();
    json!({"retried": retried, "submitted": submitted})
}

/// The document of `sync --json` (and of the server's sync).
pub fn sync_json(done: &engine::sync::SyncReport) -> serde_json::Value {
    let changes: Vec<_> = done
        .changes
        .iter()
        .map(|a| {
            json!({"unit": a.unit_id.and_then(|u| done.keys.get(&u)).map(|k| k.to_string()),
                   "scan_id": a.scan_id, "run_id": a.run_id, "old_state": a.old_state,
                   "new_state": a.new_state, "reason": a.reason, "at": output::rfc3339(Some(a.at))})
        })
        .collect();
    let submitted = &done.submitted;
    json!({"changes": changes, "submitted": submitted.rows.len(),
        "deferred": submitted.deferred, "unmapped": done.unmapped.len(),
        "unreachable": submitted.unreachable})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Level, Reason, UnitKey, UnitState};

    /// The streamed document is the pretty-printed `Value` of
    /// `status_document_of`, byte for byte: units with every field set
    /// (text that needs escaping too) and with every optional field empty,
    /// counts and alerts, and no units at all.
    #[test]
    fn a_streamed_status_document_is_the_value_one() {
        let key = UnitKey::parse("qsiprep/sub-01/ses-2").unwrap();
        let full = UnitPlan {
            key: key.clone(),
            level: Level::Session,
            state: UnitState::Retrying,
            reason: Some(Reason::Retry),
            detail: Some("next attempt \"soon\"\n\tor \\ later é".into()),
            blocked_by: UnitKey::parse("bids/sub-01/ses-2"),
            attempts: 2,
            job_id: Some("123_4".into()),
            next_attempt_at: Some(1_700_000_000),
            last_run_id: Some(7),
            due: false,
            held: false,
        };
        let bare = UnitPlan {
            key: UnitKey::parse("qsiprep/sub-01").unwrap(),
            level: Level::Subject,
            state: UnitState::Done,
            reason: None,
            detail: None,
            blocked_by: None,
            attempts: 0,
            job_id: None,
            next_attempt_at: None,
            last_run_id: None,
            ..full.clone()
        };
        let counts = json!({"qsiprep": {"done": 1, "retrying": 1}});
        let alerts = json!([{"pipeline": "qsiprep", "pattern": "Killed", "units": ["a", "b"]}]);
        let cases: [(&[&UnitPlan], Value, Value); 3] = [
            (&[&full, &bare], counts.clone(), alerts),
            (&[&bare], counts, json!([])),
            (&[], json!({}), json!([])),
        ];
        for (units, counts, alerts) in cases {
            let list: Vec<Value> = units.iter().map(|u| status_unit_json(u)).collect();
            let value = json!({ "units": list, "counts": counts, "alerts": alerts });
            let mut streamed = Vec::new();
            write_status_parts(&mut streamed, units, &counts, &alerts).unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                format!("{}\n", serde_json::to_string_pretty(&value).unwrap())
            );
        }
    }
}
