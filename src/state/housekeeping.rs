//! Runs summarised instead of kept row by row (`nfslurm clean`).
//!
//! What the planner and the worker read is never summarised: the last run
//! and the last successful run of every unit, every run still in flight,
//! and every run one of those names in its `inputs` or `depends_on` (the
//! upstream output a success consumed, the job a pending run waits for).
//! Everything else that ended before the cut-off is folded into
//! `run_summaries` (per unit and end state: count, first and last time,
//! elapsed seconds, peak memory) and deleted, in one transaction. The audit
//! table keeps every state change.

use std::collections::HashSet;

use rusqlite::params;

use super::{Result, Store};

/// Runs of one unit that ended in one state, folded into one row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub state: String,
    pub runs: i64,
    pub first_created_at: i64,
    pub last_ended_at: Option<i64>,
    pub elapsed_s: i64,
    pub max_rss_mb: Option<i64>,
}

/// What [`Store::summarise_runs`] did (or would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summarised {
    /// Run IDs folded into summaries.
    pub run_ids: Vec<i64>,
    /// Their scripts and logs, for `clean` to remove.
    pub files: Vec<std::path::PathBuf>,
}

impl Store {
    /// The run IDs that must stay rows: see the module docs.
    fn protected_runs(&self) -> Result<HashSet<i64>> {
        let mut keep: HashSet<i64> = HashSet::new();
        let mut stmt = self.conn.prepare(
            "SELECT last_run_id FROM units WHERE last_run_id IS NOT NULL \
             UNION SELECT success_run_id FROM units WHERE success_run_id IS NOT NULL \
             UNION SELECT id FROM runs WHERE state IN ('submitting', 'pending', 'running')",
        )?;
        for id in stmt.query_map([], |r| r.get::<_, i64>(0))? {
            keep.insert(id?);
        }
        // What the kept runs reference.
        let ids: Vec<i64> = keep.iter().copied().collect();
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut stmt = self.conn.prepare(&format!(
                "SELECT inputs, depends_on FROM runs WHERE id IN ({marks})"
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(chunk), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (inputs, deps) = row?;
                for text in [inputs, deps] {
                    let refs: Vec<i64> = serde_json::from_str(&text).unwrap_or_default();
                    keep.extend(refs);
                }
            }
        }
        Ok(keep)
    }

