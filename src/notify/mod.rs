//! Notifications: `sync` tells people when a unit reaches `failed`, when a
//! pipeline has nothing left to run, and when the cluster stops answering.
//!
//! Events are *level-triggered*: after each sync, [`after_sync`] looks at the
//! state as it is (not at what this sync happened to change), compares it with
//! what was already reported (kept in the `meta` table), and reports only the
//! difference. So a sync killed at any moment loses nothing: the next one sees
//! the same failed unit, not yet reported, and reports it. Each event is
//! recorded as reported *before* it is sent: a message may be lost (a kill
//! between the two, a webhook that is down) but is never sent twice. A
//! delivery that fails is a warning in the log and never fails the sync.
//!
//! - `events`: what is new, from a plan and what was reported (pure);
//! - `send`: the webhook POST and the shell command, with a 5 s bound.

mod events;
mod send;

use crate::config::Config;
use crate::engine;
use crate::plan::{self, Request};
use crate::state::{self, Store};

pub use events::{Message, Reported, SyncHealth, new_events, new_events_with};
pub use send::{DELIVERY_TIMEOUT, deliver, redact_url};

/// `meta` key: the Unix time the last sync ended.
pub const META_LAST_SYNC: &str = "sync.last_at";
/// `meta` key: how many syncs in a row could not reach the cluster.
pub const META_UNREACHABLE_COUNT: &str = "sync.unreachable_count";
/// `meta` key: why the last sync could not reach it.
pub const META_UNREACHABLE_ERROR: &str = "sync.unreachable_error";
/// Prefix of the `meta` keys that remember what was reported.
const META_NOTIFY_PREFIX: &str = "notify.";

/// Called by `sync` once its work is done: records the sync's time and the
/// cluster's health, and sends what is new. Never fails: problems are logged.
pub fn after_sync(config: &Config, store: &Store, unreachable: Option<&str>) {
    if let Err(err) = after_sync_inner(config, store, unreachable, engine::now()) {
        tracing::warn!("notifications skipped: {err:#}");
    }
}

fn after_sync_inner(
    config: &Config,
    store: &Store,
    unreachable: Option<&str>,
    now: i64,
) -> anyhow::Result<()> {
    // One bookkeeper at a time: two syncs back to back must not both send.
    let Some(_lock) = state::try_lock(&config.paths.state_dir, "notify.lock")? else {
        tracing::info!("another sync is sending notifications");
        return Ok(());
    };
    let previous: u32 = store
        .meta(META_UNREACHABLE_COUNT)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let health = SyncHealth {
        unreachable_count: if unreachable.is_some() {
            previous + 1
        } else {
            0
        },
        error: unreachable.map(str::to_string),
    };
    let mut writes: Vec<(String, Option<String>)> = vec![
        (META_LAST_SYNC.into(), Some(now.to_string())),
        (
            META_UNREACHABLE_COUNT.into(),
            Some(health.unreachable_count.to_string()),
        ),
        (META_UNREACHABLE_ERROR.into(), health.error.clone()),
    ];
    let mut messages = Vec::new();
    if config.notifications.enabled() {
        let reported = read_reported(store)?;
        let snapshot = store.snapshot()?;
        let plan = plan::plan(config, &snapshot, now, &Request::default());
        let tail = |u: &crate::plan::UnitPlan| {
            let run = snapshot.runs.get(&u.last_run_id?)?;
            run.state
                .is_failure()
                .then(|| crate::output::log_tail(&run.log_path, crate::output::LOG_TAIL_LINES))
                .flatten()
        };
        let (new, marks) = new_events_with(config, &plan, &health, &reported, &tail);
        messages = new;
        writes.extend(
            marks
                .into_iter()
                .map(|(k, v)| (format!("{META_NOTIFY_PREFIX}{k}"), v)),
        );
    }
    store.write_meta(&writes)?;
    for message in &messages {
        deliver(&config.notifications, config, message);
    }
    Ok(())
}

/// What was reported so far: the `notify.*` keys of `meta`, prefix removed.
fn read_reported(store: &Store) -> anyhow::Result<Reported> {
    Ok(Reported(store.meta_with_prefix(META_NOTIFY_PREFIX)?))
}

/// The last sync's time and the cluster's health, as `status` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastSync {
    pub at: Option<i64>,
    pub unreachable_count: u32,
    pub unreachable_error: Option<String>,
}

pub fn last_sync(store: &Store) -> LastSync {
    let get = |k: &str| store.meta(k).ok().flatten();
    LastSync {
        at: get(META_LAST_SYNC).and_then(|v| v.parse().ok()),
        unreachable_count: get(META_UNREACHABLE_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        unreachable_error: get(META_UNREACHABLE_ERROR),
    }
}
