//! Skipping a sync that has nothing to do.
//!
//! A sync that ended quiet (nothing submitted, deferred or refused, no run
//! in flight, the cluster reachable) leaves a mark in `meta`: the study's
//! fingerprint ([`crate::study::study_fingerprint`]: config, binary, mapping
//! sheet, session folders), the database's change counter as its own write
//! leaves it, and the earliest time a retry backoff ends. The next sync
//! that finds the same fingerprint, the same change counter and no backoff
//! ended has nothing to plan: it did nothing else last time, and nothing
//! it reads has changed since.
//!
//! The change counter is SQLite's own (the file header's bytes 24–27, which
//! every committed write transaction bumps in rollback-journal mode, the
//! store's mode): any write by anyone (`retry`, `cancel`, `submit`, a
//! worker, a discovery) makes the mark stale, whatever it wrote. A mark
//! that cannot be trusted is simply not used: the sync runs in full.

use std::os::unix::fs::FileExt;

use rusqlite::OptionalExtension;

use super::{Result, Store, try_lock};
use crate::config::Config;

const MARK_KEY: &str = "sync.fingerprint";
/// The lock `sync`, `submit`, `retry` and `cancel` hold while they plan.
const PLAN_LOCK: &str = "plan.lock";

/// What the last quiet sync left, and what a skipped sync prints again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncMark {
    study: String,
    counter: u32,
    /// The earliest end of a retry backoff after the sync, if any.
    due: Option<i64>,
    /// Unmapped session folders (scan IDs), as `sync -v` lists them.
    pub unmapped: Vec<String>,
    /// Problems of the mapping sheet, as `sync -v` lists them.
    pub problems: Vec<String>,
}

/// The study as found at the start of a sync, and the last mark.
#[derive(Debug)]
pub struct SyncCheck {
    study: Option<String>,
    mark: Option<SyncMark>,
    now: i64,
}

impl SyncCheck {
    /// The mark of the last quiet sync when nothing changed since: the sync
    /// has nothing to do.
    pub fn unchanged(&self) -> Option<&SyncMark> {
        self.mark.as_ref().filter(|_| self.study.is_some())
    }
}

/// How a sync ended, for [`record`].
#[derive(Debug, Clone, Default)]
pub struct SyncEnd {
    /// Nothing submitted, deferred or refused, and the cluster reachable.
    pub quiet: bool,
    /// The last audit row the sync reported: a newer one is someone else's.
    pub audit_seen: i64,
    pub unmapped: Vec<String>,
    pub problems: Vec<String>,
}

/// Looks at the study and the state at the start of a sync (holding the
/// plan lock): its fingerprint, and whether the last mark still holds.
pub fn check(config: &Config, store: &Store, now: i64) -> Result<SyncCheck> {
    // An error (an unreadable sheet, a missing root) is the full sync's to report.
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64);
    let study = crate::study::study_fingerprint(config, at).ok().flatten();
    let mark = match &study {
        Some(study) => store
            .sync_mark()?
            .filter(|m| &m.study == study && m.due.is_none_or(|due| now < due))
            .filter(|m| store.change_counter().ok() == Some(m.counter))
            .filter(|_| store.journal_mode().is_ok_and(|m| m == "delete")),
        None => None,
    };
    Ok(SyncCheck { study, mark, now })
}

/// A skipped sync: writes `also` (the sync's own bookkeeping, such as its
/// time) and keeps the mark valid across that write, in one transaction.
pub fn skipped(
    store: &mut Store,
    check: &SyncCheck,
    also: &[(String, Option<String>)],
) -> Result<()> {
    let dir = store.dir.clone();
    let tx = store.write_tx()?;
    let mut writes = also.to_vec();
    if let Some(mark) = check.unchanged() {
        // Someone wrote since the check: the mark goes, the next sync runs in full.
        let kept = (read_counter(&dir)? == mark.counter).then(|| SyncMark {
            counter: mark.counter.wrapping_add(1),
            ..mark.clone()
        });
        writes.push((MARK_KEY.into(), kept.map(|m| mark_text(&m))));
    }
    super::meta::write_meta_in(&tx, &writes)?;
    tx.commit()?;
    Ok(())
}

