//! Is the state in a state directory nfslurm's, and whole?
//!
//! SQLite takes an empty or missing file for a new database, so without a
//! check a `state.db` emptied by a full disk, cut short by a bad copy, or
//! replaced by another program's file would silently become a new study:
//! every unit would run again and overwrite `attempt-1.sbatch`. So before
//! the store opens a database it asks [`problem`], and refuses what is not a
//! whole nfslurm database. The check is cheap (the 100-byte header, the file
//! size, and the schema version on a read-only connection), because every
//! command opens the store.
//!
//! Starting over is the user's decision, taken with `--reset-state`:
//! [`reset`] moves the database, `scripts/` and `logs/` aside into a
//! timestamped `backup-…` folder of the state directory (nothing is
//! deleted), and the next open starts a fresh study.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::schema::SCHEMA_VERSION;

const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The tables every nfslurm database has.
const TABLES: &[&str] = &["subjects", "sessions", "units", "runs", "audit", "meta"];

/// Why the state in `dir` must not be used, as a sentence; `None` when it is
/// a whole nfslurm database, or when there is no state at all (a new study).
pub fn problem(dir: &Path) -> Option<String> {
    let path = dir.join("state.db");
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return runs_on_disk(dir).map(|what| {
                format!(
                    "`{}` has {what} but no `state.db`: the database that knew them is gone",
                    dir.display()
                )
            });
        }
        // Unreadable (permissions): opening reports it with its cause.
        Err(_) => return None,
    };
    let db = format!("the state database `{}`", path.display());
    if meta.is_dir() {
        return Some(format!("{db} is a folder"));
    }
    let size = meta.len();
    if size == 0 {
        return Some(format!(
            "{db} is empty (0 bytes): it was emptied, it is not a new study"
        ));
    }
    let mut header = [0u8; 100];
    let read = fs::File::open(&path).and_then(|mut f| {
        let mut n = 0;
        while n < header.len() {
            match f.read(&mut header[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    });
    let read = match read {
        Ok(n) => n,
        Err(_) => return None,
    };
    if read < 16 || &header[..16] != HEADER {
        return Some(format!("{db} is not an SQLite database"));
    }
    if read < 100 {
        return Some(format!(
            "{db} is truncated: {size} bytes, less than an SQLite header"
        ));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n if n >= 512 && n.is_power_of_two() => u64::from(n),
        n => {
            return Some(format!(
                "{db} is damaged: its header gives a page size of {n}"
            ));
        }
    };
    // After a crash, SQLite rolls a hot journal back on open: the file may be
    // any size until then.
    let hot_journal = dir.join("state.db-journal").exists();
    if !hot_journal {
        let change_counter = &header[24..28];
        let valid_for = &header[92..96];
        let pages = u64::from(u32::from_be_bytes([
            header[28], header[29], header[30], header[31],
        ]));
        if change_counter == valid_for && pages > 0 && size < pages * page_size {
            return Some(format!(
                "{db} is truncated: {size} bytes, where its header says {}",
                pages * page_size
            ));
        }
        if size % page_size != 0 {
            return Some(format!(
                "{db} is truncated: {size} bytes, not a whole number of {page_size}-byte pages"
            ));
        }
    }
    if hot_journal {
        // A read-only look cannot roll the journal back; the store's own
        // open does, and then the next command looks again.
        return None;
    }
    schema_problem(&path).map(|why| format!("{db} {why}"))
}

/// Whether the database holds nfslurm's schema, read without writing.
fn schema_problem(path: &Path) -> Option<String> {
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(e) => return Some(format!("cannot be opened: {e}")),
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(30));
    let version: i64 = match conn.query_row("PRAGMA user_version", [], |r| r.get(0)) {
        Ok(v) => v,
        Err(e) => return Some(format!("is damaged: {e}")),
    };
    let tables: Vec<String> = match conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        }) {
        Ok(tables) => tables,
        Err(e) => return Some(format!("is damaged: {e}")),
    };
    if version == 0 {
        return Some(if tables.is_empty() {
            "is an SQLite database that nfslurm never wrote to".to_string()
        } else {
            let names: Vec<String> = tables.iter().take(5).map(|t| format!("`{t}`")).collect();
            format!(
                "belongs to another program: tables {}, no nfslurm schema",
                names.join(", ")
            )
        });
    }
    if version > SCHEMA_VERSION {
        // `Store::open` says this one with its own hint (upgrade nfslurm).
        return None;
    }
    let missing: Vec<String> = TABLES
        .iter()
        .filter(|t| !tables.iter().any(|have| have == *t))
        .map(|t| format!("`{t}`"))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "is not a whole nfslurm database: it lacks the tables {}",
            missing.join(", ")
        ));
    }
    None
}

/// `Some("job scripts")` when `dir` holds rendered scripts or job logs,
/// which only a study with a database can have made.
fn runs_on_disk(dir: &Path) -> Option<&'static str> {
    let non_empty = |name: &str| {
        fs::read_dir(dir.join(name))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false)
    };
    if non_empty("scripts") {
        Some("job scripts")
    } else if non_empty("logs") {
        Some("job logs")
    } else {
        None
    }
}

