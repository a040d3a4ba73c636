//! `sync` as a use case: what cron runs. Reconcile, discover, submit what is
//! due, then notify; and say what changed since the previous sync.

use std::collections::HashMap;

use crate::config::Config;
use crate::error::Failure;
use crate::model::UnitKey;
use crate::plan::Request;
use crate::state::{AuditRow, Store};
use crate::study::DiscoveryReport;

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
    pub discovery: DiscoveryReport,
    pub submitted: Submitted,
}

/// One sync, under the plan lock the caller took (a cron `sync` does not
/// wait for it: another holder is doing the same work). The lock is released
/// before notifying.
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
    Ok(SyncReport {
        changes,
        keys,
        discovery,
        submitted,
    })
}
