//! Runs: the intent written before any executor call, the updates
//! executors report, and the reads of runs by unit, ID and job.

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::audit::audit;
use super::{Result, StateError, Store, key_at, session_text};
use crate::config::ExecutorKind;
use crate::model::{Reason, RunState, UnitKey};

/// One run, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub unit_id: i64,
    pub key: UnitKey,
    pub attempt: u32,
    pub token: String,
    pub executor: ExecutorKind,
    pub job_id: Option<String>,
    pub state: RunState,
    pub slurm_state: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub plan_reason: Reason,
    pub node: Option<String>,
    pub created_at: i64,
    pub submitted_at: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub elapsed_s: Option<i64>,
    pub max_rss_mb: Option<i64>,
    pub cpus: u32,
    pub mem_mb: u64,
    pub time_limit_s: u64,
    pub gpus: u32,
    pub config_hash: String,
    pub inputs: Vec<i64>,
    pub depends_on: Vec<i64>,
    pub script_path: PathBuf,
    pub log_path: PathBuf,
    pub unseen_since: Option<i64>,
    pub pid: Option<i64>,
    /// The Slurm cluster it was submitted to (`sbatch -M`); `None`: the
    /// default cluster, or the local executor.
    pub cluster: Option<String>,
}

#[cfg(test)]
impl NewRun {
    /// A local run intent of `key` for unit tests: 1 CPU, 100 MB, 60 s;
    /// tests change what they look at.
    pub(crate) fn example(key: &UnitKey, token: &str) -> NewRun {
        NewRun {
            key: key.clone(),
            token: token.into(),
            executor: ExecutorKind::Local,
            state: RunState::Submitting,
            plan_reason: Reason::New,
            cpus: 1,
            mem_mb: 100,
            time_limit_s: 60,
            gpus: 0,
            config_hash: "h".into(),
            inputs: vec![],
            depends_on: vec![],
            script_path: "s".into(),
            log_path: "l".into(),
            cluster: None,
        }
    }
}

#[cfg(test)]
impl RunRow {
    /// A Slurm run of `key` for unit tests: running job `0`, 1 CPU, 100 MB,
    /// 60 s; tests change what they look at.
    pub(crate) fn example(id: i64, key: UnitKey) -> RunRow {
        RunRow {
            id,
            unit_id: id,
            key,
            attempt: 1,
            token: "t".into(),
            executor: ExecutorKind::Slurm,
            job_id: Some("0".into()),
            state: RunState::Running,
            slurm_state: None,
            exit_code: None,
            reason: None,
            plan_reason: Reason::New,
            node: None,
            created_at: 0,
            submitted_at: None,
            started_at: None,
            ended_at: None,
            elapsed_s: None,
            max_rss_mb: None,
            cpus: 1,
            mem_mb: 100,
            time_limit_s: 60,
            gpus: 0,
            config_hash: "h".into(),
            inputs: vec![],
            depends_on: vec![],
            script_path: "s".into(),
            log_path: "l".into(),
            unseen_since: None,
            pid: None,
            cluster: None,
        }
    }
}

/// A run about to be created (the intent, written before any executor call).
#[derive(Debug, Clone)]
pub struct NewRun {
    pub key: UnitKey,
    pub token: String,
    pub executor: ExecutorKind,
    pub state: RunState,
    pub plan_reason: Reason,
    pub cpus: u32,
    pub mem_mb: u64,
    pub time_limit_s: u64,
    pub gpus: u32,
    pub config_hash: String,
    pub inputs: Vec<i64>,
    pub depends_on: Vec<i64>,
    pub script_path: PathBuf,
    pub log_path: PathBuf,
    /// The Slurm cluster it goes to (`None`: the default one).
    pub cluster: Option<String>,
}

/// A change to a run reported by an executor. `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunUpdate {
    pub run_id: i64,
    pub state: Option<RunState>,
    pub job_id: Option<String>,
    pub slurm_state: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub node: Option<String>,
    pub submitted_at: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub elapsed_s: Option<i64>,
    pub max_rss_mb: Option<i64>,
    /// `Some(None)` clears it.
    pub unseen_since: Option<Option<i64>>,
    pub pid: Option<i64>,
}

