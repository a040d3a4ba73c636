//! The snapshot: everything the planner reads, in one read transaction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::runs::ids_from_json;
use super::{Labels, Result, RunRow, SessionRow, Store, UnitRow};
use crate::model::{Reason, RunState, UnitKey};

/// The hasher of the snapshot's maps, which are filled and then looked up
/// once or more per unit: foldhash's, several times cheaper than the
/// standard SipHash on these keys (hashing was a tenth of `nfslurm status`
/// on 35,000 units). The keys come from the study's own state.
pub type SnapshotHasher = foldhash::fast::RandomState;

/// Everything the planner needs, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sessions: Vec<SessionRow>,
    pub units: HashMap<UnitKey, UnitRow, SnapshotHasher>,
    /// The last run and the last successful run of every unit, by run ID.
    pub runs: HashMap<i64, SnapshotRun, SnapshotHasher>,
}

/// A run as the snapshot holds it: the columns its readers (the planner,
/// the status document, alerts, notifications, `clean`) use, and nothing
/// else. A reader that needs more reads the [`RunRow`] from the store
/// ([`Store::run`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRun {
    pub id: i64,
    pub attempt: u32,
    pub state: RunState,
    pub job_id: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub plan_reason: Reason,
    pub ended_at: Option<i64>,
    /// Shared between the runs of a snapshot (few distinct values).
    pub config_hash: Arc<str>,
    pub inputs: Vec<i64>,
    pub log_path: PathBuf,
}

impl From<RunRow> for SnapshotRun {
    fn from(run: RunRow) -> SnapshotRun {
        SnapshotRun {
            id: run.id,
            attempt: run.attempt,
            state: run.state,
            job_id: run.job_id,
            exit_code: run.exit_code,
            reason: run.reason,
            plan_reason: run.plan_reason,
            ended_at: run.ended_at,
            config_hash: run.config_hash.into(),
            inputs: run.inputs,
            log_path: run.log_path,
        }
    }
}

impl Snapshot {
    pub fn last_run(&self, key: &UnitKey) -> Option<&SnapshotRun> {
        let id = self.units.get(key)?.last_run_id?;
        self.runs.get(&id)
    }

    pub fn success_run(&self, key: &UnitKey) -> Option<&SnapshotRun> {
        let id = self.units.get(key)?.success_run_id?;
        self.runs.get(&id)
    }
}

/// The run columns [`snapshot_run`] reads, from the table aliased `r`.
const SNAPSHOT_RUN_FIELDS: &str = "r.id, r.attempt, r.state, r.job_id, r.exit_code, r.reason, \
     r.plan_reason, r.ended_at, r.config_hash, r.inputs, r.log_path";

/// A run from [`SNAPSHOT_RUN_FIELDS`], starting at column `at`; `hashes`
/// interns the configuration hashes.
fn snapshot_run(
    row: &rusqlite::Row<'_>,
    at: usize,
    hashes: &mut HashMap<String, Arc<str>, SnapshotHasher>,
) -> rusqlite::Result<SnapshotRun> {
    let bad = |i: usize, what: &str, text: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown {what} `{text}`").into(),
        )
    };
    let state_text = row.get_ref(at + 2)?.as_str()?;
    let state = RunState::parse(state_text).ok_or_else(|| bad(at + 2, "run state", state_text))?;
    let reason_text = row.get_ref(at + 6)?.as_str()?;
    let plan_reason = Reason::from_plan_text(reason_text)
        .ok_or_else(|| bad(at + 6, "plan reason", reason_text))?;
    let hash = row.get_ref(at + 8)?.as_str()?;
    let config_hash = match hashes.get(hash) {
        Some(h) => h.clone(),
        None => {
            let h: Arc<str> = hash.into();
            hashes.insert(hash.to_string(), h.clone());
            h
        }
    };
    Ok(SnapshotRun {
        id: row.get(at)?,
        attempt: row.get(at + 1)?,
        state,
        job_id: row.get(at + 3)?,
        exit_code: row.get(at + 4)?,
        reason: row.get(at + 5)?,
        plan_reason,
        ended_at: row.get(at + 7)?,
        config_hash,
        inputs: ids_from_json(row.get_ref(at + 9)?.as_str()?),
        log_path: PathBuf::from(row.get_ref(at + 10)?.as_str()?),
    })
}

impl Store {
    /// Reads sessions, units and each unit's last and last successful run.
    ///
    /// One read transaction, so that a worker writing between the queries
    /// cannot give a unit a last run the snapshot does not hold. Each unit is
    /// read with its last run in one join, whose key the run shares; the few
    /// last successes that are not the last run come in a second query.
    /// Only the run columns the snapshot's readers use are read
    /// ([`SnapshotRun`]).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let tx = self.conn.unchecked_transaction()?;
        let mut labels = Labels::default();
        let sessions = self.sessions_with(&mut labels)?;
        let n_units: usize = tx
            .prepare_cached("SELECT COUNT(*) FROM units")?
            .query_row([], |r| r.get::<_, i64>(0))? as usize;
        let mut units = HashMap::with_capacity_and_hasher(n_units, SnapshotHasher::default());
        let mut runs = HashMap::with_capacity_and_hasher(n_units, SnapshotHasher::default());
        let mut hashes = HashMap::default();
        let sql = format!(
            "SELECT u.id, u.pipeline, u.subject, u.session, u.attempts, u.infra_attempts, \
             u.next_attempt_at, u.mem_mb, u.time_s, u.cancelled, u.last_run_id, \
             u.success_run_id, {SNAPSHOT_RUN_FIELDS} FROM units u \
             LEFT JOIN runs r ON r.id = u.last_run_id"
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = labels.key_at(r, 1)?;
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
                let run = snapshot_run(r, 12, &mut hashes)?;
                runs.insert(run.id, run);
            }
            units.insert(key, unit);
        }
        drop(rows);
        drop(stmt);
        let sql = format!(
            "SELECT {SNAPSHOT_RUN_FIELDS} FROM units u JOIN runs r ON r.id = u.success_run_id \
             WHERE u.last_run_id IS NULL OR u.last_run_id != u.success_run_id"
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let run = snapshot_run(r, 0, &mut hashes)?;
            runs.insert(run.id, run);
        }
        drop(rows);
        drop(stmt);
        tx.commit()?;
        Ok(Snapshot {
            sessions,
            units,
            runs,
        })
    }
}
