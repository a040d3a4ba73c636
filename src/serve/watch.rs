//! The server's view of the study: one thread polls SQLite's `data_version`
//! (a few microseconds) and, when anyone wrote (cron's `sync`, the local
//! worker, this server), rebuilds the documents the API serves and sends
//! each unit and run change to the WebSocket clients. Requests read the
//! cached documents and never wait for the database.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::AppState;
use crate::config::Config;
use crate::engine;
use crate::model::{RunState, UnitKey, UnitState};
use crate::plan::{self, Request, Selection};
use crate::state::{RunRow, Snapshot, Store};

/// How often the watcher looks for a write.
pub const POLL: Duration = Duration::from_millis(200);
/// How long the watcher waits for a writer to stop before it reads anyway.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the documents are rebuilt with no write (states that depend on
/// the time, a retry's backoff that passed, move on their own).
const REFRESH: Duration = Duration::from_secs(15);

/// The documents of the last look at the study.
#[derive(Debug, Default)]
pub struct Cache {
    /// `status --json`, serialized.
    pub status: axum::body::Bytes,
    /// Every run as in `status runs --json`, newest first (by ID:
    /// [`find_job`]).
    pub jobs: Vec<Arc<Job>>,
}

impl Cache {
    pub fn job(&self, id: i64) -> Option<Arc<Value>> {
        find_job(&self.jobs, id).map(|j| Arc::new(j.value()))
    }
}

/// The run `id` in `jobs`, newest first: a binary search, where an index
/// by ID would be one more MB-sized table in every rebuild's peak.
fn find_job(jobs: &[Arc<Job>], id: i64) -> Option<&Arc<Job>> {
    jobs.binary_search_by(|j| id.cmp(&j.run_id))
        .ok()
        .map(|i| &jobs[i])
}

/// One run as the API serves it: its object serialized (a study's tens of
/// thousands of runs as `Value`s would take over 100 MB), and the fields
/// the job list filters on, in as few allocations as they fit.
#[derive(Debug)]
pub struct Job {
    pub run_id: i64,
    pub state: RunState,
    /// Shared by the runs of a pipeline.
    pub pipeline: Arc<str>,
    /// `subject` or `subject/session` (labels have no `/`): one allocation
    /// for the two.
    labels: Box<str>,
    /// `status runs --json`'s object for the run, serialized by
    /// [`compact`].
    json: Box<str>,
}

impl Job {
    /// The run with its object serialized (`json`); `pipelines` holds the
    /// pipeline names that runs share.
    fn new(run: &RunRow, json: String, pipelines: &mut Vec<Arc<str>>) -> Job {
        let labels = match &run.key.session {
            Some(session) => format!("{}/{session}", run.key.subject),
            None => run.key.subject.to_string(),
        };
        Job {
            run_id: run.id,
            state: run.state,
            pipeline: shared(pipelines, &run.key.pipeline),
            labels: labels.into_boxed_str(),
            json: json.into_boxed_str(),
        }
    }

    pub fn subject(&self) -> &str {
        self.labels
            .split_once('/')
            .map_or(&*self.labels, |(subject, _)| subject)
    }

    pub fn session(&self) -> Option<&str> {
        self.labels.split_once('/').map(|(_, session)| session)
    }

    /// The run's object.
    pub fn value(&self) -> Value {
        expand(&self.json)
    }
}

/// The keys of a run's object, in order: every run's object has the same
/// ([`crate::views::run_json`] makes them all), and they are 40% of its
/// text (8 MB of a 35,000-run study), so they are kept once.
static RUN_KEYS: OnceLock<Vec<String>> = OnceLock::new();

/// A run's object serialized without its keys, `[value, …]`, when they are
/// [`RUN_KEYS`] (taken from the first run); else the whole object.
fn compact(value: &Value) -> String {
    let Value::Object(map) = value else {
        return value.to_string();
    };
    let keys = RUN_KEYS.get_or_init(|| map.keys().cloned().collect());
    if !map.keys().eq(keys.iter()) {
        return value.to_string();
    }
    serde_json::to_string(&map.values().collect::<Vec<_>>()).unwrap_or_default()
}

