//! The snapshot: everything the planner reads, in one read transaction.

use std::collections::HashMap;

use super::runs::{RUN_COLUMNS, RUN_FIELDS, run_fields, run_from_row};
use super::{Result, RunRow, SessionRow, Store, UnitRow, key_at};
use crate::model::UnitKey;

/// Everything the planner needs, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sessions: Vec<SessionRow>,
    pub units: HashMap<UnitKey, UnitRow>,
    /// The last run and the last successful run of every unit, by run ID.
    pub runs: HashMap<i64, RunRow>,
}

impl Snapshot {
    pub fn last_run(&self, key: &UnitKey) -> Option<&RunRow> {
        let id = self.units.get(key)?.last_run_id?;
        self.runs.get(&id)
    }

    pub fn success_run(&self, key: &UnitKey) -> Option<&RunRow> {
        let id = self.units.get(key)?.success_run_id?;
        self.runs.get(&id)
    }
}

impl Store {
    /// Reads sessions, units and each unit's last and last successful run.
    ///
    /// One read transaction, so that a worker writing between the queries
    /// cannot give a unit a last run the snapshot does not hold. Each unit is
    /// read with its last run in one join, whose key the run shares; the few
    /// last successes that are not the last run come in a second query.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let tx = self.conn.unchecked_transaction()?;
        let sessions = self.sessions()?;
        let n_units: usize =
            tx.query_row("SELECT COUNT(*) FROM units", [], |r| r.get::<_, i64>(0))? as usize;
        let mut units = HashMap::with_capacity(n_units);
        let mut runs = HashMap::with_capacity(n_units);
        let sql = format!(
            "SELECT u.id, u.pipeline, u.subject, u.session, u.attempts, u.infra_attempts, \
             u.next_attempt_at, u.mem_mb, u.time_s, u.cancelled, u.last_run_id, \
             u.success_run_id, {RUN_FIELDS} FROM units u LEFT JOIN runs r ON r.id = u.last_run_id"
        );
        let mut stmt = tx.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = key_at(r, 1)?;
            let unit = UnitRow {
                id: r.get(0)?,
                attempts: r.get(4)?,
                infra_attempts: r.get(5)?,
                next_attempt_at: r.get(6)?,
                mem_mb: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                time_s: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                cancelled: r.get(9)?,
                last_run_id: r.get(10)?,
                success_run_id: r.get(11)?,
            };
            // NULL run columns: the unit has no run (or its last run is gone).
            if r.get_ref(12)? != rusqlite::types::ValueRef::Null {
                let run = run_fields(r, 12, key.clone())?;
                runs.insert(run.id, run);
            }
            units.insert(key, unit);
        }
        drop(rows);
        drop(stmt);
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM units u JOIN runs r ON r.id = u.success_run_id \
             WHERE u.last_run_id IS NULL OR u.last_run_id != u.success_run_id"
        );
        let mut stmt = tx.prepare(&sql)?;
        for run in stmt.query_map([], run_from_row)? {
            let run = run?;
            runs.insert(run.id, run);
        }
        drop(stmt);
        tx.commit()?;
        Ok(Snapshot {
            sessions,
            units,
            runs,
        })
    }
}
