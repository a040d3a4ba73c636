//! The state store: one SQLite file per study, `<state_dir>/state.db`.
//!
//! Rollback journal (not WAL): study folders on clusters are often on NFS or
//! Lustre, where WAL's shared memory is unsafe. Every change is a transaction,
//! and every state change of a session, unit or run writes an audit row in the
//! same transaction, so the history can never disagree with the state.
//!
//! Only holders of the plan lock (`sync`, `submit`, `retry`, `cancel`) create
//! runs; the local worker only updates the runs it owns. SQLite's own locking
//! serialises the short write transactions, and readers (`status`) never wait
//! for more than one of them.

pub mod complete;
mod headers;
pub mod health;
mod housekeeping;
mod schema;
mod watch;

pub use housekeeping::{RunSummary, Summarised};

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::config::ExecutorKind;
use crate::model::{Label, Reason, RunState, UnitKey};

pub use schema::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory `{path}`")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the state database `{path}`")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the state database `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database error")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot use the lock file `{path}`")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {0} does not exist")]
    NoSuchRun(i64),
    /// The state exists but is not a whole nfslurm database (see [`health`]).
    #[error("{why}")]
    Refused { dir: PathBuf, why: String },
}

impl StateError {
    /// What to do about it, for the `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Refused { .. } => Some(
                "restore `state.db` from a backup (nothing was changed); or, to start the study \
                 afresh (every unit runs again), add `--reset-state`: nfslurm moves `state.db`, \
                 `scripts/` and `logs/` into a `backup-<time>` folder of the state directory first"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Creates the state directory with mode 0700 (DICOM folder names and logs can
/// carry personal data), and tightens it if it already exists with wider bits.
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
    let err = |source| StateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let meta = fs::metadata(dir).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// An exclusive advisory lock on a file in the state directory, held until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    pub path: PathBuf,
}

/// Tries to take the lock `name` in `dir`; `Ok(None)` when someone holds it.
pub fn try_lock(dir: &Path, name: &str) -> Result<Option<LockGuard>> {
    ensure_state_dir(dir)?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StateError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard { _file: file, path })),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(source)) => Err(StateError::Lock { path, source }),
    }
}