/// What `--reset-state` moves aside, in this order.
const MOVED: &[&str] = &["state.db", "state.db-journal", "scripts", "logs"];

/// Moves a refused state aside into `<dir>/backup-<stamp>/` and returns that
/// folder. Refuses (with the reason) when the state is healthy or absent:
/// starting a healthy study over is not what the flag is for.
pub fn reset(dir: &Path, stamp: &str) -> Result<PathBuf, String> {
    if problem(dir).is_none() {
        return Err(if dir.join("state.db").exists() {
            format!(
                "the state in `{}` is healthy: `--reset-state` only sets aside a state that nfslurm refuses",
                dir.display()
            )
        } else {
            format!("`{}` holds no state to reset", dir.display())
        });
    }
    let mut backup = dir.join(format!("backup-{stamp}"));
    let mut n = 1;
    while backup.exists() {
        n += 1;
        backup = dir.join(format!("backup-{stamp}-{n}"));
    }
    fs::create_dir(&backup).map_err(|e| format!("cannot create `{}`: {e}", backup.display()))?;
    for name in MOVED {
        let from = dir.join(name);
        if from.symlink_metadata().is_ok() {
            fs::rename(&from, backup.join(name)).map_err(|e| {
                format!(
                    "cannot move `{}` to `{}`: {e}",
                    from.display(),
                    backup.display()
                )
            })?;
        }
    }
    Ok(backup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;

    /// A state dir with a real database holding one registered session.
    fn study() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_meta(&[("k".into(), Some("v".into()))]).unwrap();
        drop(store);
        fs::create_dir_all(dir.path().join("scripts/bids/sub-01")).unwrap();
        fs::write(
            dir.path().join("scripts/bids/sub-01/attempt-1.sbatch"),
            "#!/bin/bash\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_whole_database_and_a_new_study_pass() {
        let dir = study();
        assert_eq!(problem(dir.path()), None);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(problem(empty.path()), None);
    }

    /// A new study opened by several commands at once: none of them sees a
    /// half-created database (a 0-byte `state.db` would be refused).
    #[test]
    fn a_new_database_is_never_seen_half_created() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let opened: Vec<bool> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..6)
                    .map(|_| scope.spawn(|| Store::open(dir.path()).is_ok()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(opened.iter().all(|ok| *ok), "{opened:?}");
            assert_eq!(problem(dir.path()), None);
        }
    }

    #[test]
    fn an_emptied_database_is_refused() {
        let dir = study();
        fs::write(dir.path().join("state.db"), "").unwrap();
        let why = problem(dir.path()).unwrap();
        assert!(
            why.ends_with("is empty (0 bytes): it was emptied, it is not a new study"),
            "{why}"
        );
    }

    #[test]
    fn a_truncated_database_is_refused() {
        let dir = study();
        let path = dir.path().join("state.db");
        let bytes = fs::read(&path).unwrap();
        assert!(bytes.len() > 4096);
        fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
        let why = problem(dir.path()).unwrap();
        assert!(why.contains("is truncated:"), "{why}");
        fs::write(&path, &bytes[..50]).unwrap();
        assert!(
            problem(dir.path())
                .unwrap()
                .contains("less than an SQLite header")
        );
        fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        assert!(problem(dir.path()).unwrap().contains("is truncated:"));
    }

    #[test]
    fn a_foreign_file_or_database_is_refused() {
        let dir = study();
        let path = dir.path().join("state.db");
        fs::write(&path, "name,value\na,1\n").unwrap();
        assert!(
            problem(dir.path())
                .unwrap()
                .ends_with("is not an SQLite database")
        );
        fs::remove_file(&path).unwrap();
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE photos (id INTEGER)")
            .unwrap();
        drop(other);
        let before = fs::read(&path).unwrap();
        let why = problem(dir.path()).unwrap();
        assert!(
            why.ends_with("belongs to another program: tables `photos`, no nfslurm schema"),
            "{why}"
        );
        assert_eq!(fs::read(&path).unwrap(), before, "looking changed nothing");
    }

    #[test]
    fn scripts_without_a_database_are_refused() {
        let dir = study();
        fs::remove_file(dir.path().join("state.db")).unwrap();
        let why = problem(dir.path()).unwrap();
        assert!(
            why.ends_with("has job scripts but no `state.db`: the database that knew them is gone"),
            "{why}"
        );
    }

    #[test]
    fn reset_moves_the_state_aside_and_refuses_a_healthy_one() {
        let dir = study();
        let err = reset(dir.path(), "20261202T060000Z").unwrap_err();
        assert!(err.contains("is healthy"), "{err}");
        fs::write(dir.path().join("state.db"), "").unwrap();
        let backup = reset(dir.path(), "20261202T060000Z").unwrap();
        assert_eq!(backup, dir.path().join("backup-20261202T060000Z"));
        assert!(backup.join("state.db").exists());
        assert!(backup.join("scripts/bids/sub-01/attempt-1.sbatch").exists());
        assert!(!dir.path().join("state.db").exists());
        assert!(!dir.path().join("scripts").exists());
        assert_eq!(problem(dir.path()), None, "a new study now");
    }
}
