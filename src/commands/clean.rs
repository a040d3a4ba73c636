//! `nfslurm clean [--older-than 30d] [--dry-run]`: frees what a study no
//! longer needs (`engine::clean` says what), and says what it freed.
//!
//! It holds the plan lock (a `sync` cannot submit a unit whose work
//! directory is being removed); `--dry-run` takes no lock and writes nothing.

use serde_json::json;

use super::{Failure, Settings, display_path, json_path};
use crate::engine::{self, clean};
use crate::output;
use crate::state::Store;

/// The default of `--older-than`.
pub const DEFAULT_AGE: &str = "30d";

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
    let lock = if dry_run {
        None
    } else {
        Some(engine::lock::acquire(&config)?)
    };
    let mode = match &lock {
        Some(lock) => clean::Mode::Apply(lock),
        None => clean::Mode::DryRun,
    };
    let report = clean::clean(&config, &mut store, age, mode)?;
    drop(lock);
    let clean::CleanReport {
        items,
        summarised,
        freed,
        failed,
    } = report;
    let failed: Vec<String> = failed
        .iter()
        .map(|(path, e)| format!("`{}`: {e}", display_path(path)))
        .collect();

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
