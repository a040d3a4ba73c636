//! `submit --wait` as a use case: follow runs until they have all ended,
//! submitting the retries that come due (and waiting for those due within
//! 15 minutes) on the way. What a person sees while waiting is the
//! caller's: it is told through a [`Observer`].

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::config::{Config, ExecutorKind};
use crate::model::{UnitKey, UnitState};
use crate::plan::{self, Request, UnitPlan};
use crate::state::{RunRow, Store};

use super::Submitted;

/// A retry due within this long is waited for.
pub const MAX_RETRY_WAIT_S: i64 = 15 * 60;

/// What the waiting caller is told.
pub trait Observer {
    /// The followed runs, after each look at them.
    fn runs(&mut self, runs: &[RunRow]);
    /// Every followed run ended; the next retry is due at `at`.
    fn retry_at(&mut self, at: i64);
    /// About every 100 ms while nothing else happens (a spinner's tick).
    fn tick(&mut self);
    /// What a submission made while following did not do as planned. An
    /// error in it ends the wait with that error.
    fn submitted(&mut self, submitted: &Submitted);
}

/// How the followed units ended.
#[derive(Debug)]
pub struct WaitReport {
    /// The followed units as the last plan sees them, in plan order.
    pub units: Vec<UnitPlan>,
}

impl WaitReport {
    pub fn all_done(&self) -> bool {
        self.units.iter().all(|u| u.state == UnitState::Done)
    }
}

/// Follows the runs `ids` (and the retries and held units of `request`'s
/// selection that come due) until every one has ended.
pub fn wait(
    config: &Config,
    store: &mut Store,
    request: &Request,
    mut ids: Vec<i64>,
    observer: &mut dyn Observer,
) -> anyhow::Result<WaitReport> {
    if ids.is_empty() {
        return Ok(WaitReport { units: Vec::new() });
    }
    // A forced request is consumed by the submission that carried it: from
    // here on only retries of what is followed are submitted, or a `--force
    // --wait` would submit the forced units again each time their runs end.
    let request = &Request {
        selection: request.selection.clone(),
        force: false,
    };
    // Slurm: from the site's poll_interval, growing by half while nothing
    // changes, up to 8 times it (squeue and sacct are RPCs on a shared
    // controller). Local: the state is a file here, look often.
    let local = config.executor == ExecutorKind::Local;
    let base = if local {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(config.site.scheduler.poll_interval_s.max(1))
    };
    let cap = if local { base * 2 } else { base * 8 };
    let mut interval = base;
    let mut last_done = 0;
    let mut polls = 0u32;
    let mut runs: Vec<RunRow> = Vec::new();
    loop {
        polls += 1;
        {
            let _lock = super::lock::acquire(config)?;
            super::reconcile_all(config, store)?;
        }
        refresh_followed(store, &ids, &mut runs)?;
        observer.runs(&runs);
        let done = runs.iter().filter(|r| !r.state.in_flight()).count();
        let mut wait_until: Option<Instant> = None;
        if done == runs.len() {
            let now = super::now();
            let followed: HashSet<&UnitKey> = runs.iter().map(|r| &r.key).collect();
            let plan = plan::plan(config, &store.snapshot()?, now, request);
            // Retries (and their chains) of what is followed, and units of
            // the selection held until an upstream on another cluster was
            // done, are due: submit them and go on.
            if plan
                .actions
                .iter()
                .any(|a| followed.contains(&a.key) || request.selection.matches(&a.key))
            {
                let submitted = {
                    let _lock = super::lock::acquire(config)?;
                    super::submit_request(config, store, request)?
                };
                observer.submitted(&submitted);
                if let Some(err) = submitted
                    .failure("the runs already submitted go on; `nfslurm sync` picks up the rest")
                {
                    return Err(err);
                }
                if !submitted.rows.is_empty() {
                    ids.extend(submitted.rows.iter().map(|r| r.run_id));
                    continue;
                }
            }
            let next_retry = plan
                .units
                .iter()
                .filter(|u| followed.contains(&u.key) && u.state == UnitState::Retrying)
                .filter_map(|u| u.next_attempt_at)
                .filter(|&t| t - now <= MAX_RETRY_WAIT_S)
                .min();
            match next_retry {
                Some(t) => {
                    observer.retry_at(t);
                    wait_until =
                        Some(Instant::now() + Duration::from_secs((t - now).max(1) as u64));
                }
                None => {
                    tracing::info!("wait: {} runs followed in {polls} polls", ids.len());
                    let units = plan
                        .units
                        .into_iter()
                        .filter(|u| followed.contains(&u.key))
                        .collect();
                    return Ok(WaitReport { units });
                }
            }
        }
        // Poll less often while nothing changes, never slower than 8 poll intervals.
        interval = if done == last_done {
            (interval * 3 / 2).min(cap)
        } else {
            base
        };
        last_done = done;
        let until = wait_until.unwrap_or_else(|| Instant::now() + interval);
        while Instant::now() < until {
            observer.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Brings `runs` (the followed runs, by ID) up to date with the store: reads
/// the runs of `ids` not yet in it and those still in flight. A run that
/// ended keeps its state, so a long wait does not read the whole followed
/// set at every poll.
fn refresh_followed(store: &Store, ids: &[i64], runs: &mut Vec<RunRow>) -> anyhow::Result<()> {
    let known: HashSet<i64> = runs.iter().map(|r| r.id).collect();
    let mut read: Vec<i64> = runs
        .iter()
        .filter(|r| r.state.in_flight())
        .map(|r| r.id)
        .collect();
    read.extend(ids.iter().filter(|id| !known.contains(id)));
    let fresh = store.runs_by_ids(&read)?;
    runs.retain(|r| !r.state.in_flight());
    runs.extend(fresh);
    runs.sort_unstable_by_key(|r| r.id);
    Ok(())
}