impl RunUpdate {
    /// A run that ended in `state` at `now`, for `reason`.
    pub fn ended(run_id: i64, state: RunState, reason: &str, now: i64) -> RunUpdate {
        RunUpdate {
            run_id,
            state: Some(state),
            reason: Some(reason.to_string()),
            ended_at: Some(now),
            ..Default::default()
        }
    }
}

/// What the failure policy decided for a unit when one of its runs ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitUpdate {
    pub unit_id: i64,
    /// The run whose end this update follows from, if any: the update is
    /// dropped with the run's when that run had already ended.
    pub run_id: Option<i64>,
    pub attempts: Option<u32>,
    pub infra_attempts: Option<u32>,
    pub next_attempt_at: Option<Option<i64>>,
    pub mem_mb: Option<Option<u64>>,
    pub time_s: Option<Option<u64>>,
    pub cancelled: Option<bool>,
    pub success_run_id: Option<i64>,
    /// Audit line for the unit, if the change is worth one.
    pub audit: Option<crate::model::UnitAudit>,
}

/// The unit's key, then the run's own columns: what [`run_from_row`] reads.
pub(super) const RUN_COLUMNS: &str = "u.pipeline, u.subject, u.session, r.id, r.unit_id, r.attempt, \
     r.token, r.executor, r.job_id, r.state, r.slurm_state, r.exit_code, r.reason, \
     r.plan_reason, r.node, r.created_at, r.submitted_at, r.started_at, r.ended_at, \
     r.elapsed_s, r.max_rss_mb, r.cpus, r.mem_mb, r.time_limit_s, r.gpus, r.config_hash, \
     r.inputs, r.depends_on, r.script_path, r.log_path, r.unseen_since, r.pid, r.cluster";

/// Reads a list of run IDs as the store writes it (`[1,2,3]`, see
/// [`ids_to_json`]) without a JSON parser: the snapshot reads two per run.
/// Anything else goes through serde_json.
pub(super) fn ids_from_json(text: &str) -> Vec<i64> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        if inner.is_empty() {
            return Vec::new();
        }
        if let Some(ids) = inner
            .split(',')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<i64>>>()
        {
            return ids;
        }
    }
    serde_json::from_str(text).unwrap_or_default()
}

pub(super) fn ids_to_json(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

/// A run from [`RUN_COLUMNS`].
pub(super) fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    run_fields(row, 3, key_at(row, 0)?)
}

/// A run from the run columns of [`RUN_COLUMNS`] (after the key), starting
/// at column `at`, for the unit `key`.
fn run_fields(row: &rusqlite::Row<'_>, at: usize, key: UnitKey) -> rusqlite::Result<RunRow> {
    let state_text = row.get_ref(at + 6)?.as_str()?;
    let state = RunState::parse(state_text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            at + 6,
            rusqlite::types::Type::Text,
            format!("unknown run state `{state_text}`").into(),
        )
    })?;
    Ok(RunRow {
        id: row.get(at)?,
        unit_id: row.get(at + 1)?,
        key,
        attempt: row.get(at + 2)?,
        token: row.get(at + 3)?,
        executor: {
            let text = row.get_ref(at + 4)?.as_str()?;
            ExecutorKind::parse(text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    at + 4,
                    rusqlite::types::Type::Text,
                    format!("unknown executor `{text}`").into(),
                )
            })?
        },
        job_id: row.get(at + 5)?,
        state,
        slurm_state: row.get(at + 7)?,
        exit_code: row.get(at + 8)?,
        reason: row.get(at + 9)?,
        plan_reason: {
            let text = row.get_ref(at + 10)?.as_str()?;
            Reason::from_plan_text(text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    at + 10,
                    rusqlite::types::Type::Text,
                    format!("unknown plan reason `{text}`").into(),
                )
            })?
        },
        node: row.get(at + 11)?,
        created_at: row.get(at + 12)?,
        submitted_at: row.get(at + 13)?,
        started_at: row.get(at + 14)?,
        ended_at: row.get(at + 15)?,
        elapsed_s: row.get(at + 16)?,
        max_rss_mb: row.get(at + 17)?,
        cpus: row.get(at + 18)?,
        mem_mb: row.get::<_, i64>(at + 19)? as u64,
        time_limit_s: row.get::<_, i64>(at + 20)? as u64,
        gpus: row.get(at + 21)?,
        config_hash: row.get(at + 22)?,
        inputs: ids_from_json(row.get_ref(at + 23)?.as_str()?),
        depends_on: ids_from_json(row.get_ref(at + 24)?.as_str()?),
        script_path: PathBuf::from(row.get::<_, String>(at + 25)?),
        log_path: PathBuf::from(row.get::<_, String>(at + 26)?),
        unseen_since: row.get(at + 27)?,
        pid: row.get(at + 28)?,
        cluster: row.get(at + 29)?,
    })
}

