//! Frees what a study no longer needs (`nfslurm clean`):
//!
//! - the work directories of `done` units (their success ended before the
//!   cut-off);
//! - the scripts and logs of old attempts: runs that ended before the
//!   cut-off and are neither a unit's last run nor its last success, nor in
//!   flight;
//! - run rows older than `housekeeping.summarise_runs_after`, folded into
//!   per-unit summaries (see `state::housekeeping`: never a run the planner
//!   or the worker reads), and their files.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::model::UnitState;
use crate::plan::{self, Request};
use crate::state::{LockGuard, Store};

/// Whether a clean removes and folds, or only says what it would.
pub enum Mode<'a> {
    /// Looks only: takes no lock, writes nothing.
    DryRun,
    /// Removes and folds, under the plan lock (a `sync` cannot submit a unit
    /// whose work directory is being removed).
    Apply(&'a LockGuard),
}

/// Bytes under `path`, symlinks counted as themselves (never followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// One path a clean removes (or would).
pub struct Item {
    /// What it is, for people: `work dir of UNIT`, `attempt N of UNIT`.
    pub what: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// A work directory (else a file).
    pub dir: bool,
}

/// What a clean did, or would do.
pub struct CleanReport {
    pub items: Vec<Item>,
    /// Run rows folded into per-unit summaries.
    pub summarised: usize,
    /// Bytes freed (or that would be).
    pub freed: u64,
    /// Paths that could not be removed, with why.
    pub failed: Vec<(PathBuf, std::io::Error)>,
}

/// Cleans what ended more than `age_s` seconds ago.
pub fn clean(
    config: &Config,
    store: &mut Store,
    age_s: u64,
    mode: Mode<'_>,
) -> anyhow::Result<CleanReport> {
    let dry_run = matches!(mode, Mode::DryRun);
    let now = super::now();
    let cutoff = now - age_s as i64;
    let snapshot = store.snapshot()?;
    let plan = plan::plan(config, &snapshot, now, &Request::default());
    let mut items: Vec<Item> = Vec::new();

    // Work directories of done units.
    for unit in plan.units.iter().filter(|u| u.state == UnitState::Done) {
        let Some(success) = snapshot.success_run(&unit.key) else {
            continue;
        };
        if success.ended_at.is_none_or(|t| t >= cutoff) {
            continue;
        }
        let dir = crate::render::work_dir_for(config, &unit.key);
        if dir.is_dir() {
            items.push(Item {
                what: format!("work dir of {}", unit.key),
                bytes: size_of(&dir),
                path: dir,
                dir: true,
            });
        }
    }

    // Scripts and logs of old attempts.
    let mut keep: HashSet<i64> = HashSet::new();
    for u in snapshot.units.values() {
        keep.extend(u.last_run_id);
        keep.extend(u.success_run_id);
    }
    let runs = store.all_runs()?;
    let mut listed: HashSet<PathBuf> = HashSet::new();
    let mut add_files = |items: &mut Vec<Item>, what: String, [script, log]: [&Path; 2]| {
        // An attempt's files: its script and log, the local job's lock and
        // status beside the log, its provenance beside the script.
        let files = [
            script.to_path_buf(),
            log.to_path_buf(),
            crate::executor::local::JobFiles::of_log(log).lock,
            crate::executor::local::JobFiles::of_log(log).status,
            crate::provenance::file_of(script),
        ];
        for path in &files {
            if path.is_file() && listed.insert(path.clone()) {
                items.push(Item {
                    what: what.clone(),
                    bytes: size_of(path),
                    path: path.clone(),
                    dir: false,
                });
            }
        }
    };
    for run in &runs {
        if keep.contains(&run.id) || run.state.in_flight() {
            continue;
        }
        if run.ended_at.is_none_or(|t| t >= cutoff) {
            continue;
        }
        add_files(
            &mut items,
            format!("attempt {} of {}", run.attempt, run.key),
            [&run.script_path, &run.log_path],
        );
    }

    // Run rows folded into summaries, and their files.
    let summarised = match config.housekeeping.summarise_runs_after_s {
        Some(after) => {
            let s = store.summarise_runs(now - after as i64, dry_run)?;
            for pair in s.files.chunks(2) {
                if let [script, log] = pair {
                    add_files(&mut items, "a summarised run".into(), [script, log]);
                }
            }
            s.run_ids.len()
        }
        None => 0,
    };

    let mut freed = 0u64;
    let mut failed = Vec::new();
    if !dry_run {
        for item in &items {
            let result = if item.dir {
                fs::remove_dir_all(&item.path)
            } else {
                fs::remove_file(&item.path)
            };
            match result {
                Ok(()) => freed += item.bytes,
                Err(e) => failed.push((item.path.clone(), e)),
            }
        }
    } else {
        freed = items.iter().map(|i| i.bytes).sum();
    }
    Ok(CleanReport {
        items,
        summarised,
        freed,
        failed,
    })
}
