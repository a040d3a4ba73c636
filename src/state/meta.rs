//! The database's own facts (schema version, journal mode, integrity) and
//! the `meta` table of small key/value records.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};

impl Store {
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
        write_meta_in(&tx, writes)?;
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
}

/// Writes (or, for `None`, deletes) `meta` keys inside a transaction the
/// caller holds (and commits).
pub(super) fn write_meta_in(
    tx: &rusqlite::Transaction<'_>,
    writes: &[(String, Option<String>)],
) -> Result<()> {
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
    Ok(())
}
