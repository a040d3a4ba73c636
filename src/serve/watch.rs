//! The server's view of the study: one thread polls SQLite's `data_version`
//! (a few microseconds) and, when anyone wrote (cron's `sync`, the local
//! worker, this server), rebuilds the documents the API serves and sends
//! each unit and run change to the WebSocket clients. Requests read the
//! cached documents and never wait for the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::AppState;
use crate::config::Config;
use crate::engine;
use crate::plan::{self, Request, Selection};
use crate::state::{Snapshot, Store};

/// How often the watcher looks for a write.
pub const POLL: Duration = Duration::from_millis(200);
/// How often the documents are rebuilt with no write (states that depend on
/// the time, a retry's backoff that passed, move on their own).
const REFRESH: Duration = Duration::from_secs(15);

/// The documents of the last look at the study.
#[derive(Debug, Default)]
pub struct Cache {
    /// `status --json`, serialized.
    pub status: axum::body::Bytes,
    /// Every run as in `status runs --json`, newest first.
    pub jobs: Vec<Arc<Value>>,
    /// Index into `jobs` by run ID.
    pub by_id: HashMap<i64, usize>,
}

impl Cache {
    pub fn job(&self, id: i64) -> Option<Arc<Value>> {
        self.by_id.get(&id).map(|&i| self.jobs[i].clone())
    }
}

/// One change, for the WebSocket clients.
#[derive(Debug)]
pub struct Event {
    /// The run it is about (a `run` event).
    pub run_id: Option<i64>,
    /// The message as sent, `{"type": "unit"|"run", "seq": n, …}`.
    pub text: Arc<str>,
    /// For a `run` event: the run's object.
    pub run: Option<Arc<Value>>,
}

/// What the watcher remembers between looks, to send only what changed.
#[derive(Default)]
struct Seen {
    units: HashMap<String, (String, Value)>,
    runs: HashMap<i64, Arc<Value>>,
    seq: u64,
}

/// Builds the documents from one read of the state.
fn build(
    config: &Config,
    snapshot: &Snapshot,
    runs: Vec<crate::state::RunRow>,
) -> (Cache, Vec<Value>) {
    let now = engine::now();
    let plan = plan::plan(config, snapshot, now, &Request::default());
    let status =
        crate::views::status_document_of(config, snapshot, &plan, &Selection::default(), &[]);
    let units = status["units"].as_array().cloned().unwrap_or_default();
    let mut jobs: Vec<Arc<Value>> = runs
        .iter()
        .map(|r| Arc::new(crate::views::run_json(r)))
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j["run_id"].as_i64().unwrap_or(0)));
    let by_id = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| j["run_id"].as_i64().map(|id| (id, i)))
        .collect();
    let cache = Cache {
        status: axum::body::Bytes::from(status.to_string()),
        jobs,
        by_id,
    };
    (cache, units)
}

fn unit_key(u: &Value) -> String {
    let pipeline = u["pipeline"].as_str().unwrap_or("");
    let subject = u["subject"].as_str().unwrap_or("");
    match u["session"].as_str() {
        Some(s) => format!("{pipeline}/sub-{subject}/ses-{s}"),
        None => format!("{pipeline}/sub-{subject}"),
    }
}

