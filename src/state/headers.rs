//! The header summaries of session folders (`session_headers`), by folder,
//! with the fingerprint they were read under; and the runs' provenance
//! (`run_provenance`, see `crate::provenance`).

use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};
use crate::study::dicom::{HeaderSummary, Known, KnownHeaders};

impl Store {
    /// Every kept folder: its fingerprint, its kept verdict, and its
    /// summary, parsed only where needed: when `all_summaries` (the scan ID
    /// comes from a header) or when the verdict was reached under other rules
    /// than `verdict_key`. A summary that no longer parses (written by
    /// another version) is left out, so that its folder is read again.
    pub fn known_headers(&self, verdict_key: &str, all_summaries: bool) -> Result<KnownHeaders> {
        let mut stmt = self.conn.prepare(
            "SELECT folder, fingerprint, verdict_key, on_headers, problem,
                    CASE WHEN ?2 OR verdict_key IS NOT ?1 THEN summary END
             FROM session_headers",
        )?;
        let mut rows = stmt.query(params![verdict_key, all_summaries])?;
        let mut known = KnownHeaders::new();
        while let Some(row) = rows.next()? {
            let folder: String = row.get(0)?;
            let key: Option<String> = row.get(2)?;
            let on_headers: Option<bool> = row.get(3)?;
            let summary: Option<String> = row.get(5)?;
            let summary = summary.and_then(|s| serde_json::from_str::<HeaderSummary>(&s).ok());
            let verdict = match (key, on_headers) {
                (Some(k), Some(h)) => Some((k, h, row.get(4)?)),
                _ => None,
            };
            if verdict.is_none() && summary.is_none() {
                continue;
            }
            known.insert(
                PathBuf::from(folder),
                Known {
                    fingerprint: row.get(1)?,
                    verdict,
                    summary,
                },
            );
        }
        Ok(known)
    }

    /// Keeps the validation verdicts of a discovery beside the summaries.
    pub fn save_verdicts(
        &mut self,
        verdicts: &[(PathBuf, String, bool, Option<String>)],
    ) -> Result<()> {
        if verdicts.is_empty() {
            return Ok(());
        }
        let tx = self.write_tx()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE session_headers SET verdict_key = ?2, on_headers = ?3, problem = ?4
                 WHERE folder = ?1 AND (verdict_key IS NOT ?2 OR on_headers IS NOT ?3
                     OR problem IS NOT ?4)",
            )?;
            for (folder, key, on_headers, problem) in verdicts {
                stmt.execute(params![folder.to_string_lossy(), key, on_headers, problem])?;
            }
        }
        tx.commit()?;
        Ok(())
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
                     summary = excluded.summary, read_at = excluded.read_at,
                     verdict_key = NULL, on_headers = NULL, problem = NULL",
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

    /// The provenance document kept for a run, if any.
    pub fn provenance_of(&self, run_id: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT provenance FROM run_provenance WHERE run_id = ?1",
                params![run_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The sha256 of an image file computed before, if the file has not
    /// changed since (same size and modification time).
    pub fn image_digest(&self, path: &str, size: u64, mtime_ns: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256 FROM image_digests WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
                params![path, size as i64, mtime_ns],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Keeps an image file's sha256 for its size and modification time.
    pub fn save_image_digest(
        &self,
        path: &str,
        size: u64,
        mtime_ns: i64,
        sha256: &str,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO image_digests (path, size, mtime_ns, sha256) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(path) DO UPDATE SET size = excluded.size, \
                 mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256",
            params![path, size as i64, mtime_ns, sha256],
        )?;
        Ok(())
    }
}