    /// Folds runs that ended before `before` (and are not protected) into
    /// `run_summaries` and deletes their rows; with `dry_run`, only says
    /// which. Returns the runs and their files.
    pub fn summarise_runs(&mut self, before: i64, dry_run: bool) -> Result<Summarised> {
        let keep = self.protected_runs()?;
        let mut out = Summarised::default();
        {
            let mut stmt = self.conn.prepare(
                "SELECT id, script_path, log_path FROM runs \
                 WHERE state NOT IN ('submitting', 'pending', 'running') \
                 AND COALESCE(ended_at, created_at) < ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([before], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (id, script, log) = row?;
                if keep.contains(&id) {
                    continue;
                }
                out.run_ids.push(id);
                out.files.push(script.into());
                out.files.push(log.into());
            }
        }
        if dry_run || out.run_ids.is_empty() {
            return Ok(out);
        }
        let tx = self.write_tx()?;
        {
            let mut fold = tx.prepare(
                "INSERT INTO run_summaries \
                 (unit_id, state, runs, first_created_at, last_ended_at, elapsed_s, max_rss_mb) \
                 SELECT unit_id, state, 1, created_at, ended_at, COALESCE(elapsed_s, 0), max_rss_mb \
                 FROM runs WHERE id = ?1 \
                 ON CONFLICT (unit_id, state) DO UPDATE SET \
                 runs = runs + 1, \
                 first_created_at = MIN(first_created_at, excluded.first_created_at), \
                 last_ended_at = MAX(COALESCE(last_ended_at, 0), COALESCE(excluded.last_ended_at, 0)), \
                 elapsed_s = elapsed_s + excluded.elapsed_s, \
                 max_rss_mb = MAX(COALESCE(max_rss_mb, 0), COALESCE(excluded.max_rss_mb, 0))",
            )?;
            // A summarised run's provenance goes with it (the files beside
            // its script are `clean`'s to remove with the attempt).
            let mut forget = tx.prepare("DELETE FROM run_provenance WHERE run_id = ?1")?;
            let mut delete = tx.prepare("DELETE FROM runs WHERE id = ?1")?;
            for id in &out.run_ids {
                fold.execute(params![id])?;
                forget.execute(params![id])?;
                delete.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The summaries of one unit's older runs, by state.
    pub fn run_summaries(&self, unit_id: i64) -> Result<Vec<RunSummary>> {
        let mut stmt = self.conn.prepare(
            "SELECT state, runs, first_created_at, last_ended_at, elapsed_s, max_rss_mb \
             FROM run_summaries WHERE unit_id = ?1 ORDER BY state",
        )?;
        let rows = stmt.query_map([unit_id], |r| {
            Ok(RunSummary {
                state: r.get(0)?,
                runs: r.get(1)?,
                first_created_at: r.get(2)?,
                last_ended_at: r.get(3)?,
                elapsed_s: r.get(4)?,
                max_rss_mb: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Label, RunState, UnitKey};
    use crate::state::{NewRun, RunUpdate, Store, UnitUpdate};

    fn key(p: &str) -> UnitKey {
        UnitKey::new(p, &Label::new("01").unwrap(), None)
    }

    fn new_run(key: &UnitKey, token: &str, inputs: Vec<i64>) -> NewRun {
        NewRun {
            inputs,
            script_path: format!("/s/{token}").into(),
            log_path: format!("/l/{token}").into(),
            ..NewRun::example(key, token)
        }
    }

    /// One run of `key` that ends `state` at `at`.
    fn ended(store: &mut Store, key: &UnitKey, token: &str, state: RunState, at: i64) -> i64 {
        ended_with(store, key, token, state, at, vec![])
    }

    fn ended_with(
        store: &mut Store,
        key: &UnitKey,
        token: &str,
        state: RunState,
        at: i64,
        inputs: Vec<i64>,
    ) -> i64 {
        let id = store
            .create_runs(&[new_run(key, token, inputs)], at)
            .unwrap()[0];
        // As the policy records a success (`policy::on_run_end`).
        let unit_id = store.unit_id(key).unwrap().unwrap();
        let units: Vec<UnitUpdate> = (state == RunState::Succeeded)
            .then(|| UnitUpdate {
                unit_id,
                run_id: Some(id),
                success_run_id: Some(id),
                ..Default::default()
            })
            .into_iter()
            .collect();
        store
            .apply(
                &[RunUpdate {
                    run_id: id,
                    state: Some(state),
                    ended_at: Some(at),
                    elapsed_s: Some(10),
                    max_rss_mb: Some(at),
                    ..Default::default()
                }],
                &units,
                at,
            )
            .unwrap();
        id
    }

    #[test]
    fn old_runs_are_summarised_but_never_what_the_planner_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let bids = key("bids");
        let prep = key("qsiprep");
        let r1 = ended(&mut store, &bids, "t1", RunState::Failed, 100);
        let r2 = ended(&mut store, &bids, "t2", RunState::Succeeded, 200);
        // qsiprep consumed r2; bids then reran (succeeded) and failed.
        let q1 = ended_with(&mut store, &prep, "q1", RunState::Succeeded, 250, vec![r2]);
        let r3 = ended(&mut store, &bids, "t3", RunState::Succeeded, 300);
        let r4 = ended(&mut store, &bids, "t4", RunState::Failed, 400);
        let r5 = ended(&mut store, &bids, "t5", RunState::Oom, 5000);
        let before = store.snapshot().unwrap();

        let dry = store.summarise_runs(1000, true).unwrap();
        assert_eq!(dry.run_ids, vec![r1, r4]);
        assert_eq!(
            store.all_runs().unwrap().len(),
            6,
            "a dry run deletes nothing"
        );

        let done = store.summarise_runs(1000, false).unwrap();
        assert_eq!(done, dry);
        let left: Vec<i64> = store.all_runs().unwrap().iter().map(|r| r.id).collect();
        // r2: q1's input; r3: the last success; r5: the last run (and new).
        assert_eq!(left, vec![r2, q1, r3, r5]);
        let after = store.snapshot().unwrap();
        assert_eq!(after.units, before.units);
        assert_eq!(after.runs, before.runs, "the planner's view is the same");
        let unit = store.unit_id(&bids).unwrap().unwrap();
        let sums = store.run_summaries(unit).unwrap();
        assert_eq!(sums.len(), 1);
        assert_eq!(sums[0].state, "failed");
        assert_eq!(sums[0].runs, 2);
        assert_eq!(sums[0].first_created_at, 100);
        assert_eq!(sums[0].last_ended_at, Some(400));
        assert_eq!(sums[0].elapsed_s, 20);
        assert_eq!(sums[0].max_rss_mb, Some(400));
        // Attempt numbers go on from the last run.
        let next = store.next_attempts(&[&bids]).unwrap();
        assert_eq!(next[&bids], 6);
        // Again: nothing more to fold.
        assert!(
            store
                .summarise_runs(1000, false)
                .unwrap()
                .run_ids
                .is_empty()
        );
    }
}
