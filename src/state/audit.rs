//! The audit log: every state change of a session, unit or run, written in
//! the transaction that makes it.

use rusqlite::{Transaction, params};

use super::{Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub at: i64,
    pub unit_id: Option<i64>,
    pub run_id: Option<i64>,
    pub scan_id: Option<String>,
    pub old_state: Option<String>,
    pub new_state: String,
    pub reason: String,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn audit(
    tx: &Transaction<'_>,
    at: i64,
    unit_id: Option<i64>,
    run_id: Option<i64>,
    scan_id: Option<&str>,
    old: Option<&str>,
    new: &str,
    reason: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit (at, unit_id, run_id, scan_id, old_state, new_state, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![at, unit_id, run_id, scan_id, old, new, reason])?;
    Ok(())
}

impl Store {
    pub fn audit_of_unit(&self, unit_id: i64) -> Result<Vec<AuditRow>> {
        Ok(self
            .audit_where("unit_id = ?1", unit_id)?
            .into_iter()
            .map(|(_, row)| row)
            .collect())
    }

    pub fn audit_since(&self, since_id: i64) -> Result<Vec<(i64, AuditRow)>> {
        self.audit_where("id > ?1", since_id)
    }

    /// Audit rows written at or after `since_at` (Unix seconds), oldest first.
    pub fn audit_from_time(&self, since_at: i64) -> Result<Vec<(i64, AuditRow)>> {
        self.audit_where("at >= ?1", since_at)
    }

    /// Audit rows (with their IDs) matching `condition` on `?1`, oldest first.
    fn audit_where(&self, condition: &str, value: i64) -> Result<Vec<(i64, AuditRow)>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, at, unit_id, run_id, scan_id, old_state, new_state, reason FROM audit \
             WHERE {condition} ORDER BY id"
        ))?;
        let rows = stmt.query_map([value], |r| {
            Ok((
                r.get(0)?,
                AuditRow {
                    at: r.get(1)?,
                    unit_id: r.get(2)?,
                    run_id: r.get(3)?,
                    scan_id: r.get(4)?,
                    old_state: r.get(5)?,
                    new_state: r.get(6)?,
                    reason: r.get(7)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn last_audit_id(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |r| r.get(0))?)
    }
}
