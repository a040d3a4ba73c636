//! The header summaries of session folders (`session_headers`), by folder,
//! with the fingerprint they were read under; and the runs' provenance
//! (`run_provenance`, see `crate::provenance`).

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};
use crate::study::dicom::{HeaderSummary, KnownHeaders};

impl Store {
    /// Every kept summary, by folder. A row that no longer parses (written
    /// by another version) is left out, so that its folder is read again.
    pub fn known_headers(&self) -> Result<KnownHeaders> {
        let mut stmt = self
            .conn
            .prepare("SELECT folder, fingerprint, summary FROM session_headers")?;
        let mut rows = stmt.query([])?;
        let mut known = KnownHeaders::new();
        while let Some(row) = rows.next()? {
            let folder: String = row.get(0)?;
            let fingerprint: String = row.get(1)?;
            let summary: String = row.get(2)?;
            if let Ok(summary) = serde_json::from_str::<HeaderSummary>(&summary) {
                known.insert(PathBuf::from(folder), (fingerprint, summary));
            }
        }
        Ok(known)
    }

    /// Keeps the summaries read by a discovery, replacing older ones.
    pub fn save_headers(
        &mut self,
        read: &[(PathBuf, String, HeaderSummary)],
        now: i64,
    ) -> Result<()> {
        if read.is_empty() {
            return Ok(());
        }
        let tx = self.write_tx()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO session_headers (folder, fingerprint, summary, read_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(folder) DO UPDATE SET fingerprint = excluded.fingerprint,
                     summary = excluded.summary, read_at = excluded.read_at",
            )?;
            for (folder, fingerprint, summary) in read {
                let json = serde_json::to_string(summary).expect("a summary serialises");
                stmt.execute(params![folder.to_string_lossy(), fingerprint, json, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The kept summary of one folder, with when it was read.
    pub fn headers_of(&self, folder: &Path) -> Result<Option<(HeaderSummary, i64)>> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT summary, read_at FROM session_headers WHERE folder = ?1",
                params![folder.to_string_lossy()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(json, at)| serde_json::from_str(&json).ok().map(|s| (s, at))))
    }
}

impl Store {
    /// Keeps the provenance documents of new runs: (run ID, JSON).
    pub fn save_provenance(&mut self, rows: &[(i64, String)]) -> Result<()> {
        let tx = self.write_tx()?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO run_provenance (run_id, provenance) VALUES (?1, ?2)",
            )?;
            for (run_id, text) in rows {
                stmt.execute(params![run_id, text])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
