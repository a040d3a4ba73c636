//! What a watcher of the state (the server) needs: a cheap "did anyone
//! write since I last looked?".

use super::{Result, Store};

impl Store {
    /// SQLite's `data_version`: changes when another connection commits to
    /// the database, so a reader polls it for nearly nothing.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}
