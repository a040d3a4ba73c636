//! `nfslurm sync --dry-run`: what the next `sync` would record and submit,
//! without changing anything.
//!
//! Rather than a second, "pretend" version of sync's logic, the real steps
//! run on a private copy of the state: the database is copied with SQLite's
//! `VACUUM INTO` over a read-only connection (a consistent snapshot, even
//! while a worker writes), discovery registers into the copy, Slurm runs are
//! reconciled into the copy (`squeue`/`sacct` only read), and the plan is
//! made from the copy. The study's own `state.db`, scripts, logs, locks and
//! the crontab are never written; the copy is removed at the end. Local runs
//! are not reconciled: the worker records them.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use super::{Failure, Settings};
use crate::engine;
use crate::executor::slurm::SlurmExecutor;
use crate::output;
use crate::plan::{self, Request};
use crate::state::{self, Store};

/// A private folder removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the study's state into a fresh private folder and opens the copy.
fn open_copy(dir: &Path) -> anyhow::Result<(Scratch, Store)> {
    if let Some(why) = state::health::problem(dir) {
        return Err(Failure::user(
            why,
            Some("`nfslurm doctor` says more; `--reset-state` sets a refused state aside"),
        ));
    }
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "nfslurm-dry-run-{}-{}",
        std::process::id(),
        engine::new_token()
    )));
    state::ensure_state_dir(&scratch.0)?;
    let db = dir.join("state.db");
    if db.exists() {
        let conn = Connection::open_with_flags(
            &db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot read `{}`", db.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let target = scratch.0.join("state.db");
        conn.execute("VACUUM INTO ?1", [target.to_string_lossy().as_ref()])
            .with_context(|| format!("cannot copy `{}` for the dry run", db.display()))?;
    }
    let store = Store::open(&scratch.0)?;
    Ok((scratch, store))
}

pub fn run(settings: &Settings) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let (_scratch, mut store) = open_copy(&config.paths.state_dir)?;
    let cursor = store.last_audit_id()?;
    let now = engine::now();
    let mut reconcile_note = None;
    if store
        .open_runs()?
        .iter()
        .any(|r| r.executor == crate::config::ExecutorKind::Slurm)
    {
        let mut exec = SlurmExecutor::new(&config);
        if let Err(e) = engine::reconcile(&config, &mut store, &mut exec, now) {
            // As `sync`: with the controller unreachable, nothing would be submitted.
            reconcile_note = Some(format!("{e}"));
        }
    }
    let (report, _) = crate::engine::discover_and_register(&config, &mut store, now)?;
    let snapshot = store.snapshot()?;
    let plan = match reconcile_note {
        None => plan::plan(&config, &snapshot, now, &Request::default()),
        Some(_) => plan::Plan::default(),
    };
    let audit = store.audit_since(cursor)?;
    let mut named: Vec<i64> = audit.iter().filter_map(|(_, a)| a.unit_id).collect();
    named.sort_unstable();
    named.dedup();
    let keys = store.unit_keys_of(&named)?;
    if settings.json {
        let changes: Vec<_> = audit
            .iter()
            .map(|(_, a)| {
                json!({"unit": a.unit_id.and_then(|u| keys.get(&u)).map(|k| k.to_string()),
                       "scan_id": a.scan_id, "run_id": a.run_id, "old_state": a.old_state,
                       "new_state": a.new_state, "reason": a.reason})
            })
            .collect();
        let actions: Vec<_> = plan
            .actions
            .iter()
            .map(|a| {
                json!({"pipeline": a.key.pipeline, "subject": a.key.subject,
                       "session": a.key.session, "reason": a.reason.as_str()})
            })
            .collect();
        output::print_json(&json!({
            "dry_run": true, "changes": changes, "would_submit": actions,
            "unmapped": report.unmapped.len(), "unreachable": reconcile_note,
        }));
        return Ok(0);
    }
    println!("dry run: nothing is written (state, scripts, logs and queue untouched)");
    if audit.is_empty() {
        println!("no state would change");
    } else {
        println!("would record:");
        for (_, a) in &audit {
            match (a.unit_id.and_then(|u| keys.get(&u)), &a.scan_id) {
                (Some(key), _) => println!("  {}", super::submit::describe_change(key, a)),
                (None, Some(scan)) => {
                    println!("  session `{scan}`: {} ({})", a.new_state, a.reason)
                }
                _ => {}
            }
        }
    }
    if let Some(note) = &reconcile_note {
        println!("would submit nothing: the cluster could not be reached ({note})");
    } else if plan.actions.is_empty() {
        println!("would submit nothing");
    } else {
        println!("would submit:");
        let mut table = output::table(&["unit", "reason"]);
        for a in &plan.actions {
            table.add_row(vec![a.key.to_string(), a.reason.to_string()]);
        }
        output::print_table(&table);
        println!(
            "{} (within `max_concurrent` and `max_submitted`; a real sync defers the rest)",
            output::count(plan.actions.len(), "unit", "units")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (scratch, store) = open_copy(dir.path()).unwrap();
        let path = scratch.0.clone();
        assert!(path.join("state.db").exists());
        drop(store);
        drop(scratch);
        assert!(!path.exists());
        // The study's own folder got no database.
        assert!(!dir.path().join("state.db").exists());
    }
}