impl Store {
    fn query_runs(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<RunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN units u ON u.id = r.unit_id {filter} ORDER BY r.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args, run_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Runs still owned by an executor: submitting, pending or running.
    pub fn open_runs(&self) -> Result<Vec<RunRow>> {
        self.query_runs("WHERE r.state IN ('submitting', 'pending', 'running')", &[])
    }

    pub fn all_runs(&self) -> Result<Vec<RunRow>> {
        self.query_runs("", &[])
    }

    /// Every run, oldest first, as [`Store::all_runs`] reads them, handed to
    /// `f` one at a time: a large study's runs are never all in memory.
    pub fn each_run(&self, mut f: impl FnMut(RunRow)) -> Result<()> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN units u ON u.id = r.unit_id ORDER BY r.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            f(run_from_row(row)?);
        }
        Ok(())
    }

    /// Every run of these units, oldest first, in one query.
    pub fn runs_of_units(&self, unit_ids: &[i64]) -> Result<Vec<RunRow>> {
        if unit_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.query_runs(
            "WHERE r.unit_id IN (SELECT value FROM json_each(?1))",
            &[&ids_to_json(unit_ids)],
        )
    }

    /// The units of these runs, in ascending order, each once.
    pub fn unit_ids_of_runs(&self, run_ids: &[i64]) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT unit_id FROM runs \
             WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY unit_id",
        )?;
        let ids = stmt.query_map([ids_to_json(run_ids)], |row| row.get(0))?;
        Ok(ids.collect::<rusqlite::Result<_>>()?)
    }

    pub fn runs_of_unit(&self, unit_id: i64) -> Result<Vec<RunRow>> {
        self.query_runs("WHERE r.unit_id = ?1", &[&unit_id])
    }

    pub fn run(&self, run_id: i64) -> Result<RunRow> {
        self.query_runs("WHERE r.id = ?1", &[&run_id])?
            .pop()
            .ok_or(StateError::NoSuchRun(run_id))
    }

    pub fn runs_by_ids(&self, ids: &[i64]) -> Result<Vec<RunRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One statement text for any list (a JSON array as its parameter),
        // so it is prepared once and the statement cache keeps the others.
        self.query_runs(
            "WHERE r.id IN (SELECT value FROM json_each(?1))",
            &[&ids_to_json(ids)],
        )
    }

    pub fn run_by_job_id(&self, job_id: &str) -> Result<Option<RunRow>> {
        Ok(self.query_runs("WHERE r.job_id = ?1", &[&job_id])?.pop())
    }

    /// Records the intent of every run in one transaction, before any executor
    /// call, and returns their IDs in the same order. `depends_on` entries
    /// that are negative refer to runs of this same batch (`-1 - index`).
    pub fn create_runs(&mut self, new_runs: &[NewRun], now: i64) -> Result<Vec<i64>> {
        let tx = self.write_tx()?;
        let mut ids = Vec::with_capacity(new_runs.len());
        {
            let mut ensure_unit = tx.prepare_cached(
                "INSERT INTO units (pipeline, subject, session) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(pipeline, subject, session) DO UPDATE SET pipeline = pipeline \
                 RETURNING id",
            )?;
            let mut next_attempt = tx.prepare_cached(
                "SELECT COALESCE(MAX(attempt), 0) + 1 FROM runs WHERE unit_id = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO runs (unit_id, attempt, token, executor, state, plan_reason, \
                 created_at, cpus, mem_mb, time_limit_s, gpus, config_hash, inputs, depends_on, \
                 script_path, log_path, cluster) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            let mut set_last =
                tx.prepare_cached("UPDATE units SET last_run_id = ?2 WHERE id = ?1")?;
            for run in new_runs {
                let unit_id: i64 = ensure_unit.query_row(
                    params![
                        run.key.pipeline,
                        run.key.subject.as_str(),
                        session_text(&run.key)
                    ],
                    |r| r.get(0),
                )?;
                let attempt: i64 = next_attempt.query_row([unit_id], |r| r.get(0))?;
                let resolve = |list: &[i64]| -> Vec<i64> {
                    list.iter()
                        .map(|&d| if d < 0 { ids[(-1 - d) as usize] } else { d })
                        .collect()
                };
                let depends_on = resolve(&run.depends_on);
                let inputs = resolve(&run.inputs);
                insert.execute(params![
                    unit_id,
                    attempt,
                    run.token,
                    run.executor.as_str(),
                    run.state.as_str(),
                    run.plan_reason.as_str(),
                    now,
                    run.cpus,
                    run.mem_mb as i64,
                    run.time_limit_s as i64,
                    run.gpus,
                    run.config_hash,
                    ids_to_json(&inputs),
                    ids_to_json(&depends_on),
                    run.script_path.to_string_lossy(),
                    run.log_path.to_string_lossy(),
                    run.cluster,
                ])?;
                let run_id = tx.last_insert_rowid();
                set_last.execute(params![unit_id, run_id])?;
                audit(
                    &tx,
                    now,
                    Some(unit_id),
                    Some(run_id),
                    None,
                    None,
                    run.state.as_str(),
                    &format!("attempt {attempt}: {}", run.plan_reason),
                )?;
                ids.push(run_id);
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Gives runs new tokens (array tasks: `<array token>_<task>`), before sbatch.
    pub fn set_tokens(&mut self, tokens: &[(i64, String)]) -> Result<()> {
        let tx = self.write_tx()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE runs SET token = ?2 WHERE id = ?1")?;
            for (id, token) in tokens {
                stmt.execute(params![id, token])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets the script path of a run once its ID (and so its file name) is known.
    pub fn set_paths(&mut self, run_id: i64, script: &Path, log: &Path) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET script_path = ?2, log_path = ?3 WHERE id = ?1",
            params![run_id, script.to_string_lossy(), log.to_string_lossy()],
        )?;
        Ok(())
    }

    /// Applies run updates and the failure policy's unit updates in one transaction.
    pub fn apply(&mut self, runs: &[RunUpdate], units: &[UnitUpdate], now: i64) -> Result<()> {
        if runs.is_empty() && units.is_empty() {
            return Ok(());
        }
        let tx = self.write_tx()?;
        let mut stale_runs: Vec<i64> = Vec::new();
        {
            let mut current = tx.prepare_cached("SELECT state, unit_id FROM runs WHERE id = ?1")?;
            let mut update = tx.prepare_cached(
                "UPDATE runs SET \
                 state = COALESCE(?2, state), job_id = COALESCE(?3, job_id), \
                 slurm_state = COALESCE(?4, slurm_state), exit_code = COALESCE(?5, exit_code), \
                 reason = COALESCE(?6, reason), node = COALESCE(?7, node), \
                 submitted_at = COALESCE(?8, submitted_at), started_at = COALESCE(?9, started_at), \
                 ended_at = COALESCE(?10, ended_at), elapsed_s = COALESCE(?11, elapsed_s), \
                 max_rss_mb = COALESCE(?12, max_rss_mb), \
                 unseen_since = CASE WHEN ?13 THEN ?14 ELSE unseen_since END, \
                 pid = COALESCE(?15, pid) WHERE id = ?1",
            )?;
            for u in runs {
                let (old, unit_id): (String, i64) =
                    current.query_row([u.run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                // An ended run stays as it ended: a late report (a worker
                // recording a job `nfslurm cancel` just stopped, two
                // processes racing) never rewrites it, nor its unit.
                if let Some(new) = u.state
                    && new.as_str() != old
                    && !RunState::parse(&old).is_none_or(RunState::in_flight)
                {
                    stale_runs.push(u.run_id);
                    continue;
                }
                update.execute(params![
                    u.run_id,
                    u.state.map(RunState::as_str),
                    u.job_id,
                    u.slurm_state,
                    u.exit_code,
                    u.reason,
                    u.node,
                    u.submitted_at,
                    u.started_at,
                    u.ended_at,
                    u.elapsed_s,
                    u.max_rss_mb,
                    u.unseen_since.is_some(),
                    u.unseen_since.flatten(),
                    u.pid,
                ])?;
                if let Some(new) = u.state
                    && new.as_str() != old
                {
                    let mut why = u.reason.clone().unwrap_or_default();
                    if let Some(slurm) = &u.slurm_state {
                        why = if why.is_empty() {
                            slurm.clone()
                        } else {
                            format!("{slurm}: {why}")
                        };
                    }
                    if let Some(job) = &u.job_id
                        && why.is_empty()
                    {
                        why = format!("job {job}");
                    }
                    audit(
                        &tx,
                        now,
                        Some(unit_id),
                        Some(u.run_id),
                        None,
                        Some(&old),
                        new.as_str(),
                        &why,
                    )?;
                }
            }
            let mut unit_update = tx.prepare_cached(
                "UPDATE units SET \
                 attempts = COALESCE(?2, attempts), infra_attempts = COALESCE(?3, infra_attempts), \
                 next_attempt_at = CASE WHEN ?4 THEN ?5 ELSE next_attempt_at END, \
                 mem_mb = CASE WHEN ?6 THEN ?7 ELSE mem_mb END, \
                 time_s = CASE WHEN ?8 THEN ?9 ELSE time_s END, \
                 cancelled = COALESCE(?10, cancelled), \
                 success_run_id = COALESCE(?11, success_run_id) WHERE id = ?1",
            )?;
            for u in units {
                if u.run_id.is_some_and(|id| stale_runs.contains(&id)) {
                    continue;
                }
                unit_update.execute(params![
                    u.unit_id,
                    u.attempts,
                    u.infra_attempts,
                    u.next_attempt_at.is_some(),
                    u.next_attempt_at.flatten(),
                    u.mem_mb.is_some(),
                    u.mem_mb.flatten().map(|v| v as i64),
                    u.time_s.is_some(),
                    u.time_s.flatten().map(|v| v as i64),
                    u.cancelled,
                    u.success_run_id,
                ])?;
                if let Some(a) = &u.audit {
                    let old = a.from.map_or_else(|| "-".to_string(), |f| f.to_string());
                    audit(
                        &tx,
                        now,
                        Some(u.unit_id),
                        None,
                        None,
                        Some(&old),
                        a.to.as_str(),
                        &a.why,
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes run intents that never reached an executor (nothing was
    /// submitted for them), restoring each unit's previous last run.
    pub fn withdraw_runs(&mut self, run_ids: &[i64], why: &str, now: i64) -> Result<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let tx = self.write_tx()?;
        for &id in run_ids {
            let unit_id: Option<i64> = tx
                .query_row("SELECT unit_id FROM runs WHERE id = ?1", [id], |r| r.get(0))
                .optional()?;
            let Some(unit_id) = unit_id else { continue };
            audit(
                &tx,
                now,
                Some(unit_id),
                Some(id),
                None,
                Some("submitting"),
                "withdrawn",
                why,
            )?;
            // Its provenance, recorded with the intent, goes with it.
            tx.execute("DELETE FROM run_provenance WHERE run_id = ?1", [id])?;
            tx.execute("DELETE FROM runs WHERE id = ?1", [id])?;
            tx.execute(
                "UPDATE units SET last_run_id = (SELECT MAX(id) FROM runs WHERE unit_id = ?1) \
                 WHERE id = ?1",
                [unit_id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}
