//! Slurm reconciliation as a pure function: what the open runs of one
//! cluster became, from one `squeue` listing and the `sacct` records asked
//! for them. No I/O: the executor makes the calls ([`sacct_requests`] says
//! which), this decides, and it is tested on captured real output.

use std::collections::HashMap;

use super::arrays;
use super::executor::{SUBMITTING_GRACE_S, update_from_sacct, update_from_squeue};
use super::parse::{SacctJob, SqueueRow};
use crate::model::RunState;
use crate::state::{RunRow, RunUpdate};

/// What `sacct` answered for the runs squeue did not settle.
#[derive(Debug, Default)]
pub struct Accounting {
    /// By job ID as nfslurm records it (`123`, `123_4`).
    pub jobs: HashMap<String, SacctJob>,
    /// By run token (`<comment>`, or `<comment>_<task>` for array tasks), for
    /// runs whose job ID was never recorded.
    pub token_jobs: HashMap<String, SacctJob>,
    /// False when sacct did not answer: finished runs stay open.
    pub ok: bool,
}

/// The tasks an array's remainder row stands for: sacct keeps the tasks
/// that never started (cancelled while pending, by `--kill-on-invalid-dep`
/// or `scancel`) as one row `123_[2,5-7]`, and `sacct --jobs=123_2` finds
/// nothing for them. Each task gets the row under its own ID `123_2`.
fn remainder_tasks(job: &SacctJob) -> Vec<(String, SacctJob)> {
    let Some((array, _)) = job.job_id.split_once("_[") else {
        return Vec::new();
    };
    let Some(indices) = super::arrays::summary_indices(&job.job_id, array) else {
        return Vec::new();
    };
    indices
        .into_iter()
        .map(|task| {
            let mut one = job.clone();
            one.job_id = format!("{array}_{task}");
            (task.to_string(), one)
        })
        .collect()
}

impl Accounting {
    pub fn add_jobs(&mut self, list: Vec<SacctJob>) {
        let mut remainders = Vec::new();
        for job in list {
            remainders.extend(remainder_tasks(&job));
            self.jobs.insert(job.job_id.clone(), job);
        }
        // A task's own row, when it has one, says more than the remainder
        // row (which can still name a task split out and run meanwhile).
        for (_, one) in remainders {
            self.jobs.entry(one.job_id.clone()).or_insert(one);
        }
    }

    pub fn add_token_jobs(&mut self, list: Vec<SacctJob>) {
        let mut remainders = Vec::new();
        for job in list {
            if job.comment.is_empty() {
                continue;
            }
            for (task, one) in remainder_tasks(&job) {
                remainders.push((format!("{}_{task}", job.comment), one));
            }
            // Array tasks carry the array's token: `<comment>_<task>`.
            let token = match job.job_id.split_once('_') {
                Some((_, task)) => format!("{}_{task}", job.comment),
                None => job.comment.clone(),
            };
            self.token_jobs.insert(token, job);
        }
        for (token, one) in remainders {
            self.token_jobs.entry(token).or_insert(one);
        }
    }
}

/// The sacct calls a reconciliation needs after `squeue`.
#[derive(Debug, Default, PartialEq)]
pub struct SacctRequests {
    /// `sacct -j` for these (runs squeue no longer lists).
    pub job_ids: Vec<String>,
    /// `sacct -S` from this time, for runs known only by their token.
    pub tokens_since: Option<i64>,
}

/// squeue's rows by job ID, with pending array summaries unfolded, and by
/// the run token they carry.
struct QueueIndex<'q> {
    by_id: HashMap<String, &'q SqueueRow>,
    by_token: HashMap<String, (String, &'q SqueueRow)>,
}