/// Compares with what was seen and returns the changes, in order: runs
/// first (a unit's change follows from its run's).
fn diff(seen: &mut Seen, cache: &Cache, units: Vec<Value>, announce: bool) -> Vec<Event> {
    let mut events = Vec::new();
    for job in cache.jobs.iter().rev() {
        let Some(id) = job["run_id"].as_i64() else {
            continue;
        };
        let old = seen.runs.get(&id);
        if old.is_some_and(|o| o == job) {
            continue;
        }
        let old_state = old.map(|o| o["state"].clone()).unwrap_or(Value::Null);
        seen.runs.insert(id, job.clone());
        if !announce {
            continue;
        }
        seen.seq += 1;
        let mut msg = (**job).clone();
        msg["type"] = json!("run");
        msg["seq"] = json!(seen.seq);
        msg["old_state"] = old_state;
        events.push(Event {
            run_id: Some(id),
            text: Arc::from(msg.to_string()),
            run: Some(job.clone()),
        });
    }
    for unit in units {
        let key = unit_key(&unit);
        let state = unit["state"].as_str().unwrap_or("").to_string();
        let old = seen.units.get(&key);
        if old.is_some_and(|(s, u)| *s == state && *u == unit) {
            continue;
        }
        let old_state = old.map(|(s, _)| json!(s)).unwrap_or(Value::Null);
        let state_changed = old.is_none_or(|(s, _)| *s != state);
        seen.units.insert(key.clone(), (state, unit.clone()));
        if !announce || !state_changed {
            continue;
        }
        seen.seq += 1;
        let mut msg = unit;
        msg["type"] = json!("unit");
        msg["unit"] = json!(key);
        msg["seq"] = json!(seen.seq);
        msg["old_state"] = old_state;
        events.push(Event {
            run_id: None,
            text: Arc::from(msg.to_string()),
            run: None,
        });
    }
    events
}

/// Reads the state once: its snapshot and every run.
fn read(store: &Store) -> anyhow::Result<(Snapshot, Vec<crate::state::RunRow>)> {
    Ok((store.snapshot()?, store.all_runs()?))
}

/// The first look, before the server answers: the documents, and what the
/// watcher starts from.
pub fn first_look(config: &Config) -> anyhow::Result<(Cache, WatchStart)> {
    let dir = &config.paths.state_dir;
    let store = if dir.join("state.db").exists() {
        Some(Store::open_read_only(dir)?)
    } else {
        None
    };
    let (snapshot, runs) = match &store {
        Some(s) => read(s)?,
        None => Default::default(),
    };
    let version = store.as_ref().map(|s| s.data_version()).transpose()?;
    let (cache, units) = build(config, &snapshot, runs);
    let mut seen = Seen::default();
    diff(&mut seen, &cache, units, false);
    Ok((
        cache,
        WatchStart {
            store,
            version,
            seen,
        },
    ))
}

/// Where the watcher starts from.
pub struct WatchStart {
    store: Option<Store>,
    version: Option<i64>,
    seen: Seen,
}

/// The watcher's loop, on a thread of its own until the process ends. A
/// database that is locked or gone for a while is waited out: the last
/// documents stay served, and the changes are sent once it can be read.
pub fn watch(state: Arc<AppState>, start: WatchStart) {
    let config = state.config.clone();
    let dir = config.paths.state_dir.clone();
    let WatchStart {
        mut store,
        mut version,
        mut seen,
    } = start;
    let mut refreshed = Instant::now();
    loop {
        std::thread::sleep(POLL);
        if store.is_none() && dir.join("state.db").exists() {
            match Store::open_read_only(&dir) {
                Ok(s) => store = Some(s),
                Err(e) => {
                    tracing::warn!("serve: cannot open the state yet: {e}");
                    continue;
                }
            }
        }
        let Some(s) = &store else { continue };
        let now_version = match s.data_version() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("serve: cannot read the state: {e}; trying again");
                store = None;
                continue;
            }
        };
        if version == Some(now_version) && refreshed.elapsed() < REFRESH {
            continue;
        }
        let (snapshot, runs) = match read(s) {
            Ok(r) => r,
            Err(e) => {
                // Locked for longer than the busy timeout: look again.
                tracing::warn!("serve: cannot read the state: {e:#}; trying again");
                continue;
            }
        };
        version = Some(now_version);
        refreshed = Instant::now();
        let (cache, units) = build(&config, &snapshot, runs);
        let events = diff(&mut seen, &cache, units, true);
        // The documents first: a client that refetches on an event sees it.
        *state.cache.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cache);
        for event in events {
            // No receiver is not an error: no one is listening.
            let _ = state.events.send(Arc::new(event));
        }
    }
}
