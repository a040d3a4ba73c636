//! `nfslurm discover`: scan, map, validate, register.

use serde_json::json;

use super::{Settings, display_path, json_path};
use crate::output;
use crate::state::{SessionChanges, SessionRow};
use crate::study::{self, DiscoveryReport};

pub fn run(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let _lock = crate::engine::lock::acquire(&config)?;
    let mut store = super::open_store(&config)?;
    let (report, changes) =
        crate::engine::discover_and_register(&config, &mut store, crate::engine::now())?;
    if settings.json {
        let session = |s: &SessionRow| {
            json!({"scan_id": s.scan_id, "subject": s.subject, "session": s.session,
                   "dicom_dir": json_path(&s.dicom_dir), "valid": s.valid, "problem": s.problem})
        };
        output::print_json(&json!({
            "new": changes.new.iter().map(session).collect::<Vec<_>>(),
            "changed": changes.changed.iter().map(session).collect::<Vec<_>>(),
            "remapped": changes.remapped.iter().map(|(s, sub, ses)| json!({"scan_id": s.scan_id,
                "from": {"subject": sub, "session": ses}, "to": {"subject": s.subject, "session": s.session}})).collect::<Vec<_>>(),
            "conflicts": changes.conflicts.iter().map(|(s, sub, ses)| json!({"scan_id": s.scan_id,
                "registered": {"subject": sub, "session": ses}, "sheet": {"subject": s.subject, "session": s.session}})).collect::<Vec<_>>(),
            "sessions": report.sessions.len(),
            "unmapped": report.unmapped.iter().map(|u| json!({"scan_id": u.scan_id, "folder": json_path(&u.folder)})).collect::<Vec<_>>(),
            "invalid": report.sessions.iter().filter(|s| s.problem.is_some())
                .map(|s| json!({"scan_id": s.scan_id, "subject": s.subject, "session": s.session, "problem": s.problem})).collect::<Vec<_>>(),
            "skipped": report.skipped.iter().map(|s| json!({"folder": json_path(&s.folder), "why": s.why})).collect::<Vec<_>>(),
            "mapping_problems": report.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "headers_read": report.headers_read.len(),
            "notes": fresh_notes(&report).iter().map(|(s, n)| json!({"scan_id": s, "note": n})).collect::<Vec<_>>(),
        }));
        return Ok(0);
    }
    if !settings.quiet {
        print_report(&report, &changes);
    }
    Ok(0)
}

pub fn print_report(report: &DiscoveryReport, changes: &SessionChanges) {
    let valid = report
        .sessions
        .iter()
        .filter(|s| s.problem.is_none())
        .count();
    println!(
        "{} sessions found ({} valid), {} new, {} unmapped, {} invalid, {} skipped",
        report.sessions.len(),
        valid,
        changes.new.len(),
        report.unmapped.len(),
        report.sessions.len() - valid,
        report.skipped.len()
    );
    for s in &changes.new {
        let mark = if s.valid { "new" } else { "new, invalid" };
        println!(
            "  {mark}: `{}` -> sub-{} ses-{}",
            s.scan_id, s.subject, s.session
        );
    }
    for (s, sub, ses) in &changes.remapped {
        println!(
            "  re-mapped: `{}` from sub-{sub} ses-{ses} to sub-{} ses-{} (nothing had run for it)",
            s.scan_id, s.subject, s.session
        );
    }
    for (s, sub, ses) in &changes.conflicts {
        println!(
            "  kept: `{}` stays sub-{sub} ses-{ses}: the mapping sheet now says sub-{} ses-{}, but runs used the old labels; restore the row, or register the data under a new scan ID",
            s.scan_id, s.subject, s.session
        );
    }
    for u in &report.unmapped {
        println!(
            "  unmapped: `{}` ({}): add a row to the mapping CSV",
            u.scan_id,
            display_path(&u.folder)
        );
    }
    for s in report.sessions.iter().filter(|s| s.problem.is_some()) {
        println!(
            "  invalid: `{}` (sub-{} ses-{}): {}",
            s.scan_id,
            s.subject,
            s.session,
            s.problem.as_deref().unwrap_or_default()
        );
    }
    for s in &report.skipped {
        println!("  skipped: {}: {}", display_path(&s.folder), s.why);
    }
    if report.skipped.iter().any(|s| s.why.starts_with("settling")) {
        println!("  hint: a folder changed within `discovery.settle` may still be copying;");
        println!(
            "        to take it now, lower `settle` in nfslurm.yaml (`settle: 0s` on a laptop)"
        );
    }
    for (scan_id, note) in fresh_notes(report) {
        println!("  note: `{scan_id}`: {note}");
    }
    for p in &report.problems {
        println!("  mapping: {p}");
    }
}

/// What the headers read this time say that is worth a word without making
/// a session invalid (files ignored, compressed pixel data): said once, when
/// the folder is new or changed.
fn fresh_notes(report: &DiscoveryReport) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in &report.sessions {
        let Some(headers) = &s.headers else { continue };
        if report.headers_read.iter().any(|(f, _, _)| *f == s.folder) {
            for note in study::dicom::validate::notes(headers) {
                out.push((s.scan_id.clone(), note));
            }
        }
    }
    out
}
