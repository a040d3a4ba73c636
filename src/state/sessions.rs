//! Sessions as discovery registers them, and the subjects they belong to.

use std::collections::HashMap;
use std::path::PathBuf;

use rusqlite::params;

use super::audit::audit;
use super::{Labels, Result, Store, label_from_db};
use crate::model::Label;

/// A session as registered by discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub scan_id: String,
    pub subject: Label,
    pub session: Label,
    pub dicom_dir: PathBuf,
    pub valid: bool,
    pub problem: Option<String>,
    pub n_files: u64,
}

/// What registering a discovery report changed.
#[derive(Debug, Default, Clone)]
pub struct SessionChanges {
    pub new: Vec<SessionRow>,
    /// Sessions whose validity changed (e.g. an invalid one got its files).
    pub changed: Vec<SessionRow>,
    /// Sessions the mapping sheet now gives other labels, re-mapped because
    /// nothing ran for them yet: (new row, old subject, old session).
    pub remapped: Vec<(SessionRow, Label, Label)>,
    /// Sessions the sheet now gives other labels but that already ran: they
    /// keep their registered labels (outputs and history use them).
    pub conflicts: Vec<(SessionRow, Label, Label)>,
}

impl Store {
    /// Registers what discovery found: new sessions are added, known ones
    /// updated when their validity changed. Sessions that disappeared from disk
    /// are kept: nothing is ever forgotten silently.
    pub fn register_sessions(&mut self, found: &[SessionRow], now: i64) -> Result<SessionChanges> {
        let tx = self.write_tx()?;
        let mut changes = SessionChanges::default();
        {
            let mut known = HashMap::new();
            let mut labels: HashMap<String, (Label, Label)> = HashMap::new();
            let mut stmt =
                tx.prepare("SELECT scan_id, valid, problem, subject, session FROM sessions")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get::<_, bool>(1)?, r.get::<_, Option<String>>(2)?),
                    (label_from_db(r.get(3)?)?, label_from_db(r.get(4)?)?),
                ))
            })?;
            for row in rows {
                let (scan, state, pair) = row?;
                labels.insert(scan.clone(), pair);
                known.insert(scan, state);
            }
            let mut ran = tx.prepare(
                "SELECT COUNT(*) FROM runs r JOIN units u ON u.id = r.unit_id \
                 WHERE u.subject = ?1 AND (u.session = ?2 OR u.session = '')",
            )?;
            let mut relabel = tx.prepare(
                "UPDATE OR IGNORE sessions SET subject = ?2, session = ?3, updated_at = ?4 \
                 WHERE scan_id = ?1",
            )?;
            let mut add_subject =
                tx.prepare("INSERT OR IGNORE INTO subjects (label, created_at) VALUES (?1, ?2)")?;
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO sessions (scan_id, subject, session, dicom_dir, valid, \
                 problem, n_files, discovered_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            )?;
            let mut update = tx.prepare(
                "UPDATE sessions SET valid = ?2, problem = ?3, n_files = ?4, dicom_dir = ?5, \
                 updated_at = ?6 WHERE scan_id = ?1",
            )?;
            for s in found {
                // The sheet gives a registered session other labels.
                if let Some((old_sub, old_ses)) = labels.get(&s.scan_id)
                    && (old_sub != &s.subject || old_ses != &s.session)
                {
                    let runs: i64 =
                        ran.query_row(params![old_sub.as_str(), old_ses.as_str()], |r| r.get(0))?;
                    let moved = runs == 0 && {
                        add_subject.execute(params![s.subject.as_str(), now])?;
                        relabel.execute(params![
                            s.scan_id,
                            s.subject.as_str(),
                            s.session.as_str(),
                            now
                        ])? == 1
                    };
                    let entry = (s.clone(), old_sub.clone(), old_ses.clone());
                    if moved {
                        let why = format!(
                            "re-mapped from sub-{old_sub} ses-{old_ses} to sub-{} ses-{}",
                            s.subject, s.session
                        );
                        audit(
                            &tx,
                            now,
                            None,
                            None,
                            Some(&s.scan_id),
                            None,
                            "remapped",
                            &why,
                        )?;
                        changes.remapped.push(entry);
                    } else {
                        changes.conflicts.push(entry);
                        continue;
                    }
                }
                match known.get(&s.scan_id) {
                    None => {
                        add_subject.execute(params![s.subject.as_str(), now])?;
                        // A scan ID seen twice in one report, or a (subject, session)
                        // taken by another scan ID, is not registered: discovery
                        // reports both as invalid.
                        let inserted = insert.execute(params![
                            s.scan_id,
                            s.subject.as_str(),
                            s.session.as_str(),
                            s.dicom_dir.to_string_lossy(),
                            s.valid,
                            s.problem,
                            s.n_files as i64,
                            now
                        ])?;
                        if inserted == 0 {
                            continue;
                        }
                        known.insert(s.scan_id.clone(), (s.valid, s.problem.clone()));
                        let state = if s.valid { "valid" } else { "invalid" };
                        let why = s.problem.clone().unwrap_or_else(|| "discovered".into());
                        audit(&tx, now, None, None, Some(&s.scan_id), None, state, &why)?;
                        changes.new.push(s.clone());
                    }
                    Some((valid, _problem)) if *valid != s.valid => {
                        update.execute(params![
                            s.scan_id,
                            s.valid,
                            s.problem,
                            s.n_files as i64,
                            s.dicom_dir.to_string_lossy(),
                            now
                        ])?;
                        let (old, new) = if s.valid {
                            ("invalid", "valid")
                        } else {
                            ("valid", "invalid")
                        };
                        let why = s
                            .problem
                            .clone()
                            .unwrap_or_else(|| "now passes validation".into());
                        audit(&tx, now, None, None, Some(&s.scan_id), Some(old), new, &why)?;
                        changes.changed.push(s.clone());
                    }
                    Some(_) => {}
                }
            }
        }
        tx.commit()?;
        Ok(changes)
    }

    /// When each subject's first session was discovered (for "oldest first").
    pub fn subject_ages(&self) -> Result<HashMap<Label, i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT subject, MIN(discovered_at) FROM sessions GROUP BY subject")?;
        let rows = stmt.query_map([], |r| Ok((label_from_db(r.get(0)?)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn sessions(&self) -> Result<Vec<SessionRow>> {
        self.sessions_with(&mut Labels::default())
    }

    /// [`Store::sessions`], its labels shared through `labels` (which the
    /// snapshot goes on using for its units).
    pub(super) fn sessions_with(&self, labels: &mut Labels) -> Result<Vec<SessionRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT scan_id, subject, session, dicom_dir, valid, problem, n_files FROM sessions \
             ORDER BY subject, session",
        )?;
        // Sized first: a study can have 100,000 sessions.
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        let rows = stmt.query_map([], |r| {
            Ok(SessionRow {
                scan_id: r.get(0)?,
                subject: labels.at(r, 1)?,
                session: labels.at(r, 2)?,
                dicom_dir: PathBuf::from(r.get::<_, String>(3)?),
                valid: r.get(4)?,
                problem: r.get(5)?,
                n_files: r.get::<_, i64>(6)? as u64,
            })
        })?;
        for row in rows {
            let mut row = row?;
            // Registered before discovery refused names a shell could run
            // (issue 9): such a session is invalid now, and never rendered.
            if row.valid
                && let Some(why) = row
                    .dicom_dir
                    .file_name()
                    .and_then(|n| crate::study::unsafe_folder_name(&n.to_string_lossy()))
            {
                row.valid = false;
                row.problem = Some(format!("the folder's {why}"));
            }
            out.push(row);
        }
        Ok(out)
    }
}