fn index(queue: &[SqueueRow]) -> QueueIndex<'_> {
    // Job IDs as nfslurm records them (`123`, `123_4`), including the tasks of
    // pending arrays that squeue folds into one `123_[1,4%2]` row; and the
    // run tokens they carry (`<comment>` or, for array tasks, `<comment>_<task>`).
    let mut by_id: HashMap<String, &SqueueRow> = HashMap::new();
    let mut by_token: HashMap<String, (String, &SqueueRow)> = HashMap::new();
    for row in queue {
        let ids: Vec<(String, Option<u32>)> = match row.job_id.split_once("_[") {
            Some((array, _)) => arrays::summary_indices(&row.job_id, array)
                .unwrap_or_default()
                .into_iter()
                .map(|t| (format!("{array}_{t}"), Some(t)))
                .collect(),
            None => {
                let task = row.job_id.split_once('_').and_then(|(_, t)| t.parse().ok());
                vec![(row.job_id.clone(), task)]
            }
        };
        for (id, task) in ids {
            if !row.comment.is_empty() {
                let token = match task {
                    Some(t) => format!("{}_{t}", row.comment),
                    None => row.comment.clone(),
                };
                by_token.insert(token, (id.clone(), row));
            }
            by_id.insert(id, row);
        }
    }
    QueueIndex { by_id, by_token }
}

/// What squeue settles, and what it leaves to sacct: runs it does not list
/// (by job ID) and runs known only by their token.
struct FromQueue<'r> {
    updates: Vec<RunUpdate>,
    ask_sacct: Vec<&'r RunRow>,
    unknown_tokens: Vec<&'r RunRow>,
}

fn from_queue<'r>(open: &'r [RunRow], queue: &[SqueueRow]) -> FromQueue<'r> {
    let QueueIndex { by_id, by_token } = index(queue);
    let mut updates = Vec::new();
    let mut ask_sacct: Vec<&RunRow> = Vec::new();
    let mut unknown_tokens: Vec<&RunRow> = Vec::new();
    for run in open {
        let row = match &run.job_id {
            Some(id) => by_id.get(id.as_str()).map(|r| (id.clone(), *r)),
            None => by_token
                .get(run.token.as_str())
                .map(|(id, r)| (id.clone(), *r)),
        };
        match (row, &run.job_id) {
            (Some((job_id, row)), _) => match update_from_squeue(run, row, &job_id) {
                Some(u) => {
                    if u.state != Some(run.state) || u.job_id.is_some() || u.node != run.node {
                        updates.push(u);
                    }
                }
                None => ask_sacct.push(run),
            },
            (None, Some(_)) => ask_sacct.push(run),
            (None, None) => unknown_tokens.push(run),
        }
    }
    FromQueue {
        updates,
        ask_sacct,
        unknown_tokens,
    }
}

/// The sacct calls needed once `squeue` answered `queue`.
pub fn sacct_requests(open: &[RunRow], queue: &[SqueueRow]) -> SacctRequests {
    let q = from_queue(open, queue);
    SacctRequests {
        // An array task also by its array's ID: a task cancelled before it
        // started is only in the array's remainder row (see `remainder_tasks`).
        job_ids: {
            let mut ids: Vec<String> = Vec::new();
            for id in q.ask_sacct.iter().filter_map(|r| r.job_id.as_deref()) {
                ids.push(id.to_string());
                if let Some((array, _)) = id.split_once('_') {
                    ids.push(array.to_string());
                }
            }
            let mut seen = std::collections::HashSet::new();
            ids.retain(|id| seen.insert(id.clone()));
            ids
        },
        // A little before the oldest intent: its job may have been queued
        // just before the intent's time was read.
        tokens_since: q
            .unknown_tokens
            .iter()
            .map(|r| r.created_at)
            .min()
            .map(|t| t - 300),
    }
}

