//! `sync` as a use case: what cron runs. Reconcile, discover, submit what is
//! due, then notify; and say what changed since the previous sync.

use std::collections::HashMap;

use crate::config::Config;
use crate::error::Failure;
use crate::model::UnitKey;
use crate::plan::Request;
use crate::state::{AuditRow, Store, fingerprint};

use super::Submitted;

/// Where the previous sync stopped reporting changes (meta `sync.audit_cursor`).
const AUDIT_CURSOR: &str = "sync.audit_cursor";

/// What one sync did.
#[derive(Debug)]
pub struct SyncReport {
    /// State changes since the previous sync, whoever made them (the local
    /// worker, `submit`, `cancel`, this sync), in order.
    pub changes: Vec<AuditRow>,
    /// Unit keys of the units the changes name.
    pub keys: HashMap<i64, UnitKey>,
    /// Session folders the mapping sheet does not name (scan IDs).
    pub unmapped: Vec<String>,
    /// Problems of the mapping sheet.
    pub problems: Vec<String>,
    pub submitted: Submitted,
}

/// One sync, under the plan lock the caller took (a cron `sync` does not
/// wait for it: another holder is doing the same work). The lock is released
/// before notifying. When nothing changed since the last quiet sync, nothing
/// is reconciled, discovered or planned, and the report is empty.
pub fn sync(
    config: &Config,
    store: &mut Store,
    lock: crate::state::LockGuard,
) -> anyhow::Result<SyncReport> {
    // Changes since the previous sync, whoever made them, are reported once,
    // by the next sync.
    let cursor: i64 = match store.meta(AUDIT_CURSOR)? {
        Some(v) => v.parse().unwrap_or(0),
        None => store.last_audit_id()?,
    };
    let now = super::now();
    let check = fingerprint::check(config, store, now)?;
    if let Some(mark) = check.unchanged() {
        tracing::info!("nothing changed since the last sync: nothing to reconcile or plan");
        let (unmapped, problems) = (mark.unmapped.clone(), mark.problems.clone());
        let last_sync = (crate::notify::META_LAST_SYNC.into(), Some(now.to_string()));
        fingerprint::skipped(store, &check, &[last_sync])?;
        drop(lock);
        return Ok(SyncReport {
            changes: Vec::new(),
            keys: HashMap::new(),
            unmapped,
            problems,
            submitted: Submitted::default(),
        });
    }
    // Reconcile first: what Slurm did is recorded even when the mapping sheet
    // or a template is broken and the rest of the sync stops with an error.
    let unreachable = match super::reconcile_all(config, store) {
        Ok(_) => None,
        Err(e) if e.downcast_ref::<Failure>().is_some_and(|f| f.code == 2) => {
            Some(format!("{e:#}"))
        }
        Err(e) => return Err(e),
    };
    let (discovery, _) = super::discover_and_register(config, store, now)?;
    // With the controller unreachable nothing is submitted on a view of the
    // queue nfslurm could not refresh.
    let submitted = match unreachable {
        None => super::submit_request(config, store, &Request::default())?,
        Some(msg) => Submitted {
            unreachable: Some(msg),
            ..Default::default()
        },
    };
    drop(lock);

    let audit = store.audit_since(cursor)?;
    let last = audit.last().map(|(id, _)| *id);
    let changes: Vec<AuditRow> = audit.into_iter().map(|(_, a)| a).collect();
    // Keys of the units the audit names only (a no-op sync names none).
    let mut named: Vec<i64> = changes.iter().filter_map(|a| a.unit_id).collect();
    named.sort_unstable();
    named.dedup();
    let keys = store.unit_keys_of(&named)?;
    if let Some(last) = last {
        store.set_meta(AUDIT_CURSOR, &last.to_string())?;
    } else if store.meta(AUDIT_CURSOR)?.is_none() {
        store.set_meta(AUDIT_CURSOR, &cursor.to_string())?;
    }
    crate::notify::after_sync(config, store, submitted.unreachable.as_deref());
    let unmapped: Vec<String> = discovery
        .unmapped
        .iter()
        .map(|u| u.scan_id.clone())
        .collect();
    let problems: Vec<String> = discovery.problems.iter().map(ToString::to_string).collect();
    let end = fingerprint::SyncEnd {
        quiet: submitted.rows.is_empty()
            && submitted.deferred == 0
            && submitted.rejected.is_empty()
            && submitted.unreachable.is_none(),
        audit_seen: last.unwrap_or(cursor),
        unmapped: unmapped.clone(),
        problems: problems.clone(),
    };
    if let Err(e) = fingerprint::record(store, check, end) {
        tracing::warn!("the next sync plans in full: {e:#}");
    }
    Ok(SyncReport {
        changes,
        keys,
        unmapped,
        problems,
        submitted,
    })
}