/// After a full sync: leaves a mark when it ended quiet, with nothing in
/// flight and no audit row it did not report; else removes the last one.
pub fn record(store: &mut Store, check: SyncCheck, end: SyncEnd) -> Result<()> {
    let (Some(study), true) = (check.study, end.quiet) else {
        return forget(store);
    };
    // Under the plan lock, so that no `retry` or `submit` slips in between.
    let Some(_lock) = try_lock(&store.dir, PLAN_LOCK)? else {
        return forget(store);
    };
    let dir = store.dir.clone();
    let tx = store.write_tx()?;
    let open: i64 = tx.query_row(
        "SELECT COUNT(*) FROM runs WHERE state IN ('submitting', 'pending', 'running')",
        [],
        |r| r.get(0),
    )?;
    let last_audit: i64 =
        tx.query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |r| r.get(0))?;
    let mark = if open == 0 && last_audit == end.audit_seen {
        let due: Option<i64> = tx.query_row(
            "SELECT MIN(next_attempt_at) FROM units WHERE next_attempt_at > ?1",
            [check.now],
            |r| r.get(0),
        )?;
        Some(SyncMark {
            study,
            // Read inside the write transaction, so no other writer can
            // commit meanwhile; this transaction's commit is the last write.
            counter: read_counter(&dir)?.wrapping_add(1),
            due,
            unmapped: end.unmapped,
            problems: end.problems,
        })
    } else {
        None
    };
    super::meta::write_meta_in(&tx, &[(MARK_KEY.into(), mark.as_ref().map(mark_text))])?;
    tx.commit()?;
    Ok(())
}

/// Removes the mark, if there is one (no write otherwise).
fn forget(store: &mut Store) -> Result<()> {
    if store.meta(MARK_KEY)?.is_some() {
        store.write_meta(&[(MARK_KEY.into(), None)])?;
    }
    Ok(())
}

fn mark_text(mark: &SyncMark) -> String {
    serde_json::to_string(mark).expect("a mark is strings and integers")
}

/// SQLite's file change counter of `<dir>/state.db`, as on disk.
fn read_counter(dir: &std::path::Path) -> Result<u32> {
    let path = dir.join("state.db");
    let err = |source| super::StateError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(err)?;
    let mut bytes = [0u8; 4];
    file.read_exact_at(&mut bytes, 24).map_err(err)?;
    Ok(u32::from_be_bytes(bytes))
}