/// What the open runs of one cluster became: from squeue first (fresh jobs
/// reach sacct seconds late), then sacct for the rest; a run in neither is
/// `lost` only after `lost_after` seconds; a `submitting` run found by its
/// token is adopted.
pub fn decide(
    open: &[RunRow],
    queue: &[SqueueRow],
    acct: &Accounting,
    now: i64,
    lost_after: i64,
) -> Vec<RunUpdate> {
    let FromQueue {
        mut updates,
        ask_sacct,
        unknown_tokens,
    } = from_queue(open, queue);
    for run in ask_sacct {
        let id = run.job_id.as_deref().unwrap_or_default();
        match acct.jobs.get(id) {
            // A finished row is final only with its end time: right after
            // the end (and after slurmdbd restarts) sacct shows the final
            // state with `End=Unknown` and no steps for a few seconds.
            Some(job) if !(job.placeholder || job.state.is_finished() && job.end.is_none()) => {
                let mut u = update_from_sacct(run, job);
                // squeue answered without this job, yet sacct says it is
                // live: stale accounting (a controller that lost its
                // state). Past its time limit and the grace, it is lost.
                let since = run
                    .started_at
                    .or(run.submitted_at)
                    .unwrap_or(run.created_at);
                if u.state.is_some_and(RunState::in_flight)
                    && now - since > run.time_limit_s as i64 + lost_after
                {
                    u.state = Some(RunState::Lost);
                    u.ended_at = Some(now);
                    u.reason = Some(format!(
                        "sacct says {} but Slurm no longer knows job {id}, past its time limit",
                        job.state
                    ));
                }
                if u.state.is_some_and(|s| s != run.state)
                    || u.reason.is_some()
                    || u.slurm_state != run.slurm_state
                {
                    updates.push(u);
                }
            }
            // A placeholder row (just started or ended): look again next sync.
            Some(_) => {}
            None if !acct.ok => {}
            None => {
                // In neither squeue nor sacct: sacct lags a few seconds; give it a grace period.
                let since = run.unseen_since.unwrap_or(now);
                if now - since >= lost_after {
                    updates.push(RunUpdate {
                        run_id: run.id,
                        state: Some(RunState::Lost),
                        reason: Some(format!(
                            "job {id} is in neither squeue nor sacct after {}",
                            crate::output::duration(now - since)
                        )),
                        ended_at: Some(now),
                        ..Default::default()
                    });
                } else if run.unseen_since.is_none() {
                    updates.push(RunUpdate {
                        run_id: run.id,
                        unseen_since: Some(Some(now)),
                        ..Default::default()
                    });
                }
            }
        }
    }
    for run in unknown_tokens {
        match acct.token_jobs.get(&run.token) {
            Some(job) => {
                let mut u = update_from_sacct(run, job);
                u.job_id = Some(job.job_id.clone());
                if u.state.is_none() {
                    u.state = Some(RunState::Pending);
                }
                u.reason = Some(format!("adopted job {} found by its token", job.job_id));
                updates.push(u);
            }
            None if !acct.ok => {}
            None if now - run.created_at >= SUBMITTING_GRACE_S => {
                updates.push(RunUpdate {
                    run_id: run.id,
                    state: Some(RunState::Lost),
                    reason: Some("sbatch never queued it: resubmitted".into()),
                    ended_at: Some(now),
                    ..Default::default()
                });
            }
            None => {}
        }
    }
    // Adoption by token in squeue: mark the reason.
    for u in updates.iter_mut() {
        if let Some(run) = open.iter().find(|r| r.id == u.run_id)
            && run.state == RunState::Submitting
            && let Some(job) = u.job_id.clone()
        {
            let adopted = format!("adopted job {job} found by its token");
            u.reason = Some(match u.reason.take() {
                Some(r) if !r.starts_with("adopted") => format!("{adopted}; {r}"),
                Some(r) => r,
                None => adopted,
            });
            // The intent was written just before sbatch: close enough.
            u.submitted_at = u.submitted_at.or(Some(run.created_at));
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::slurm::parse::{parse_sacct, parse_squeue};
    use crate::model::{Label, UnitKey};

    const SQUEUE: &str = include_str!("../../../tests/fixtures/slurm/squeue_mixed.txt");
    const SACCT: &str = include_str!("../../../tests/fixtures/slurm/sacct_mixed.txt");
    const LOST_AFTER: i64 = 600;
    const NOW: i64 = 1_800_000_000;

    /// An open run of job `job` (or, with `None`, known by `token` only).
    fn run(id: i64, job: Option<&str>, token: &str, state: RunState) -> RunRow {
        let key = UnitKey::new("bids", &Label::new(&format!("s{id}")).unwrap(), None);
        RunRow {
            token: token.into(),
            job_id: job.map(str::to_string),
            state,
            created_at: NOW - 60,
            time_limit_s: 3600,
            ..RunRow::example(id, key)
        }
    }

    fn acct(ok: bool) -> Accounting {
        let mut a = Accounting {
            ok,
            ..Default::default()
        };
        if ok {
            a.add_jobs(parse_sacct(SACCT).unwrap());
        }
        a
    }

    fn state_of(updates: &[RunUpdate], run: i64) -> Option<RunState> {
        updates
            .iter()
            .find(|u| u.run_id == run)
            .and_then(|u| u.state)
    }

    /// The open runs of the recorded jobs: live ones (squeue settles them),
    /// ended ones (sacct does), and one whose sbatch answer was lost.
    fn open() -> Vec<RunRow> {
        vec![
            run(1, Some("30"), "nfslurm-test-token-9", RunState::Pending),
            run(2, Some("31"), "nfslurm-test-token-10", RunState::Pending),
            run(
                3,
                Some("32_4"),
                "nfslurm-test-token-11_4",
                RunState::Submitting,
            ),
            run(4, Some("22"), "nfslurm-test-token-4", RunState::Running),
            run(5, Some("24"), "nfslurm-test-token-6", RunState::Running),
            run(6, Some("23"), "nfslurm-test-token-5", RunState::Pending),
            run(7, Some("26"), "nfslurm-test-token-7", RunState::Running),
            run(8, None, "nfslurm-test-token-9", RunState::Submitting),
        ]
    }

    #[test]
    fn squeue_settles_live_jobs_and_sends_the_ended_ones_to_sacct() {
        let queue = parse_squeue(SQUEUE).unwrap();
        let ask = sacct_requests(&open(), &queue);
        // squeue lists 22, 24, 23, 26 as ended: their outcome is sacct's.
        assert_eq!(ask.job_ids, vec!["22", "24", "23", "26"]);
        // The run known by its token is in squeue: no sacct window needed.
        assert_eq!(ask.tokens_since, None);
    }

    #[test]
    fn recorded_output_decides_every_run() {
        let queue = parse_squeue(SQUEUE).unwrap();
        let updates = decide(&open(), &queue, &acct(true), NOW, LOST_AFTER);
        assert_eq!(state_of(&updates, 1), Some(RunState::Running));
        // Still pending: nothing to write.
        assert_eq!(state_of(&updates, 2), None);
        // A pending array task from the folded `32_[1,4,7%2]` row.
        assert_eq!(state_of(&updates, 3), Some(RunState::Pending));
        assert_eq!(state_of(&updates, 4), Some(RunState::Failed));
        assert_eq!(state_of(&updates, 5), Some(RunState::Oom));
        assert_eq!(state_of(&updates, 6), Some(RunState::UpstreamFailed));
        assert_eq!(state_of(&updates, 7), Some(RunState::Cancelled));
        // Found by its token in squeue: adopted, with the job ID.
        let adopted = updates.iter().find(|u| u.run_id == 8).unwrap();
        assert_eq!(adopted.job_id.as_deref(), Some("30"));
        assert!(
            adopted
                .reason
                .as_deref()
                .unwrap()
                .starts_with("adopted job 30"),
            "{adopted:?}"
        );
        let failed = updates.iter().find(|u| u.run_id == 4).unwrap();
        assert_eq!(failed.exit_code, Some(3));
    }

    #[test]
    fn with_slurmdbd_down_ended_runs_stay_open() {
        let queue = parse_squeue(SQUEUE).unwrap();
        let updates = decide(&open(), &queue, &acct(false), NOW, LOST_AFTER);
        for ended in [4, 5, 6, 7] {
            assert_eq!(state_of(&updates, ended), None, "run {ended}");
        }
        // squeue's news is kept.
        assert_eq!(state_of(&updates, 1), Some(RunState::Running));
    }

    #[test]
    fn a_job_in_neither_listing_is_lost_only_after_the_grace_period() {
        let queue = parse_squeue(SQUEUE).unwrap();
        let mut gone = run(9, Some("999"), "t9", RunState::Running);
        let updates = decide(
            std::slice::from_ref(&gone),
            &queue,
            &acct(true),
            NOW,
            LOST_AFTER,
        );
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].state, None);
        assert_eq!(updates[0].unseen_since, Some(Some(NOW)));
        gone.unseen_since = Some(NOW);
        let later = decide(
            std::slice::from_ref(&gone),
            &queue,
            &acct(true),
            NOW + LOST_AFTER - 1,
            LOST_AFTER,
        );
        assert!(later.is_empty(), "{later:?}");
        let lost = decide(&[gone], &queue, &acct(true), NOW + LOST_AFTER, LOST_AFTER);
        assert_eq!(state_of(&lost, 9), Some(RunState::Lost));
    }

    #[test]
    fn an_intent_found_nowhere_is_resubmitted_after_its_grace() {
        let queue = parse_squeue(SQUEUE).unwrap();
        let mut intent = run(10, None, "never-queued", RunState::Submitting);
        intent.created_at = NOW;
        let ask = sacct_requests(std::slice::from_ref(&intent), &queue);
        assert_eq!(ask.tokens_since, Some(NOW - 300));
        let soon = decide(
            std::slice::from_ref(&intent),
            &queue,
            &acct(true),
            NOW + 1,
            LOST_AFTER,
        );
        assert!(soon.is_empty(), "{soon:?}");
        let later = decide(
            &[intent],
            &queue,
            &acct(true),
            NOW + SUBMITTING_GRACE_S,
            LOST_AFTER,
        );
        assert_eq!(state_of(&later, 10), Some(RunState::Lost));
    }

    /// Captured: `--kill-on-invalid-dep` cancelled task 2 of array 5871
    /// before it started; sacct keeps it only in the remainder row
    /// `5871_[1-2]` (task 1 was split out and ran), and `sacct
    /// --jobs=5871_2` finds nothing. Found by the full suite: the unit stayed
    /// `queued` for good.
    #[test]
    fn a_pending_array_task_cancelled_by_its_dependency_is_read_from_the_remainder_row() {
        const REMAINDER: &str = include_str!(
            "../../../tests/fixtures/slurm/sacct_array_remainder_cancelled_by_dependency.txt"
        );
        let open = vec![
            run(
                1,
                Some("5871_1"),
                "nfslurm-b2a38fd963f0316a_1",
                RunState::Pending,
            ),
            run(
                2,
                Some("5871_2"),
                "nfslurm-b2a38fd963f0316a_2",
                RunState::Pending,
            ),
        ];
        // Neither is in squeue: both go to sacct, asked by the array's ID too.
        let ask = sacct_requests(&open, &[]);
        assert_eq!(ask.job_ids, vec!["5871_1", "5871", "5871_2"]);
        let mut acct = Accounting {
            ok: true,
            ..Default::default()
        };
        acct.add_jobs(parse_sacct(REMAINDER).unwrap());
        let updates = decide(&open, &[], &acct, NOW, LOST_AFTER);
        // Task 1's own row wins over the remainder that still names it.
        assert_eq!(state_of(&updates, 1), Some(RunState::Succeeded));
        assert_eq!(state_of(&updates, 2), Some(RunState::UpstreamFailed));
        // Found by token too (a run whose job ID was never recorded).
        let mut by_token = Accounting {
            ok: true,
            ..Default::default()
        };
        by_token.add_token_jobs(parse_sacct(REMAINDER).unwrap());
        assert_eq!(
            by_token.token_jobs["nfslurm-b2a38fd963f0316a_2"].job_id,
            "5871_2"
        );
        assert_eq!(
            by_token.token_jobs["nfslurm-b2a38fd963f0316a_1"].job_id,
            "5871_1"
        );
    }
}