/// The object that [`compact`] serialized.
fn expand(text: &str) -> Value {
    match (text.starts_with('['), RUN_KEYS.get()) {
        (true, Some(keys)) => {
            let values: Vec<Value> = serde_json::from_str(text).unwrap_or_default();
            Value::Object(keys.iter().cloned().zip(values).collect())
        }
        _ => serde_json::from_str(text).unwrap_or(Value::Null),
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

/// `name` from `names`, added if it is not there yet (a study has a few
/// pipelines and tens of thousands of runs).
fn shared(names: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(n) = names.iter().find(|n| ***n == *name) {
        return n.clone();
    }
    let n: Arc<str> = Arc::from(name);
    names.push(n.clone());
    n
}

/// What the watcher remembers between looks, to send only what changed:
/// each run as cached (shared with the cache), each unit's state.
#[derive(Default)]
struct Seen {
    /// By the hash of the unit's key ([`key_hash`]): tens of thousands of
    /// keys as strings would be several MB more in every rebuild's peak.
    units: HashMap<u64, UnitState>,
    /// The cache's runs, newest first.
    runs: Vec<Arc<Job>>,
    seq: u64,
    /// The status document's size, to allocate the next one at once.
    status_len: usize,
}

/// Builds the documents from one read of the state, and the changes since
/// `seen`, in order: runs first (a unit's change follows from its run's).
fn build(
    config: &Config,
    snapshot: Snapshot,
    mut jobs: Vec<Arc<Job>>,
    seen: &mut Seen,
    announce: bool,
) -> (Cache, Vec<Event>) {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.run_id));
    let mut events = diff_runs(seen, &mut jobs, announce);
    seen.runs = jobs.clone();
    let status = status_document(config, snapshot, seen, announce, &mut events);
    (Cache { status, jobs }, events)
}

/// `status --json`'s document (keys in order), serialized, with the units
/// that changed since `seen` added to `events`.
///
/// The document is written one unit at a time rather than built whole (tens
/// of thousands of units as `Value`s are tens of MB), and the snapshot, the
/// largest thing a rebuild reads, is dropped as soon as the plan and the
/// alerts are made from it: it and the new document are never in memory
/// together, on top of the documents still served.
fn status_document(
    config: &Config,
    snapshot: Snapshot,
    seen: &mut Seen,
    announce: bool,
    events: &mut Vec<Event>,
) -> axum::body::Bytes {
    let plan = plan::plan(config, &snapshot, engine::now(), &Request::default());
    let (units, counts, alerts) =
        crate::views::status_parts(config, &snapshot, &plan, &Selection::default(), &[]);
    drop(snapshot);
    let mut out = Vec::with_capacity(seen.status_len + 4096);
    out.extend_from_slice(b"{\"alerts\":");
    let _ = serde_json::to_writer(&mut out, &alerts);
    out.extend_from_slice(b",\"counts\":");
    let _ = serde_json::to_writer(&mut out, &counts);
    out.extend_from_slice(b",\"units\":[");
    for (i, u) in units.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let unit = crate::views::status_unit_json(u);
        let _ = serde_json::to_writer(&mut out, &unit);
        if let Some(event) = diff_unit(seen, &u.key, u.state, unit, announce) {
            events.push(event);
        }
    }
    out.extend_from_slice(b"]}");
    seen.status_len = out.len();
    // Kept as long as it is served: without the room it grew into (up to
    // twice its size on the first look, which has no size to start from).
    out.shrink_to_fit();
    axum::body::Bytes::from(out)
}

/// The key of a unit in [`Seen::units`]. Two of a study's units would
/// share one with a chance of about n² / 2⁶⁵ (3·10⁻¹¹ for 35,000 units);
/// they would then see each other's changes as their own.
fn key_hash(key: &UnitKey) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// The runs that changed since `seen`, oldest first. An unchanged run's
/// entry in `jobs` is replaced by the one already seen, so that the two
/// share it.
fn diff_runs(seen: &mut Seen, jobs: &mut [Arc<Job>], announce: bool) -> Vec<Event> {
    let mut events = Vec::new();
    for job in jobs.iter_mut().rev() {
        let id = job.run_id;
        let old = find_job(&seen.runs, id);
        if let Some(old) = old
            && (Arc::ptr_eq(old, job) || old.json == job.json)
        {
            *job = old.clone();
            continue;
        }
        if !announce {
            continue;
        }
        let old_state = old.map(|o| json!(o.state.as_str())).unwrap_or(Value::Null);
        seen.seq += 1;
        let run = Arc::new(job.value());
        let mut msg = (*run).clone();
        msg["type"] = json!("run");
        msg["seq"] = json!(seen.seq);
        msg["old_state"] = old_state;
        events.push(Event {
            run_id: Some(id),
            text: Arc::from(msg.to_string()),
            run: Some(run),
        });
    }
    events
}

