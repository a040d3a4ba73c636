//! Units' bookkeeping rows: attempts, backoff, escalated resources.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, key_at, session_text};
use crate::model::UnitKey;

/// A unit's bookkeeping row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnitRow {
    pub id: i64,
    /// Failures counted against `max_attempts` since the last success or `retry`.
    pub attempts: u32,
    pub infra_attempts: u32,
    pub next_attempt_at: Option<i64>,
    /// Escalated memory and time (after OOM or TIMEOUT), if any.
    pub mem_mb: Option<u64>,
    pub time_s: Option<u64>,
    pub cancelled: bool,
    pub last_run_id: Option<i64>,
    pub success_run_id: Option<i64>,
}

const UNIT_ROW_SQL: &str = "SELECT id, attempts, infra_attempts, next_attempt_at, mem_mb, \
     time_s, cancelled, last_run_id, success_run_id FROM units WHERE id = ?1";

fn unit_row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<UnitRow> {
    Ok(UnitRow {
        id: r.get(0)?,
        attempts: r.get(1)?,
        infra_attempts: r.get(2)?,
        next_attempt_at: r.get(3)?,
        mem_mb: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        time_s: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        cancelled: r.get(6)?,
        last_run_id: r.get(7)?,
        success_run_id: r.get(8)?,
    })
}

impl Store {
    pub fn unit_id(&self, key: &UnitKey) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id FROM units WHERE pipeline = ?1 AND subject = ?2 AND session = ?3",
                params![key.pipeline, key.subject.as_str(), session_text(key)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The IDs of these units, creating the rows of units that never ran (so
    /// that `cancel` can mark a unit before its first run), in one transaction.
    pub fn ensure_units(&mut self, keys: &[&UnitKey]) -> Result<Vec<i64>> {
        let tx = self.conn.transaction()?;
        let mut ids = Vec::with_capacity(keys.len());
        {
            let mut ensure = tx.prepare_cached(
                "INSERT INTO units (pipeline, subject, session) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(pipeline, subject, session) DO UPDATE SET pipeline = pipeline \
                 RETURNING id",
            )?;
            for key in keys {
                ids.push(ensure.query_row(
                    params![key.pipeline, key.subject.as_str(), session_text(key)],
                    |r| r.get(0),
                )?);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// The next attempt number of each unit (1 for a unit that never ran), in
    /// one read transaction: one lock for the lot, which matters on NFS where
    /// every lock is a round trip to the server.
    pub fn next_attempts(&self, keys: &[&UnitKey]) -> Result<HashMap<UnitKey, u32>> {
        let tx = self.conn.unchecked_transaction()?;
        let mut out = HashMap::with_capacity(keys.len());
        {
            let mut stmt = tx.prepare_cached(
                "SELECT COALESCE(MAX(r.attempt), 0) + 1 FROM units u JOIN runs r ON r.unit_id = u.id \
                 WHERE u.pipeline = ?1 AND u.subject = ?2 AND u.session = ?3",
            )?;
            for key in keys {
                let n: u32 = stmt.query_row(
                    params![key.pipeline, key.subject.as_str(), session_text(key)],
                    |r| r.get(0),
                )?;
                out.insert((*key).clone(), n);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Unit rows by ID, in one read transaction (see [`Store::next_attempts`]).
    pub fn unit_rows(&self, unit_ids: &[i64]) -> Result<HashMap<i64, UnitRow>> {
        let tx = self.conn.unchecked_transaction()?;
        let mut out = HashMap::with_capacity(unit_ids.len());
        {
            let mut stmt = tx.prepare_cached(UNIT_ROW_SQL)?;
            for &id in unit_ids {
                if let Some(row) = stmt.query_row([id], unit_row_from).optional()? {
                    out.insert(id, row);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Unit keys of the given unit IDs (for messages about a few audit rows,
    /// where [`Store::unit_keys`] would read every unit).
    pub fn unit_keys_of(&self, unit_ids: &[i64]) -> Result<HashMap<i64, UnitKey>> {
        let tx = self.conn.unchecked_transaction()?;
        let mut out = HashMap::with_capacity(unit_ids.len());
        {
            let mut stmt =
                tx.prepare_cached("SELECT pipeline, subject, session FROM units WHERE id = ?1")?;
            for &id in unit_ids {
                let mut rows = stmt.query([id])?;
                if let Some(row) = rows.next()? {
                    out.insert(id, key_at(row, 0)?);
                }
            }
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn unit_row(&self, unit_id: i64) -> Result<UnitRow> {
        Ok(self
            .conn
            .query_row(UNIT_ROW_SQL, [unit_id], unit_row_from)?)
    }

    /// Unit keys by ID, for messages about audit rows.
    pub fn unit_keys(&self) -> Result<HashMap<i64, UnitKey>> {
        let tx = self.conn.unchecked_transaction()?;
        // Sized first: growing a map of 35,000 keys rehashes it a dozen times.
        let n: i64 = tx.query_row("SELECT COUNT(*) FROM units", [], |r| r.get(0))?;
        let mut out = HashMap::with_capacity(n.max(0) as usize);
        {
            let mut stmt = tx.prepare("SELECT id, pipeline, subject, session FROM units")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                out.insert(r.get(0)?, key_at(r, 1)?);
            }
        }
        tx.commit()?;
        Ok(out)
    }
}