/// Waits up to `timeout` for the lock `name` in `dir`.
pub fn lock_with_timeout(dir: &Path, name: &str, timeout: Duration) -> Result<Option<LockGuard>> {
    let start = std::time::Instant::now();
    loop {
        if let Some(guard) = try_lock(dir, name)? {
            return Ok(Some(guard));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

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
    pub audit: Option<(String, String, String)>,
}

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

pub struct Store {
    conn: Connection,
    pub dir: PathBuf,
}

/// A run's own columns, in the order [`run_fields`] reads them.
const RUN_FIELDS: &str = "r.id, r.unit_id, r.attempt, r.token, r.executor, r.job_id, r.state, \
     r.slurm_state, r.exit_code, r.reason, r.plan_reason, r.node, r.created_at, r.submitted_at, \
     r.started_at, r.ended_at, r.elapsed_s, r.max_rss_mb, r.cpus, r.mem_mb, r.time_limit_s, \
     r.gpus, r.config_hash, r.inputs, r.depends_on, r.script_path, r.log_path, r.unseen_since, \
     r.pid, r.cluster";

/// The unit's key, then the run's own columns: what [`run_from_row`] reads.
const RUN_COLUMNS: &str = "u.pipeline, u.subject, u.session, r.id, r.unit_id, r.attempt, \
     r.token, r.executor, r.job_id, r.state, r.slurm_state, r.exit_code, r.reason, \
     r.plan_reason, r.node, r.created_at, r.submitted_at, r.started_at, r.ended_at, \
     r.elapsed_s, r.max_rss_mb, r.cpus, r.mem_mb, r.time_limit_s, r.gpus, r.config_hash, \
     r.inputs, r.depends_on, r.script_path, r.log_path, r.unseen_since, r.pid, r.cluster";

fn label_from_db(text: String) -> rusqlite::Result<Label> {
    Label::new(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A unit key from the columns `at` (pipeline), `at + 1` (subject) and `at + 2`
/// (session, empty for a subject-level unit), read in place: the snapshot
/// reads one per unit, and a temporary `String` per label adds up.
fn key_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UnitKey> {
    let session = row.get_ref(at + 2)?.as_str()?;
    Ok(UnitKey {
        pipeline: row.get_ref(at)?.as_str()?.to_string(),
        subject: label_at(row, at + 1)?,
        session: if session.is_empty() {
            None
        } else {
            Some(label_at(row, at + 2)?)
        },
    })
}

/// A label from column `i`, read in place.
fn label_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Label> {
    Label::new(row.get_ref(i)?.as_str()?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Reads a list of run IDs as the store writes it (`[1,2,3]`, see
/// [`ids_to_json`]) without a JSON parser: the snapshot reads two per run.
/// Anything else goes through serde_json.
fn ids_from_json(text: &str) -> Vec<i64> {
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

fn ids_to_json(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

/// A run from [`RUN_COLUMNS`].
fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    run_fields(row, 3, key_at(row, 0)?)
}

/// A run from [`RUN_FIELDS`], starting at column `at`, for the unit `key`.
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

fn session_text(key: &UnitKey) -> &str {
    key.session.as_ref().map(Label::as_str).unwrap_or("")
}

#[allow(clippy::too_many_arguments)]
fn audit(
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

/// Creates `path` whole: the schema is written to a temporary file, which is
/// then linked into place. So no other nfslurm ever sees a `state.db` of
/// 0 bytes, which it would refuse as emptied (see [`health`]); when two
/// create it at once, the first link wins and the other uses it.
fn create_database(dir: &Path, path: &Path) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".state.db.new-{}-{n}", std::process::id()));
    let open_err = |source| StateError::Open {
        path: tmp.clone(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    {
        let mut conn = Connection::open(&tmp).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(open_err)?;
        schema::migrate(&mut conn).map_err(open_err)?;
    }
    let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600));
    let linked = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A file system without hard links: rename (the last one wins).
        Err(_) => fs::rename(&tmp, path),
    };
    let _ = fs::remove_file(&tmp);
    linked.map_err(|source| StateError::Create {
        path: path.to_path_buf(),
        source,
    })
}

impl Store {
    /// Opens (creating when needed) `<dir>/state.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Store> {
        // Never take an emptied, truncated or foreign database for a new study.
        if let Some(why) = health::problem(dir) {
            return Err(StateError::Refused {
                dir: dir.to_path_buf(),
                why,
            });
        }
        ensure_state_dir(dir)?;
        let path = dir.join("state.db");
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            create_database(dir, &path)?;
        }
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        schema::migrate(&mut conn).map_err(open_err)?;
        // The database may hold personal data too.
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        Ok(Store {
            conn,
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing database read-only side: returns `None` if there is none yet.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>> {
        if dir.join("state.db").exists() || health::problem(dir).is_some() {
            Store::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A write transaction that takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred one that reads first and writes later gets
    /// "database is locked" at once, without waiting, when another process
    /// wrote in between; an immediate one waits for the busy timeout instead.
    fn write_tx(&mut self) -> rusqlite::Result<rusqlite::Transaction<'_>> {
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// Opens `<dir>/state.db` read-only, as it is: no migration, no
    /// creation (for `doctor`, which must change nothing).
    pub fn open_read_only(dir: &Path) -> Result<Store> {
        let path = dir.join("state.db");
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        Ok(Store {
            conn,
            dir: dir.to_path_buf(),
        })
    }

    /// The schema version of the database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// The journal mode (`delete` unless someone changed it).
    pub fn journal_mode(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?)
    }

    /// The `meta` keys that start with `prefix`, prefix removed.
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<HashMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE substr(key, 1, ?2) = ?1")?;
        let rows = stmt.query_map(params![prefix, prefix.len() as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut map = HashMap::new();
        for row in rows {
            let (key, value) = row?;
            if let Some(k) = key.strip_prefix(prefix) {
                map.insert(k.to_string(), value);
            }
        }
        Ok(map)
    }

    /// Writes (or, for `None`, deletes) `meta` keys in one transaction.
    pub fn write_meta(&self, writes: &[(String, Option<String>)]) -> Result<()> {
        // Its first statement writes, so it waits for the lock like an
        // immediate one.
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut set = tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?;
            let mut del = tx.prepare_cached("DELETE FROM meta WHERE key = ?1")?;
            for (key, value) in writes {
                match value {
                    Some(v) => set.execute([key, v])?,
                    None => del.execute([key])?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

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
                subject: label_at(r, 1)?,
                session: label_at(r, 2)?,
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

    fn query_runs(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<RunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r JOIN units u ON u.id = r.unit_id {filter} ORDER BY r.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
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
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        self.query_runs(&format!("WHERE r.id IN ({list})"), &[])
    }

    pub fn run_by_job_id(&self, job_id: &str) -> Result<Option<RunRow>> {
        Ok(self.query_runs("WHERE r.job_id = ?1", &[&job_id])?.pop())
    }

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
                if let Some((old, new, why)) = &u.audit {
                    audit(&tx, now, Some(u.unit_id), None, None, Some(old), new, why)?;
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

    pub fn audit_of_unit(&self, unit_id: i64) -> Result<Vec<AuditRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT at, unit_id, run_id, scan_id, old_state, new_state, reason FROM audit \
             WHERE unit_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([unit_id], |r| {
            Ok(AuditRow {
                at: r.get(0)?,
                unit_id: r.get(1)?,
                run_id: r.get(2)?,
                scan_id: r.get(3)?,
                old_state: r.get(4)?,
                new_state: r.get(5)?,
                reason: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Label {
        Label::new(s).unwrap()
    }

    fn new_run(key: &UnitKey, token: &str) -> NewRun {
        NewRun {
            key: key.clone(),
            token: token.into(),
            executor: ExecutorKind::Local,
            state: RunState::Submitting,
            plan_reason: Reason::New,
            cpus: 1,
            mem_mb: 1024,
            time_limit_s: 3600,
            gpus: 0,
            config_hash: "h".into(),
            inputs: vec![],
            depends_on: vec![],
            script_path: "s".into(),
            log_path: "l".into(),
            cluster: None,
        }
    }

    #[test]
    fn state_dir_is_private_and_schema_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("st");
        let store = Store::open(&state).unwrap();
        let mode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let version = store.schema_version().unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let journal = store.journal_mode().unwrap();
        assert_eq!(journal, "delete");
        drop(store);
        Store::open(&state).unwrap();
    }

    #[test]
    fn runs_are_created_with_batch_dependencies_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let a = UnitKey::new("bids", &label("01"), Some(&label("1")));
        let b = UnitKey::new("qsiprep", &label("01"), None);
        let mut second = new_run(&b, "t2");
        second.depends_on = vec![-1];
        second.inputs = vec![-1];
        let ids = store
            .create_runs(&[new_run(&a, "t1"), second], 100)
            .unwrap();
        let runs = store.runs_by_ids(&ids).unwrap();
        assert_eq!(runs[1].depends_on, vec![ids[0]]);
        assert_eq!(runs[0].attempt, 1);
        store
            .apply(
                &[RunUpdate {
                    run_id: ids[0],
                    state: Some(RunState::Succeeded),
                    exit_code: Some(0),
                    ..Default::default()
                }],
                &[],
                101,
            )
            .unwrap();
        let unit = store.unit_id(&a).unwrap().unwrap();
        let audit = store.audit_of_unit(unit).unwrap();
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[1].old_state.as_deref(), Some("submitting"));
        assert_eq!(audit[1].new_state, "succeeded");
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.last_run(&a).unwrap().state, RunState::Succeeded);
        // A second run of the same unit is attempt 2.
        let ids2 = store.create_runs(&[new_run(&a, "t3")], 102).unwrap();
        assert_eq!(store.run(ids2[0]).unwrap().attempt, 2);
        // Its provenance is recorded with the intent: withdrawn with it (a
        // refused or never-sent sbatch failed on the foreign key before).
        store
            .save_provenance(&[(ids2[0], "{}".to_string())])
            .unwrap();
        store.withdraw_runs(&ids2, "test", 103).unwrap();
        assert_eq!(store.provenance_of(ids2[0]).unwrap(), None);
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.last_run(&a).unwrap().id, ids[0]);
    }

    /// Issue 9: a folder named like a command, registered by an older
    /// nfslurm, is never rendered into a script.
    #[test]
    fn a_session_registered_with_an_unsafe_folder_name_reads_as_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let row = |scan: &str, sub: &str| SessionRow {
            scan_id: scan.into(),
            subject: label(sub),
            session: label("1"),
            dicom_dir: format!("/d/{scan}").into(),
            valid: true,
            problem: None,
            n_files: 9,
        };
        store
            .register_sessions(&[row("X$(touch PWNED)", "01"), row("B", "02")], 1)
            .unwrap();
        let sessions = store.snapshot().unwrap().sessions;
        let bad = sessions
            .iter()
            .find(|s| s.subject.as_str() == "01")
            .unwrap();
        assert!(!bad.valid);
        assert!(
            bad.problem.as_deref().unwrap().starts_with(
                "the folder's name contains `$` `(` `)`, which a shell could run as code"
            ),
            "{:?}",
            bad.problem
        );
        assert!(
            sessions
                .iter()
                .find(|s| s.subject.as_str() == "02")
                .unwrap()
                .valid
        );
    }

    #[test]
    fn a_session_re_maps_only_while_nothing_ran_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let row = |scan: &str, sub: &str| SessionRow {
            scan_id: scan.into(),
            subject: label(sub),
            session: label("1"),
            dicom_dir: format!("/d/{scan}").into(),
            valid: true,
            problem: None,
            n_files: 9,
        };
        store
            .register_sessions(&[row("A", "01"), row("B", "02")], 1)
            .unwrap();
        // A never ran: the new labels are taken.
        let c = store.register_sessions(&[row("A", "07")], 2).unwrap();
        assert_eq!(c.remapped.len(), 1);
        assert_eq!(
            store
                .sessions()
                .unwrap()
                .iter()
                .find(|s| s.scan_id == "A")
                .unwrap()
                .subject,
            label("07")
        );
        // B ran: it keeps its labels and the conflict is reported.
        let key = UnitKey::new("bids", &label("02"), Some(&label("1")));
        store.create_runs(&[new_run(&key, "tb")], 3).unwrap();
        let c = store.register_sessions(&[row("B", "08")], 4).unwrap();
        assert_eq!(c.conflicts.len(), 1);
        assert!(c.remapped.is_empty());
        assert_eq!(
            store
                .sessions()
                .unwrap()
                .iter()
                .find(|s| s.scan_id == "B")
                .unwrap()
                .subject,
            label("02")
        );
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path(), "plan.lock").unwrap();
        assert!(first.is_some());
        assert!(try_lock(dir.path(), "plan.lock").unwrap().is_none());
        drop(first);
        assert!(try_lock(dir.path(), "plan.lock").unwrap().is_some());
    }

    #[test]
    fn sessions_register_once_and_track_validity() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut s = SessionRow {
            scan_id: "SCAN1".into(),
            subject: label("01"),
            session: label("1"),
            dicom_dir: "/d/SCAN1".into(),
            valid: false,
            problem: Some("3 files".into()),
            n_files: 3,
        };
        let c = store
            .register_sessions(std::slice::from_ref(&s), 1)
            .unwrap();
        assert_eq!(c.new.len(), 1);
        let c = store
            .register_sessions(std::slice::from_ref(&s), 2)
            .unwrap();
        assert!(c.new.is_empty() && c.changed.is_empty());
        s.valid = true;
        s.problem = None;
        let c = store.register_sessions(&[s], 3).unwrap();
        assert_eq!(c.changed.len(), 1);
        assert!(store.sessions().unwrap()[0].valid);
    }

    #[test]
    fn run_id_lists_read_fast_and_fall_back_to_json() {
        assert_eq!(ids_from_json("[]"), Vec::<i64>::new());
        assert_eq!(ids_from_json("[7]"), vec![7]);
        assert_eq!(ids_from_json("[1,22,-3]"), vec![1, 22, -3]);
        assert_eq!(ids_from_json(&ids_to_json(&[4, 5])), vec![4, 5]);
        assert_eq!(ids_from_json("[ 1, 2 ]"), vec![1, 2]);
        assert_eq!(ids_from_json("not json"), Vec::<i64>::new());
    }

    #[test]
    fn snapshot_holds_the_last_success_when_a_later_run_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let a = UnitKey::new("bids", &label("01"), Some(&label("1")));
        let b = UnitKey::new("qsiprep", &label("01"), None);
        let ids = store
            .create_runs(&[new_run(&a, "t1"), new_run(&b, "t2")], 100)
            .unwrap();
        let done = |id| RunUpdate {
            run_id: id,
            state: Some(RunState::Succeeded),
            ..Default::default()
        };
        let unit_a = store.unit_id(&a).unwrap().unwrap();
        store
            .apply(
                &[done(ids[0])],
                &[UnitUpdate {
                    unit_id: unit_a,
                    success_run_id: Some(ids[0]),
                    ..Default::default()
                }],
                101,
            )
            .unwrap();
        let again = store.create_runs(&[new_run(&a, "t3")], 102).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.last_run(&a).unwrap().id, again[0]);
        assert_eq!(snap.last_run(&a).unwrap().key, a);
        assert_eq!(snap.success_run(&a).unwrap().id, ids[0]);
        assert_eq!(snap.success_run(&a).unwrap().key, a);
        assert_eq!(snap.last_run(&b).unwrap().key, b);
        assert!(snap.success_run(&b).is_none());
        assert_eq!(snap.runs.len(), 3);
        assert_eq!(snap.units.len(), 2);
        // The snapshot's runs are the rows `run` reads.
        for run in snap.runs.values() {
            assert_eq!(&store.run(run.id).unwrap(), run);
        }
    }

    #[test]
    fn batched_reads_agree_with_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let a = UnitKey::new("bids", &label("01"), Some(&label("1")));
        let b = UnitKey::new("qsiprep", &label("01"), None);
        let never = UnitKey::new("qsiparc", &label("02"), Some(&label("1")));
        store
            .create_runs(&[new_run(&a, "t1"), new_run(&b, "t2")], 100)
            .unwrap();
        store.create_runs(&[new_run(&a, "t3")], 101).unwrap();
        let attempts = store.next_attempts(&[&a, &b, &never]).unwrap();
        assert_eq!((attempts[&a], attempts[&b], attempts[&never]), (3, 2, 1));
        let ids = [
            store.unit_id(&a).unwrap().unwrap(),
            store.unit_id(&b).unwrap().unwrap(),
        ];
        let rows = store.unit_rows(&[ids[0], ids[1], 999]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[&ids[0]], store.unit_row(ids[0]).unwrap());
        let keys = store.unit_keys_of(&[ids[1], 999]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[&ids[1]], b);
    }
}