/// The unit's event if its state changed since `seen` (`unit`: its object).
fn diff_unit(
    seen: &mut Seen,
    key: &UnitKey,
    state: UnitState,
    mut unit: Value,
    announce: bool,
) -> Option<Event> {
    let old = seen.units.insert(key_hash(key), state);
    if !announce || old == Some(state) {
        return None;
    }
    let old_state = old.map(|s| json!(s.as_str())).unwrap_or(Value::Null);
    seen.seq += 1;
    unit["type"] = json!("unit");
    unit["unit"] = json!(key.to_string());
    unit["seq"] = json!(seen.seq);
    unit["old_state"] = old_state;
    Some(Event {
        run_id: None,
        text: Arc::from(unit.to_string()),
        run: None,
    })
}

/// Reads the state once: every run, then the snapshot. Each run is made
/// into what is served as it is read, so that the rows of a large study
/// (~38 MB for 35,000 runs) are never in memory at once; a run unchanged
/// since `seen` is the one seen.
fn read(store: &Store, seen: &Seen) -> anyhow::Result<(Snapshot, Vec<Arc<Job>>)> {
    let mut jobs = Vec::with_capacity(seen.runs.len());
    let mut pipelines = Vec::new();
    store.each_run(|run| {
        let json = compact(&crate::views::run_json(&run));
        jobs.push(match find_job(&seen.runs, run.id) {
            Some(old) if *old.json == *json => old.clone(),
            _ => Arc::new(Job::new(&run, json, &mut pipelines)),
        });
    })?;
    Ok((store.snapshot()?, jobs))
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
    let mut seen = Seen::default();
    let (snapshot, jobs) = match &store {
        Some(s) => read(s, &seen)?,
        None => Default::default(),
    };
    let version = store.as_ref().map(|s| s.data_version()).transpose()?;
    let (cache, _) = build(config, snapshot, jobs, &mut seen, false);
    release_freed_memory();
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
        // A writer (a sync) commits several times in a row: wait until it
        // stops, up to SETTLE, so that the read does not hold up its next
        // commit, and one rebuild covers them all.
        let mut now_version = now_version;
        let settling = Instant::now();
        while settling.elapsed() < SETTLE {
            std::thread::sleep(POLL);
            match s.data_version() {
                Ok(v) if v != now_version => now_version = v,
                _ => break,
            }
        }
        let started = Instant::now();
        let (snapshot, jobs) = match read(s, &seen) {
            Ok(r) => r,
            Err(e) => {
                // Locked for longer than the busy timeout: look again.
                tracing::warn!("serve: cannot read the state: {e:#}; trying again");
                continue;
            }
        };
        version = Some(now_version);
        refreshed = Instant::now();
        let read_ms = started.elapsed().as_millis();
        let (cache, events) = build(&config, snapshot, jobs, &mut seen, true);
        tracing::debug!(
            "serve: documents rebuilt in {} ms (reading the state {read_ms} ms), {} changes",
            started.elapsed().as_millis(),
            events.len()
        );
        // The documents first: a client that refetches on an event sees it.
        let old = std::mem::replace(
            &mut *state.cache.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(cache),
        );
        drop(old);
        release_freed_memory();
        for event in events {
            // No receiver is not an error: no one is listening.
            let _ = state.events.send(Arc::new(event));
        }
    }
}

/// The size from which an allocation gets a mapping of its own.
const MMAP_THRESHOLD: usize = 1 << 20;

/// Gives each large block (a table or document of a rebuild, 1 MB and up) a
/// mapping of its own, returned to the system when it is freed. glibc
/// otherwise raises this threshold after the first such block is freed, up
/// to 32 MB, and the next rebuilds' blocks come from its heaps, between
/// small allocations that outlive them: a rebuild's peak RSS of the load
/// benchmark is 96 MB then, 90 MB with this. Call it before the first look.
pub fn map_large_blocks_apart() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Gives the memory a rebuild freed back to the system: glibc keeps what a
/// thread freed in that thread's arena, and the watcher's rebuilds of a
/// large study would otherwise keep the server's RSS at several times what
/// it holds.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_object_comes_back_as_it_went_in_whatever_its_keys() {
        let run = json!({"run_id": 7, "state": "failed", "reason": null, "exit_code": -1,
                         "log": "/a \"b\"/c.out", "elapsed_s": 1.5});
        let other = json!({"run_id": 8, "extra": [1, {"x": true}]});
        // Whichever is compacted first gives the shared keys; both come back.
        for value in [&run, &other, &run, &other] {
            let text = compact(value);
            assert_eq!(&expand(&text), value);
            assert_eq!(expand(&text).to_string(), value.to_string());
        }
        assert!(compact(&run).starts_with('[') || compact(&other).starts_with('['));
    }
}
