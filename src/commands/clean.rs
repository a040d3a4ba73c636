//! `nfslurm clean [--older-than 30d] [--dry-run]`: frees what a study no
//! longer needs.
//!
//! - the work directories of `done` units (their success ended before the
//!   cut-off);
//! - the scripts and logs of old attempts: runs that ended before the
//!   cut-off and are neither a unit's last run nor its last success, nor in
//!   flight;
//! - run rows older than `housekeeping.summarise_runs_after`, folded into
//!   per-unit summaries (see `state::housekeeping`: never a run the planner
//!   or the worker reads), and their files.
//!
//! It holds the plan lock (a `sync` cannot submit a unit whose work
//! directory is being removed); `--dry-run` takes no lock and writes nothing.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{Failure, Settings, display_path, json_path};
use crate::engine;
use crate::model::UnitState;
use crate::output;
use crate::plan::{self, Request};
use crate::state::Store;

/// The default of `--older-than`.
pub const DEFAULT_AGE: &str = "30d";

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

struct Item {
    what: String,
    path: PathBuf,
    bytes: u64,
    dir: bool,
}

pub fn run(settings: &Settings, older_than: Option<&str>, dry_run: bool) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let text = older_than.unwrap_or(DEFAULT_AGE);
    let age = crate::config::parse_duration(text).map_err(|e| {
        Failure::user(
            format!("`--older-than {text}`: {e}"),
            Some("a duration such as `30d`, `12h` or `0` (everything eligible)"),
        )
    })?;
    let Some(mut store) = Store::open_existing(&config.paths.state_dir)? else {
        println!("nothing to clean: nothing has run in this study");
        return Ok(0);
    };
    let _lock = if dry_run {
        None
    } else {
        crate::engine::plan_lock(&config, true)?
    };
    let now = engine::now();
    let cutoff = now - age as i64;
    let snapshot = store.snapshot()?;
    let plan = plan::plan(&config, &snapshot, now, &Request::default());
    let mut items: Vec<Item> = Vec::new();

    // Work directories of done units.
    for unit in plan.units.iter().filter(|u| u.state == UnitState::Done) {
        let Some(success) = snapshot.success_run(&unit.key) else {
            continue;
        };
        if success.ended_at.is_none_or(|t| t >= cutoff) {
            continue;
        }
        let dir = crate::render::work_dir_for(&config, &unit.key);
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
                Err(e) => failed.push(format!("`{}`: {e}", display_path(&item.path))),
            }
        }
    } else {
        freed = items.iter().map(|i| i.bytes).sum();
    }

    if settings.json {
        output::print_json(&json!({
            "dry_run": dry_run,
            "older_than_s": age,
            "removed": items.iter().map(|i| json!({
                "what": i.what, "path": json_path(&i.path), "bytes": i.bytes,
            })).collect::<Vec<_>>(),
            "summarised_runs": summarised,
            "freed_bytes": freed,
            "errors": failed,
        }));
    } else if !settings.quiet {
        if !items.is_empty() {
            println!("{}:", if dry_run { "would remove" } else { "removed" });
        }
        for item in &items {
            println!("  {:>9}  {}", output::bytes(item.bytes), item.what);
            println!("             `{}`", display_path(&item.path));
        }
        let dirs = items.iter().filter(|i| i.dir).count();
        let files = items.len() - dirs;
        println!(
            "{}: {}, {}; {} {}",
            if dry_run { "dry run" } else { "cleaned" },
            output::count(dirs, "work dir", "work dirs"),
            output::count(files, "file", "files"),
            output::bytes(freed),
            if dry_run { "would be freed" } else { "freed" }
        );
        if summarised > 0 {
            println!(
                "{} older than {} {} into per-unit summaries (`nfslurm show UNIT` lists them)",
                output::count(summarised, "run", "runs"),
                output::duration(config.housekeeping.summarise_runs_after_s.unwrap_or(0) as i64),
                if dry_run { "would be folded" } else { "folded" }
            );
        }
        if items.is_empty() && summarised == 0 {
            println!(
                "hint: only what ended more than {text} ago is cleaned; `--older-than 0` takes everything eligible"
            );
        }
    }
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("error: cannot remove {f}");
        }
        return Err(Failure::user(
            format!(
                "{} could not be removed",
                output::count(failed.len(), "path", "paths")
            ),
            Some("check the permissions of those paths"),
        ));
    }
    Ok(0)
}
