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
//!
//! One file per concern, each adding to `impl Store`: `lock` (the state
//! directory and its lock files), `meta` (key/value records, pragmas),
//! `sessions`, `units`, `runs`, `audit`, `snapshot` (what the planner
//! reads, in one transaction), `headers` (kept DICOM summaries) and
//! `housekeeping` (`clean`); `fingerprint` lets a sync with nothing to do
//! skip its planning. `schema` migrates, `health` refuses a damaged
//! database, `complete` serves shell completion.

mod audit;
pub mod complete;
pub mod fingerprint;
mod headers;
pub mod health;
mod housekeeping;
mod lock;
mod meta;
mod runs;
mod schema;
mod sessions;
mod snapshot;
mod units;
mod watch;

pub use audit::AuditRow;
pub use housekeeping::{RunSummary, Summarised};
pub use lock::{LockGuard, ensure_state_dir, lock_with_timeout, try_lock};
pub use runs::{NewRun, RunRow, RunUpdate, UnitUpdate};
pub use sessions::{SessionChanges, SessionRow};
pub use snapshot::{Snapshot, SnapshotHasher, SnapshotRun};
pub use units::UnitRow;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::model::{Label, UnitKey};

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
    #[error("cannot read the state database `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

pub struct Store {
    conn: Connection,
    pub dir: PathBuf,
}

fn label_from_db(text: String) -> rusqlite::Result<Label> {
    Label::new(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A unit key from the columns `at` (pipeline), `at + 1` (subject) and `at + 2`
/// (session, empty for a subject-level unit), read in place: the snapshot
/// reads one per unit, and a temporary `String` per label adds up.
fn key_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UnitKey> {
    key_with(row, at, label_at)
}

/// [`key_at`] with the labels read by `label` (column index in, label out).
fn key_with(
    row: &rusqlite::Row<'_>,
    at: usize,
    mut label: impl FnMut(&rusqlite::Row<'_>, usize) -> rusqlite::Result<Label>,
) -> rusqlite::Result<UnitKey> {
    let session = row.get_ref(at + 2)?.as_str()?;
    Ok(UnitKey {
        pipeline: row.get_ref(at)?.as_str()?.to_string(),
        subject: label(row, at + 1)?,
        session: if session.is_empty() {
            None
        } else {
            Some(label(row, at + 2)?)
        },
    })
}

/// A label from column `i`, read in place.
fn label_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Label> {
    Label::new(row.get_ref(i)?.as_str()?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The labels read from many rows, each distinct text validated and
/// allocated once and then shared: the 35,000 units of 10,000 sessions name
/// 5,000 subjects and a few session labels, and a fresh `Label` per column
/// per row is an allocation to make and to free.
#[derive(Default)]
struct Labels(HashSet<Label, SnapshotHasher>);

impl Labels {
    /// The label in column `i`, read in place.
    fn at(&mut self, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Label> {
        let text = row.get_ref(i)?.as_str()?;
        if let Some(label) = self.0.get(text) {
            return Ok(label.clone());
        }
        let label = label_at(row, i)?;
        self.0.insert(label.clone());
        Ok(label)
    }

    /// [`key_at`] with the labels shared.
    fn key_at(&mut self, row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<UnitKey> {
        key_with(row, at, |row, i| self.at(row, i))
    }
}

fn session_text(key: &UnitKey) -> &str {
    key.session.as_ref().map(Label::as_str).unwrap_or("")
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
}

#[cfg(test)]
mod tests;
