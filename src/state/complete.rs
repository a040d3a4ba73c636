//! What shell completion offers for units and runs, read from `state.db`
//! on a read-only connection: completing a word never writes, migrates or
//! waits on a lock.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::key_at;

/// The newest runs offered (job IDs and `run:N`): older ones are typed.
const RECENT_RUNS: usize = 200;

/// A word to offer, with a short help text (its state).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub value: String,
    pub help: String,
}

/// Unit keys (with `units`), subjects as `sub-L` (with `subjects`) and the
/// newest runs' job IDs and `run:N` of the study in `dir`; nothing when there
/// is no state or it cannot be read.
pub fn completion_words(dir: &Path, units: bool, subjects: bool) -> Vec<Word> {
    let Ok(conn) = Connection::open_with_flags(
        dir.join("state.db"),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(Duration::from_millis(500));
    let mut out = Vec::new();
    if units {
        let _ = read_units(&conn, &mut out);
    }
    if subjects {
        let _ = read_subjects(&conn, &mut out);
    }
    let _ = read_runs(&conn, &mut out);
    out
}

fn read_units(conn: &Connection, out: &mut Vec<Word>) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT u.pipeline, u.subject, u.session, r.state FROM units u \
         LEFT JOIN runs r ON r.id = u.last_run_id ORDER BY u.pipeline, u.subject, u.session",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let key = key_at(row, 0)?;
        let state: Option<String> = row.get(3)?;
        out.push(Word {
            value: key.to_string(),
            help: state.map_or("unit, never ran".into(), |s| format!("unit, last run {s}")),
        });
    }
    Ok(())
}

fn read_subjects(conn: &Connection, out: &mut Vec<Word>) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT label FROM subjects ORDER BY label")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let label: String = row.get(0)?;
        out.push(Word {
            value: format!("sub-{label}"),
            help: "subject".into(),
        });
    }
    Ok(())
}

fn read_runs(conn: &Connection, out: &mut Vec<Word>) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT r.id, r.job_id, r.state, u.pipeline, u.subject, u.session FROM runs r \
         JOIN units u ON u.id = r.unit_id ORDER BY r.id DESC LIMIT {RECENT_RUNS}"
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let job: Option<String> = row.get(1)?;
        let state: String = row.get(2)?;
        let key = key_at(row, 3)?;
        let help = format!("{key}, {state}");
        if let Some(job) = job {
            out.push(Word {
                value: job,
                help: help.clone(),
            });
        }
        out.push(Word {
            value: format!("run:{id}"),
            help,
        });
    }
    Ok(())
}
