//! `nfslurm show sub-01/ses-1`: one session as discovery saw it: folder,
//! scan ID, validation, the series its DICOM headers describe, and its units.

use serde_json::json;

use super::{Failure, Settings};
use crate::config::Config;
use crate::engine;
use crate::model::{Label, Level, UnitKey};
use crate::output;
use crate::plan::{self, Request};
use crate::state::Store;
use crate::study::dicom::{HeaderSummary, transfer_syntax_name, validate::notes};

/// `sub-01/ses-1` (prefixes optional on the session): the labels, else `None`.
pub fn parse_session(target: &str) -> Option<(Label, Label)> {
    let (subject, session) = target.strip_prefix("sub-")?.split_once('/')?;
    let session = session.strip_suffix('/').unwrap_or(session);
    Some((Label::new(subject).ok()?, Label::session(session).ok()?))
}

/// Shows the session named by `target` when it names one; `None` otherwise.
pub fn try_show(
    settings: &Settings,
    config: &Config,
    store: &Store,
    target: &str,
) -> anyhow::Result<Option<i32>> {
    let Some((subject, session)) = parse_session(target) else {
        return Ok(None);
    };
    let Some(row) = store
        .sessions()?
        .into_iter()
        .find(|s| s.subject == subject && s.session == session)
    else {
        return Err(Failure::user(
            format!("no session sub-{subject} ses-{session} is registered"),
            Some(
                "`nfslurm status matrix` lists the sessions; `nfslurm discover` registers new ones",
            ),
        ));
    };
    let headers = store.headers_of(&row.dicom_dir)?;
    let snapshot = store.snapshot()?;
    let plan = plan::plan(config, &snapshot, engine::now(), &Request::default());
    let units: Vec<(UnitKey, Option<&plan::UnitPlan>)> = config
        .pipelines
        .iter()
        .map(|p| {
            let key = match p.level {
                Level::Session => UnitKey::new(&p.name, &subject, Some(&session)),
                Level::Subject => UnitKey::new(&p.name, &subject, None),
            };
            let unit = plan.unit(&key);
            (key, unit)
        })
        .collect();

    if settings.json {
        output::print_json(&json!({
            "subject": subject, "session": session, "scan_id": row.scan_id,
            "folder": row.dicom_dir, "files": row.n_files, "valid": row.valid,
            "problem": row.problem,
            "headers": headers.as_ref().map(|(h, at)| json!({
                "read_at": output::rfc3339(Some(*at)),
                "dicom_files": h.dicom_files, "not_dicom": h.not_dicom,
                "dicomdirs": h.dicomdirs, "corrupt": h.corrupt,
                "problems": h.problems, "notes": notes(h),
                "series": h.series,
            })),
            "units": units.iter().map(|(k, u)| json!({
                "unit": k.to_string(),
                "state": u.map(|u| u.state.as_str()),
                "reason": u.and_then(|u| u.reason).map(|r| r.as_str()),
            })).collect::<Vec<_>>(),
        }));
        return Ok(Some(0));
    }

    println!("{}", output::bold(&format!("sub-{subject} ses-{session}")));
    println!("scan ID  {}", row.scan_id);
    println!("folder   {}", super::display_path(&row.dicom_dir));
    match &row.problem {
        None => println!("valid    yes"),
        Some(p) => println!("valid    {}: {p}", output::red("no")),
    }
    match &headers {
        Some((h, at)) if h.dicom_files + h.corrupt + h.dicomdirs > 0 => {
            print_headers(h, *at, row.n_files)
        }
        _ => println!(
            "files    {} (no DICOM header read: judged on folder names)",
            row.n_files
        ),
    }
    println!();
    println!("{}", output::bold("units"));
    let width = units
        .iter()
        .map(|(k, _)| k.to_string().len())
        .max()
        .unwrap_or(0);
    for (key, unit) in &units {
        let key = format!("{:width$}", key.to_string());
        match unit {
            Some(u) => {
                let reason = u.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                println!("  {key}  {}{reason}", output::unit_state(u.state));
            }
            None => println!("  {key}  -"),
        }
    }
    Ok(Some(0))
}

fn print_headers(h: &HeaderSummary, read_at: i64, n_files: u64) {
    let mut files = format!("files    {n_files}: {} DICOM", h.dicom_files);
    if h.not_dicom > 0 {
        files.push_str(&format!(", {} not DICOM (ignored)", h.not_dicom));
    }
    if h.dicomdirs > 0 {
        files.push_str(&format!(", {} DICOMDIR (ignored)", h.dicomdirs));
    }
    if h.corrupt > 0 {
        files.push_str(&format!(", {} corrupt", h.corrupt));
    }
    println!("{files}");
    println!("headers  read {}", output::local_time(read_at));
    for p in &h.problems {
        println!("  corrupt: `{}`: {}", p.file, p.why);
    }
    for note in notes(h) {
        println!("  note: {note}");
    }
    println!();
    println!("{}", output::bold("series"));
    let mut table = output::table(&[
        "#",
        "description",
        "protocol",
        "image type",
        "instances",
        "date",
        "folder",
    ]);
    for s in &h.series {
        let mut image_type = s.image_type.join("\\");
        let compressed: Vec<String> = s
            .transfer_syntaxes
            .iter()
            .filter(|t| crate::study::dicom::read::is_compressed(t))
            .map(|t| transfer_syntax_name(t))
            .collect();
        if !compressed.is_empty() {
            image_type.push_str(&format!(" ({})", compressed.join(", ")));
        }
        let instances = if s.frames != s.instances {
            format!("{} ({} images)", s.instances, s.frames)
        } else {
            s.instances.to_string()
        };
        table.add_row(vec![
            s.number.map_or("-".to_string(), |n| n.to_string()),
            s.description.clone(),
            s.protocol.clone(),
            image_type,
            instances,
            s.date.as_deref().map_or("-".to_string(), format_date),
            s.folders.join(", "),
        ]);
    }
    output::print_table(&table);
}

/// `20260315` as `2026-03-15`; anything else as it is.
fn format_date(d: &str) -> String {
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
    } else {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_targets() {
        let (sub, ses) = parse_session("sub-01/ses-1").unwrap();
        assert_eq!(
            (sub.to_string(), ses.to_string()),
            ("01".into(), "1".into())
        );
        assert!(parse_session("sub-01/1").is_some());
        assert!(parse_session("bids/sub-01/ses-1").is_none());
        assert!(parse_session("sub-01").is_none());
        assert!(parse_session("sub-0;1/ses-1").is_none());
    }
}