impl Store {
    /// The mark of the last quiet sync, if any (a mark written by another
    /// version that no longer parses counts as none).
    fn sync_mark(&self) -> Result<Option<SyncMark>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [MARK_KEY], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// SQLite's file change counter of `state.db`.
    fn change_counter(&self) -> Result<u32> {
        read_counter(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    use crate::model::{Label, UnitKey};
    use crate::state::{NewRun, UnitUpdate};

    const NOW: i64 = 2_000_000_000;

    fn write_config(dir: &Path, settle: &str, command: &str) {
        std::fs::write(
            dir.join("nfslurm.yaml"),
            format!(
                "version: 1\nsite: local\nexecutor: local\npaths:\n  dicom_root: dicom\n\
                 discovery:\n  mapping: {{ file: mapping.csv }}\n  settle: {settle}\n\
                 pipelines:\n  bids:\n    level: session\n    command: {command}\n"
            ),
        )
        .unwrap();
    }

    /// A study of two mapped sessions of two files each, files dated an hour ago.
    fn study() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), "0s", "echo {{ subject.label }}");
        std::fs::write(
            dir.path().join("mapping.csv"),
            "ScanID,SubjectCode\nS1,01\nS2,02\n",
        )
        .unwrap();
        for scan in ["S1", "S2"] {
            add_session(dir.path(), scan);
        }
        dir
    }

    fn add_session(root: &Path, scan: &str) {
        let folder = root.join("dicom").join(scan).join("DWI");
        std::fs::create_dir_all(&folder).unwrap();
        for f in ["IM1", "IM2"] {
            std::fs::write(folder.join(f), "DICM").unwrap();
        }
    }

    fn config(dir: &Path) -> Config {
        crate::config::load(&dir.join("nfslurm.yaml")).unwrap()
    }

    /// `check` at `now`, then `record` as a quiet sync that saw every audit row.
    fn quiet_sync(dir: &Path, now: i64) -> Store {
        let config = config(dir);
        let mut store = Store::open(&config.paths.state_dir).unwrap();
        let check = check(&config, &store, now).unwrap();
        let end = SyncEnd {
            quiet: true,
            audit_seen: store.last_audit_id().unwrap(),
            unmapped: vec!["S9".into()],
            problems: vec![],
        };
        record(&mut store, check, end).unwrap();
        store
    }

    fn unchanged(dir: &Path, now: i64) -> bool {
        let config = config(dir);
        let store = Store::open(&config.paths.state_dir).unwrap();
        check(&config, &store, now).unwrap().unchanged().is_some()
    }

    fn key(subject: &str) -> UnitKey {
        UnitKey {
            pipeline: "bids".into(),
            subject: Label::new(subject).unwrap(),
            session: Some(Label::new("1").unwrap()),
        }
    }

    fn new_run(key: &UnitKey) -> NewRun {
        NewRun::example(key, "t")
    }

    #[test]
    fn a_quiet_sync_leaves_a_mark_that_holds_until_something_changes() {
        let dir = study();
        assert!(!unchanged(dir.path(), NOW), "no mark before the first sync");
        drop(quiet_sync(dir.path(), NOW));
        assert!(unchanged(dir.path(), NOW + 1));
        // A skipped sync writes its time and keeps the mark, again and again.
        for i in 2..5 {
            let config = config(dir.path());
            let mut store = Store::open(&config.paths.state_dir).unwrap();
            let c = check(&config, &store, NOW + i).unwrap();
            assert_eq!(c.unchanged().unwrap().unmapped, vec!["S9".to_string()]);
            let also = [("sync.last_at".to_string(), Some((NOW + i).to_string()))];
            skipped(&mut store, &c, &also).unwrap();
            assert_eq!(
                store.meta("sync.last_at").unwrap(),
                Some((NOW + i).to_string())
            );
        }
        assert!(unchanged(dir.path(), NOW + 10));
    }

    #[test]
    fn a_new_session_folder_is_a_change() {
        let dir = study();
        drop(quiet_sync(dir.path(), NOW));
        add_session(dir.path(), "S3");
        assert!(!unchanged(dir.path(), NOW + 1));
        // An unmapped one too: the listing is part of the fingerprint.
        drop(quiet_sync(dir.path(), NOW));
        std::fs::create_dir_all(dir.path().join("dicom/S9")).unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
    }

    #[test]
    fn a_file_rewritten_in_place_is_a_change() {
        let dir = study();
        drop(quiet_sync(dir.path(), NOW));
        // Same name, so no folder's mtime changes; its size does.
        std::fs::write(dir.path().join("dicom/S1/DWI/IM1"), "DICM and more").unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
        drop(quiet_sync(dir.path(), NOW));
        // Same size, another mtime.
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("dicom/S2/DWI/IM2"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
    }

    #[test]
    fn a_changed_sheet_or_config_is_a_change() {
        let dir = study();
        drop(quiet_sync(dir.path(), NOW));
        std::fs::write(
            dir.path().join("mapping.csv"),
            "ScanID,SubjectCode\nS1,01\nS2,03\n",
        )
        .unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
        drop(quiet_sync(dir.path(), NOW));
        write_config(dir.path(), "0s", "echo {{ subject.label }} again");
        assert!(!unchanged(dir.path(), NOW + 1));
    }

    #[test]
    fn a_settling_folder_is_never_taken_as_unchanged() {
        let dir = study();
        // Files written just now, under a settle time of an hour.
        write_config(dir.path(), "1h", "echo {{ subject.label }}");
        let config = config(dir.path());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(
            crate::study::study_fingerprint(&config, std::time::SystemTime::now()).unwrap(),
            None
        );
        drop(quiet_sync(dir.path(), now));
        assert!(!unchanged(dir.path(), now));
    }

    #[test]
    fn any_write_to_the_state_since_is_a_change() {
        let dir = study();
        // `submit`: a run created.
        let mut store = quiet_sync(dir.path(), NOW);
        store.create_runs(&[new_run(&key("01"))], NOW).unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
        // `retry`/`cancel`: a unit updated, even with no audit row.
        let mut store = quiet_sync(dir.path(), NOW);
        let ids = store.ensure_units(&[&key("02")]).unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
        let mut store2 = quiet_sync(dir.path(), NOW);
        store2
            .apply(
                &[],
                &[UnitUpdate {
                    unit_id: ids[0],
                    cancelled: Some(true),
                    ..Default::default()
                }],
                NOW,
            )
            .unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
        drop(store);
    }

    #[test]
    fn no_mark_with_runs_in_flight_or_after_a_sync_that_did_something() {
        let dir = study();
        let mut store = quiet_sync(dir.path(), NOW);
        store.create_runs(&[new_run(&key("01"))], NOW).unwrap();
        drop(store);
        // Every audit row seen, but a run is in flight: nothing is marked.
        drop(quiet_sync(dir.path(), NOW));
        assert!(!unchanged(dir.path(), NOW + 1));

        let dir = study();
        drop(quiet_sync(dir.path(), NOW));
        let config = config(dir.path());
        let mut store = Store::open(&config.paths.state_dir).unwrap();
        let c = check(&config, &store, NOW).unwrap();
        let end = SyncEnd {
            quiet: false,
            audit_seen: store.last_audit_id().unwrap(),
            ..Default::default()
        };
        record(&mut store, c, end).unwrap();
        assert!(!unchanged(dir.path(), NOW + 1), "the old mark is gone");

        // An audit row the sync did not report (written after it looked).
        let c = check(&config, &store, NOW).unwrap();
        let seen = store.last_audit_id().unwrap();
        store.create_runs(&[new_run(&key("02"))], NOW).unwrap();
        let run = store.all_runs().unwrap()[0].id;
        store.withdraw_runs(&[run], "test", NOW).unwrap();
        let end = SyncEnd {
            quiet: true,
            audit_seen: seen,
            ..Default::default()
        };
        record(&mut store, c, end).unwrap();
        assert!(!unchanged(dir.path(), NOW + 1));
    }

    #[test]
    fn a_retry_backoff_that_ends_makes_the_mark_stale() {
        let dir = study();
        let config = config(dir.path());
        let mut store = Store::open(&config.paths.state_dir).unwrap();
        let ids = store.ensure_units(&[&key("01")]).unwrap();
        store
            .apply(
                &[],
                &[UnitUpdate {
                    unit_id: ids[0],
                    next_attempt_at: Some(Some(NOW + 60)),
                    ..Default::default()
                }],
                NOW,
            )
            .unwrap();
        drop(store);
        drop(quiet_sync(dir.path(), NOW));
        assert!(unchanged(dir.path(), NOW + 59));
        assert!(!unchanged(dir.path(), NOW + 60));
    }

    #[test]
    fn a_write_between_the_check_and_a_skip_drops_the_mark() {
        let dir = study();
        drop(quiet_sync(dir.path(), NOW));
        let config = config(dir.path());
        let mut store = Store::open(&config.paths.state_dir).unwrap();
        let c = check(&config, &store, NOW + 1).unwrap();
        assert!(c.unchanged().is_some());
        let mut other = Store::open(&config.paths.state_dir).unwrap();
        other.create_runs(&[new_run(&key("01"))], NOW).unwrap();
        skipped(&mut store, &c, &[]).unwrap();
        assert!(store.meta(MARK_KEY).unwrap().is_none());
        assert!(!unchanged(dir.path(), NOW + 2));
    }
}
