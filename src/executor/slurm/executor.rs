//! The Slurm executor: `sbatch` chains held by `afterok`, one
//! `squeue` and chunked `sacct` calls per reconciliation, adoption of runs
//! whose sbatch answer was lost.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};

use super::arrays::{self, Submission};
use super::decide;
use super::directives;
use super::parse::{self, SACCT_FORMAT, SQUEUE_FORMAT, SacctJob, SlurmState, SqueueRow};
use crate::config::{Config, Scheduler, SubmissionMode};
use crate::engine;
use crate::executor::Journal;
use crate::executor::{CANCELLED_BY_US, ExecError, Executor, Prepared, Rejected, SubmitOutcome};
use crate::model::RunState;
use crate::state::{RunRow, RunUpdate, Store};

/// A `submitting` run found nowhere this long after its intent was written
/// never reached Slurm: it is resubmitted (as an infrastructure retry). We
/// hold the plan lock, so no other nfslurm is between sbatch and its write;
/// a queued job is in squeue at once, and one that already ended and left
/// squeue is in sacct, which lags a few seconds (5 s at most, seen here).
pub(super) const SUBMITTING_GRACE_S: i64 = 15;
/// The largest array index used: Slurm's default `MaxArraySize` is 1001.
const MAX_ARRAY_INDEX: u32 = 1000;

/// Calls made, for the figures the closing notes and benchmarks report.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallCounts {
    pub sbatch: u32,
    pub squeue: u32,
    pub sacct: u32,
    pub scancel: u32,
}

/// Calls made by this process, all executors together (for `-v` and benchmarks).
static PROCESS_CALLS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

fn record_call(program: &str) {
    let i = match program {
        "sbatch" => 0,
        "squeue" => 1,
        "sacct" => 2,
        "scancel" => 3,
        _ => return,
    };
    PROCESS_CALLS[i].fetch_add(1, Ordering::Relaxed);
}

/// Slurm commands this process has run so far.
pub fn process_calls() -> CallCounts {
    let get = |i: usize| PROCESS_CALLS[i].load(Ordering::Relaxed);
    CallCounts {
        sbatch: get(0),
        squeue: get(1),
        sacct: get(2),
        scancel: get(3),
    }
}

pub struct SlurmExecutor {
    config: Config,
    scheduler: Scheduler,
    user: String,
    /// Attempts for a transient failure (controller timeouts), backoff between.
    pub transient_attempts: usize,
}

#[derive(Debug)]
enum CallError {
    /// Could not start the tool at all (not on PATH).
    Spawn(String),
    /// Transient: the controller or database did not answer.
    Transient(String),
    /// The tool answered with an error.
    Failed(String),
    /// An account or QOS submit limit: try again later.
    Limit(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Spawn(m)
            | CallError::Transient(m)
            | CallError::Failed(m)
            | CallError::Limit(m) => f.write_str(m),
        }
    }
}

fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() }.to_string()
        })
}

impl SlurmExecutor {
    pub fn new(config: &Config) -> SlurmExecutor {
        SlurmExecutor {
            config: config.clone(),
            scheduler: config.site.scheduler.clone(),
            user: current_user(),
            transient_attempts: std::env::var("NFSLURM_TRANSIENT_ATTEMPTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3),
        }
    }

    /// Runs a Slurm tool, retrying transient errors with exponential backoff and jitter.
    fn call(&mut self, program: &str, args: &[String]) -> Result<String, CallError> {
        record_call(program);
        let timeout = Duration::from_secs(self.scheduler.tool_timeout_s.max(1));
        let once = || -> Result<String, CallError> {
            tracing::debug!(program, ?args, "calling");
            let output = crate::process::run(program, args, timeout).map_err(|e| match e {
                crate::process::ToolError::Spawn { .. } => CallError::Spawn(e.to_string()),
                // A hung tool: the cluster is as good as unreachable.
                crate::process::ToolError::Timeout { .. } => CallError::Transient(format!(
                    "{e} (`scheduler.tool_timeout` is {})",
                    crate::output::duration(timeout.as_secs() as i64)
                )),
            })?;
            let raw = &output.stderr;
            let stderr = tool_message(program, raw);
            // A submit limit means "later": classify on Slurm's own lines.
            if parse::is_submit_limit(raw) {
                return Err(CallError::Limit(format!("`{program}` failed: {stderr}")));
            }
            if output.status.success() {
                return Ok(output.stdout);
            }
            if parse::is_transient_error(&stderr) {
                Err(CallError::Transient(format!(
                    "`{program}` failed: {stderr}"
                )))
            } else {
                Err(CallError::Failed(format!("`{program}` failed: {stderr}")))
            }
        };
        let attempts = self.transient_attempts.max(1);
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .with_jitter_seed(rand::random())
                .with_max_times(attempts - 1),
        )
        .when(|e| match e {
            // sbatch again only when the first one certainly queued nothing.
            CallError::Transient(m) if program == "sbatch" => parse::is_safe_to_resubmit(m),
            CallError::Transient(_) => true,
            _ => false,
        })
        .notify(|e, after| tracing::warn!("{e}; retrying in {}", crate::output::duration_ms(after)))
        .call()
    }

    /// Writes the array's script ([`arrays::array_script`]): nfslurm's
    /// per-array directives, the members' shared `#SBATCH` lines as their
    /// template wrote them (grouping made them the same for every member),
    /// and the task table. The runs' tokens become `<token>_<task>` before
    /// sbatch is called.
    fn write_array_script(
        &self,
        journal: &mut dyn Journal,
        batch: &[Prepared],
        members: &[(usize, u32)],
        token: &str,
        command_line: &[String],
    ) -> Result<PathBuf, ExecError> {
        let first = &batch[members[0].0];
        let tokens: Vec<(i64, String)> = members
            .iter()
            .map(|&(i, t)| (batch[i].run_id, format!("{token}_{t}")))
            .collect();
        journal.set_tokens(&tokens)?;
        let pipeline = self.config.pipeline(&first.key.pipeline);
        let throttle = pipeline.and_then(|p| p.max_concurrent);
        let state_dir = &self.config.paths.state_dir;
        let dir = state_dir
            .join("scripts")
            .join("arrays")
            .join(&first.key.pipeline);
        let logs = state_dir
            .join("logs")
            .join("arrays")
            .join(&first.key.pipeline);
        let io =
            |e: std::io::Error| ExecError::Other(format!("cannot write the array script: {e}"));
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::create_dir_all(&logs).map_err(io)?;
        let path = dir.join(format!("{token}.sbatch"));
        let indices: Vec<u32> = members.iter().map(|m| m.1).collect();
        let tasks: Vec<arrays::Task> = members
            .iter()
            .map(|&(i, t)| arrays::Task {
                index: t,
                unit: &batch[i].key,
                script: &batch[i].script_path,
                log: &batch[i].log_path,
            })
            .collect();
        let mut shown = vec!["sbatch".to_string()];
        shown.extend(command_line.iter().map(|a| crate::render::shell_quote(a)));
        shown.push(crate::render::shell_quote(&path.to_string_lossy()));
        let header = arrays::ArrayHeader {
            pipeline: &first.key.pipeline,
            template: pipeline.map(|p| p.template_name.as_str()).unwrap_or("?"),
            directives: &first.directives,
            spec: arrays::array_spec(&indices, throttle),
            logs: &logs,
            command_line: shown.join(" "),
        };
        std::fs::write(&path, arrays::array_script(&header, &tasks)).map_err(io)?;
        Ok(path)
    }

    /// The name of an array job of `pipeline` (`scheduler.array_job_name`).
    pub fn array_job_name(config: &Config, pipeline: &str) -> String {
        crate::render::array_job_name(
            &config.site.scheduler.array_job_name,
            &crate::render::study_name(config),
            pipeline,
        )
        // Checked when the config was loaded; a fallback all the same.
        .unwrap_or_else(|_| format!("nf-{pipeline}"))
    }

    /// What sbatch refused, naming the template line that holds the
    /// directive Slurm's message points at, when there is one.
    fn refusal(&self, batch: &[Prepared], members: &[(usize, Option<u32>)], msg: &str) -> String {
        let first = &batch[members[0].0];
        let what = if members.len() == 1 {
            format!("`{}`", first.key)
        } else {
            format!(
                "the array of {} `{}` units (`{}`, …)",
                members.len(),
                first.key.pipeline,
                first.key
            )
        };
        let reason = msg.strip_prefix("`sbatch` failed: ").unwrap_or(msg);
        let Some(pipeline) = self.config.pipeline(&first.key.pipeline) else {
            return format!("sbatch refused {what}: {reason}");
        };
        let blamed = directives::options_blamed(reason);
        let rendered = std::fs::read_to_string(&first.script_path).unwrap_or_default();
        let lines = directives::lines_to_blame(&pipeline.template, &rendered, blamed);
        if !lines.is_empty() {
            let at: Vec<String> = lines
                .iter()
                .map(|(n, text)| format!("`{}:{n}`: `{text}`", pipeline.template_name))
                .collect();
            return format!(
                "sbatch refused {what}: {reason}; the directive is at {}",
                at.join(", ")
            );
        }
        let from_config: Vec<&String> = pipeline
            .scheduler
            .extra_directives
            .iter()
            .filter(|d| {
                directives::parse(&format!("#SBATCH {d}"))
                    .iter()
                    .any(|x| blamed.contains(&x.name.as_str()))
            })
            .collect();
        if !from_config.is_empty() {
            return format!(
                "sbatch refused {what}: {reason}; the directive comes from `scheduler.extra_directives` (`{}`), written by the template `{}`",
                from_config
                    .iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join("`, `"),
                pipeline.template_name
            );
        }
        format!(
            "sbatch refused {what}: {reason}; its directives come from the template `{}` (rendered: `{}`)",
            pipeline.template_name,
            first.script_path.display()
        )
    }

    /// `--clusters` for a submission of `pipeline`: its own cluster (a
    /// pipeline may override the site's), so that the command line, which
    /// wins over the script, never contradicts the template.
    fn cluster_args_for(&self, pipeline: &str) -> Vec<String> {
        let cluster = self
            .config
            .pipeline(pipeline)
            .map(|p| &p.scheduler.cluster)
            .unwrap_or(&self.scheduler.cluster);
        match cluster {
            Some(c) => vec![format!("--clusters={c}")],
            None => Vec::new(),
        }
    }

    /// `--clusters` for the calls about runs on `cluster` (`None`: the
    /// default cluster).
    fn cluster_args(cluster: Option<&str>) -> Vec<String> {
        match cluster {
            Some(c) => vec![format!("--clusters={c}")],
            None => Vec::new(),
        }
    }

    /// The cluster a run was submitted to: its own record, or (runs recorded
    /// before clusters were) the site's.
    fn cluster_of<'a>(&'a self, run: &'a RunRow) -> Option<&'a str> {
        run.cluster.as_deref().or(self.scheduler.cluster.as_deref())
    }

    fn squeue(&mut self, cluster: Option<&str>) -> Result<Vec<SqueueRow>, ExecError> {
        let mut args = vec![
            "--noheader".to_string(),
            "--states=all".into(),
            format!("--user={}", self.user),
            format!("--format={SQUEUE_FORMAT}"),
        ];
        args.extend(Self::cluster_args(cluster));
        match self.call("squeue", &args) {
            Ok(out) => parse::parse_squeue(&out).map_err(|e| ExecError::Other(e.to_string())),
            Err(CallError::Transient(m)) | Err(CallError::Spawn(m)) => {
                Err(ExecError::Unreachable(m))
            }
            Err(CallError::Failed(m)) | Err(CallError::Limit(m)) => Err(ExecError::Unreachable(m)),
        }
    }

    /// sacct for these job IDs, in chunks; `None` when slurmdbd does not answer.
    fn sacct(&mut self, cluster: Option<&str>, job_ids: &[String]) -> Option<Vec<SacctJob>> {
        let mut out = Vec::new();
        for chunk in job_ids.chunks(self.scheduler.sacct_chunk.max(1)) {
            let mut args = vec![
                "--noheader".to_string(),
                "--parsable2".into(),
                format!("--format={SACCT_FORMAT}"),
                format!("--jobs={}", chunk.join(",")),
            ];
            args.extend(Self::cluster_args(cluster));
            match self.call("sacct", &args) {
                Ok(text) => match parse::parse_sacct(&text) {
                    Ok(jobs) => out.extend(jobs),
                    Err(e) => {
                        tracing::warn!("cannot read sacct output: {e}");
                        return None;
                    }
                },
                Err(e) => {
                    tracing::warn!("sacct did not answer, finished runs stay open: {e}");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// sacct over a time window, to find jobs by token when their ID is unknown.
    fn sacct_since(&mut self, cluster: Option<&str>, since: i64) -> Option<Vec<SacctJob>> {
        let start = chrono::DateTime::from_timestamp(since, 0)?
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string();
        let mut args = vec![
            "--noheader".to_string(),
            "--parsable2".into(),
            "--allocations".into(),
            format!("--user={}", self.user),
            format!("--starttime={start}"),
            "--endtime=now".into(),
            format!("--format={SACCT_FORMAT}"),
        ];
        args.extend(Self::cluster_args(cluster));
        match self.call("sacct", &args) {
            Ok(text) => parse::parse_sacct(&text).ok(),
            Err(_) => None,
        }
    }

    /// Reconciles the open runs submitted to `cluster`: the calls around
    /// [`decide::decide`], which is pure.
    fn reconcile_on(
        &mut self,
        cluster: Option<&str>,
        open: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        let queue = self.squeue(cluster)?;
        let ask = decide::sacct_requests(open, &queue);
        let mut acct = decide::Accounting {
            ok: true,
            ..Default::default()
        };
        if !ask.job_ids.is_empty() {
            match self.sacct(cluster, &ask.job_ids) {
                Some(list) => acct.add_jobs(list),
                None => acct.ok = false,
            }
        }
        if let Some(since) = ask.tokens_since {
            match self.sacct_since(cluster, since) {
                Some(list) => acct.add_token_jobs(list),
                None => acct.ok = false,
            }
        }
        let lost_after = self.config.retry.lost_after_s as i64;
        Ok(decide::decide(open, &queue, &acct, now, lost_after))
    }
}

/// A tool's stderr as one line, without its `sbatch: error:` prefixes.
fn tool_message(program: &str, stderr: &str) -> String {
    let prefix = format!("{program}: ");
    stderr
        .lines()
        .map(|l| {
            let l = l.trim();
            let l = l.strip_prefix(&prefix).unwrap_or(l);
            l.strip_prefix("error: ").unwrap_or(l)
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The run state a Slurm state means; `None` for a state nfslurm
/// does not know: recorded and looked at again, never taken for success.
pub fn run_state_of(state: &SlurmState, exit_code: i32) -> Option<RunState> {
    Some(match state {
        SlurmState::Pending | SlurmState::Requeued | SlurmState::Suspended => RunState::Pending,
        SlurmState::Running | SlurmState::Completing | SlurmState::Configuring => RunState::Running,
        SlurmState::Completed if exit_code == 0 => RunState::Succeeded,
        SlurmState::Completed | SlurmState::Failed => RunState::Failed,
        SlurmState::Timeout => RunState::Timeout,
        SlurmState::OutOfMemory => RunState::Oom,
        SlurmState::NodeFail
        | SlurmState::BootFail
        | SlurmState::Preempted
        | SlurmState::Deadline => RunState::InfraFailed,
        SlurmState::Cancelled { by } => {
            // A person (scancel, `nfslurm cancel`) is named: "CANCELLED by
            // <uid>". Slurm's own cancel under --kill-on-invalid-dep names
            // nobody; its reason is usually `Dependency`, but an array task
            // killed as its array was being split shows `None`
            // (tests/fixtures/slurm/sacct_dependency_cancel_array_task.txt).
            if by.is_none() {
                RunState::UpstreamFailed
            } else {
                RunState::Cancelled
            }
        }
        SlurmState::Unknown(_) => return None,
    })
}

pub(super) fn ts(t: Option<chrono::NaiveDateTime>) -> Option<i64> {
    t.and_then(|t| t.and_local_timezone(chrono::Local).earliest())
        .map(|t| t.timestamp())
}

/// The update a sacct record means for a run.
pub(super) fn update_from_sacct(run: &RunRow, job: &SacctJob) -> RunUpdate {
    let code = job.exit_code.code;
    let mapped = run_state_of(&job.state, code);
    let mut update = RunUpdate {
        run_id: run.id,
        job_id: (run.job_id.as_deref() != Some(job.job_id.as_str())).then(|| job.job_id.clone()),
        slurm_state: Some(job.state.to_string()),
        node: job.node.clone(),
        submitted_at: ts(job.submit),
        started_at: ts(job.start),
        unseen_since: Some(None),
        ..Default::default()
    };
    match mapped {
        None => {
            update.reason = Some(format!(
                "Slurm state `{}` is not one nfslurm knows: looked at again next sync",
                job.state.as_str()
            ));
        }
        Some(state) => {
            update.state = Some(state);
            if !state.in_flight() {
                update.ended_at = ts(job.end);
                update.elapsed_s = job.elapsed_s.map(|e| e as i64);
                update.max_rss_mb = job.max_rss_mb.map(|m| m as i64);
                // `3:0` is exit 3; `0:9` is killed by signal 9 (shell style 137);
                // OUT_OF_MEMORY's `0:125` is Slurm's marker, not a signal.
                let signal = job.exit_code.signal;
                update.exit_code = Some(if code == 0 && (1..=64).contains(&signal) {
                    128 + signal
                } else {
                    code
                });
                update.reason = Some(match state {
                    RunState::Failed if crate::model::cannot_run(code) => {
                        crate::model::exit_reason(code)
                    }
                    RunState::Failed => format!("exit code {}:{}", code, job.exit_code.signal),
                    RunState::UpstreamFailed => "cancelled by Slurm: an upstream job failed".into(),
                    RunState::Cancelled => job.state.to_string(),
                    RunState::Oom => format!(
                        "out of memory (requested {} MB{})",
                        run.mem_mb,
                        job.max_rss_mb
                            .map(|m| format!(", MaxRSS {m} MB"))
                            .unwrap_or_default()
                    ),
                    RunState::Timeout => format!(
                        "time limit {} reached",
                        crate::config::format_slurm_time(run.time_limit_s)
                    ),
                    RunState::InfraFailed => format!(
                        "{}: retried without spending an attempt",
                        job.state.as_str()
                    ),
                    _ => String::new(),
                });
                if update.reason.as_deref() == Some("") {
                    update.reason = None;
                }
            }
        }
    }
    update
}

pub(super) fn update_from_squeue(run: &RunRow, row: &SqueueRow, job_id: &str) -> Option<RunUpdate> {
    let state = run_state_of(&row.state, 0)?;
    if !state.in_flight() {
        // Finished: squeue has no exit code or MaxRSS; sacct confirms it.
        return None;
    }
    Some(RunUpdate {
        run_id: run.id,
        state: Some(state),
        job_id: (run.job_id.as_deref() != Some(job_id)).then(|| job_id.to_string()),
        slurm_state: Some(row.state.as_str().to_string()),
        reason: (state == RunState::Pending && !row.reason.is_empty() && row.reason != "None")
            .then(|| row.reason.clone()),
        node: (!row.nodes.is_empty() && state == RunState::Running).then(|| row.nodes.clone()),
        unseen_since: run.unseen_since.map(|_| None),
        ..Default::default()
    })
}

impl Executor for SlurmExecutor {
    fn kind(&self) -> crate::config::ExecutorKind {
        crate::config::ExecutorKind::Slurm
    }

    /// One `squeue` and chunked `sacct` calls per cluster in use.
    fn reconcile(
        &mut self,
        _store: &Store,
        open: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        let mut by_cluster: std::collections::BTreeMap<Option<String>, Vec<RunRow>> =
            Default::default();
        for run in open {
            by_cluster
                .entry(self.cluster_of(run).map(str::to_string))
                .or_default()
                .push(run.clone());
        }
        let mut updates = Vec::new();
        for (cluster, runs) in by_cluster {
            updates.extend(self.reconcile_on(cluster.as_deref(), &runs, now)?);
        }
        Ok(updates)
    }

    fn submit(
        &mut self,
        journal: &mut dyn Journal,
        batch: &[Prepared],
        now: i64,
    ) -> Result<SubmitOutcome, ExecError> {
        let mut outcome = SubmitOutcome::default();
        // Job IDs of upstream runs already in flight.
        let outside: Vec<i64> = batch
            .iter()
            .flat_map(|p| p.depends_on.iter().copied())
            .collect();
        let mut job_of: HashMap<i64, String> = journal
            .store()
            .runs_by_ids(&outside)?
            .into_iter()
            .filter(|r| r.state.in_flight())
            .filter_map(|r| r.job_id.map(|j| (r.id, j)))
            .collect();
        let in_batch: HashSet<i64> = batch.iter().map(|p| p.run_id).collect();
        let shape = match self.scheduler.submission {
            SubmissionMode::Arrays => arrays::shape(batch, MAX_ARRAY_INDEX),
            SubmissionMode::Jobs => (0..batch.len()).map(Submission::Single).collect(),
        };
        // Array job ID of each submitted array, by its index in `shape`.
        let mut array_job: HashMap<usize, String> = HashMap::new();
        let mut pending_updates: Vec<RunUpdate> = Vec::new();
        let mut stopped = false;
        let mut limit_hit = false;
        #[cfg(debug_assertions)]
        let mut calls = 0usize;

        for (sub_index, submission) in shape.iter().enumerate() {
            let members: Vec<(usize, Option<u32>)> = match submission {
                Submission::Single(i) => vec![(*i, None)],
                Submission::Array { members, .. } => {
                    members.iter().map(|&(i, t)| (i, Some(t))).collect()
                }
            };
            let withdraw_all = |outcome: &mut SubmitOutcome| {
                for &(i, _) in &members {
                    outcome.withdrawn.push(batch[i].run_id);
                }
            };
            if stopped {
                withdraw_all(&mut outcome);
                continue;
            }
            // The dependency: afterok on exact jobs, or aftercorr on whole arrays.
            let dependency = match submission {
                Submission::Single(i) => {
                    let p = &batch[*i];
                    let mut deps = Vec::new();
                    let mut missing = false;
                    for d in &p.depends_on {
                        match job_of.get(d) {
                            Some(job) => deps.push(job.clone()),
                            None if in_batch.contains(d) => missing = true,
                            // Upstream finished since planning (succeeded): nothing to wait for.
                            None => {}
                        }
                    }
                    if missing {
                        // An upstream run of this batch was not submitted: a later sync.
                        withdraw_all(&mut outcome);
                        continue;
                    }
                    (!deps.is_empty()).then(|| format!("afterok:{}", deps.join(":")))
                }
                Submission::Array { after, .. } => {
                    let ids: Option<Vec<&String>> =
                        after.iter().map(|a| array_job.get(a)).collect();
                    match ids {
                        None => {
                            withdraw_all(&mut outcome);
                            continue;
                        }
                        Some(ids) if ids.is_empty() => None,
                        Some(ids) => Some(format!(
                            "aftercorr:{}",
                            ids.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(":")
                        )),
                    }
                }
            };
            let first = &batch[members[0].0];
            let (name, token) = match submission {
                Submission::Single(_) => (first.key.job_name(), first.token.clone()),
                Submission::Array { .. } => (
                    Self::array_job_name(&self.config, &first.key.pipeline),
                    engine::new_token(),
                ),
            };
            // Per job or array, set by nfslurm on the command line, which
            // wins over the script: name, token, dependency handling.
            let mut args = vec![
                "--parsable".to_string(),
                format!("--job-name={name}"),
                format!("--comment={token}"),
                "--kill-on-invalid-dep=yes".into(),
            ];
            if let Some(dep) = dependency {
                args.push(format!("--dependency={dep}"));
            }
            args.extend(self.cluster_args_for(&first.key.pipeline));
            let script = match submission {
                Submission::Single(_) => first.script_path.clone(),
                Submission::Array { members, .. } => {
                    self.write_array_script(journal, batch, members, &token, &args)?
                }
            };
            args.push(script.to_string_lossy().into_owned());
            let result = self.call("sbatch", &args);
            #[cfg(debug_assertions)]
            let result = {
                calls += 1;
                fault_point(result, calls - 1)
            };
            match result {
                Ok(out) => match parse::parse_sbatch_parsable(&out) {
                    Ok(job) => {
                        if matches!(submission, Submission::Array { .. }) {
                            array_job.insert(sub_index, job.job_id.clone());
                        }
                        for &(i, task) in &members {
                            let id = match task {
                                Some(t) => format!("{}_{t}", job.job_id),
                                None => job.job_id.clone(),
                            };
                            let run_id = batch[i].run_id;
                            job_of.insert(run_id, id.clone());
                            outcome.submitted.push((run_id, id.clone()));
                            pending_updates.push(RunUpdate {
                                run_id,
                                state: Some(RunState::Pending),
                                job_id: Some(id),
                                submitted_at: Some(now),
                                ..Default::default()
                            });
                        }
                        if pending_updates.len() >= 100 {
                            journal.record(&pending_updates)?;
                            pending_updates.clear();
                        }
                    }
                    Err(e) => {
                        // Queued, but the answer is unreadable: leave it `submitting` for adoption.
                        tracing::warn!("unreadable sbatch answer: {e}");
                        stopped = true;
                    }
                },
                Err(CallError::Limit(msg)) => {
                    // A submit limit means "later", not "failed".
                    tracing::info!("submit limit reached: {msg}");
                    withdraw_all(&mut outcome);
                    stopped = true;
                    limit_hit = true;
                }
                Err(CallError::Transient(msg)) | Err(CallError::Spawn(msg)) => {
                    // The job may be queued all the same: these runs stay
                    // `submitting` and the next sync adopts them by token or
                    // resubmits them.
                    outcome.unreachable = Some(msg);
                    stopped = true;
                }
                Err(CallError::Failed(msg)) => {
                    // A refused request is a config error, not a failed run:
                    // the runs are withdrawn (no attempt spent) and the array
                    // manifest that never became a job is removed.
                    if matches!(submission, Submission::Array { .. }) {
                        let _ = std::fs::remove_file(&script);
                    }
                    outcome.rejected.push(Rejected {
                        runs: members
                            .iter()
                            .map(|&(i, _)| (batch[i].run_id, batch[i].key.clone()))
                            .collect(),
                        message: self.refusal(batch, &members, &msg),
                    });
                }
            }
        }
        if limit_hit {
            // Everything not submitted after the limit waits for a later sync.
            outcome.deferred += outcome.withdrawn.len();
        }
        // Failed submissions go through the failure policy like any failure.
        journal.record(&pending_updates)?;
        Ok(outcome)
    }

    fn cancel(
        &mut self,
        _store: &Store,
        runs: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError> {
        // One scancel per cluster in use.
        let mut by_cluster: std::collections::BTreeMap<Option<&str>, Vec<String>> =
            Default::default();
        for run in runs {
            if let Some(id) = &run.job_id {
                by_cluster
                    .entry(self.cluster_of(run))
                    .or_default()
                    .push(id.clone());
            }
        }
        let calls: Vec<Vec<String>> = by_cluster
            .into_iter()
            .map(|(cluster, ids)| {
                let mut args = Self::cluster_args(cluster);
                args.extend(ids);
                args
            })
            .collect();
        for args in calls {
            match self.call("scancel", &args) {
                Ok(_) => {}
                Err(CallError::Failed(msg)) | Err(CallError::Limit(msg)) => {
                    tracing::warn!("scancel: {msg}")
                }
                Err(CallError::Transient(m)) | Err(CallError::Spawn(m)) => {
                    return Err(ExecError::Unreachable(m));
                }
            }
        }
        Ok(runs
            .iter()
            .map(|r| RunUpdate::ended(r.id, RunState::Cancelled, CANCELLED_BY_US, now))
            .collect())
    }
}

/// Test-only fault points, compiled out of release builds:
/// `NFSLURM_FAULT=crash-after-sbatch` aborts right after the first sbatch
/// succeeded (before its job ID is written); `NFSLURM_FAULT=sbatch-timeout`
/// reports the first successful sbatch as timed out.
#[cfg(debug_assertions)]
fn fault_point(result: Result<String, CallError>, index: usize) -> Result<String, CallError> {
    if index != 0 || result.is_err() {
        return result;
    }
    match std::env::var("NFSLURM_FAULT").as_deref() {
        Ok("crash-after-sbatch") => std::process::abort(),
        Ok("sbatch-timeout") => Err(CallError::Transient(
            "`sbatch`: Batch job submission failed: Socket timed out on send/recv operation".into(),
        )),
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, UnitKey};

    fn run() -> RunRow {
        RunRow::example(1, UnitKey::new("bids", &Label::new("01").unwrap(), None))
    }

    /// The run states that real sacct rows (tests/fixtures/slurm) mean.
    #[test]
    fn recorded_sacct_rows_map_to_run_states() {
        let jobs = parse::parse_sacct(include_str!(
            "../../../tests/fixtures/slurm/sacct_mixed.txt"
        ))
        .unwrap();
        let state_of = |id: &str| {
            let job = jobs.iter().find(|j| j.job_id == id).unwrap();
            let u = update_from_sacct(&run(), job);
            (u.state.unwrap(), u.exit_code)
        };
        assert_eq!(state_of("18"), (RunState::Timeout, Some(0)));
        assert_eq!(state_of("19"), (RunState::Succeeded, Some(0)));
        assert_eq!(state_of("22"), (RunState::Failed, Some(3)));
        assert_eq!(state_of("24"), (RunState::Oom, Some(0)));
        assert_eq!(state_of("26").0, RunState::Cancelled);
        assert_eq!(state_of("23").0, RunState::UpstreamFailed);
        let oom = jobs.iter().find(|j| j.job_id == "25").unwrap();
        let u = update_from_sacct(&run(), oom);
        assert!(u.max_rss_mb.unwrap() > 0);
        assert!(u.reason.unwrap().contains("MaxRSS"));
    }

    /// Found in a failing test run: an array task that Slurm killed for its
    /// failed upstream was recorded with reason `None`, taken for a user's
    /// cancel, and its unit was never retried.
    #[test]
    fn an_array_task_killed_for_its_dependency_is_upstream_failed_whatever_its_reason() {
        let jobs = parse::parse_sacct(include_str!(
            "../../../tests/fixtures/slurm/sacct_dependency_cancel_array_task.txt"
        ))
        .unwrap();
        for id in ["849_2", "853_2"] {
            let job = jobs.iter().find(|j| j.job_id == id).unwrap();
            assert_eq!(
                update_from_sacct(&run(), job).state,
                Some(RunState::UpstreamFailed),
                "{id}"
            );
        }
    }

    #[test]
    fn unknown_states_are_never_success() {
        assert_eq!(run_state_of(&SlurmState::parse("RESIZING"), 0), None);
        assert_eq!(
            run_state_of(&SlurmState::parse("NODE_FAIL"), 0),
            Some(RunState::InfraFailed)
        );
        assert_eq!(
            run_state_of(&SlurmState::parse("PREEMPTED"), 0),
            Some(RunState::InfraFailed)
        );
        assert_eq!(
            run_state_of(&SlurmState::parse("COMPLETED"), 1),
            Some(RunState::Failed)
        );
    }

    #[test]
    fn tool_messages_lose_their_prefixes() {
        let stderr = include_str!("../../../tests/fixtures/slurm/sbatch_controller_down.stderr");
        let msg = tool_message("sbatch", stderr);
        assert!(!msg.contains("sbatch: error:"), "{msg}");
        assert!(msg.contains("Unable to contact slurm controller"), "{msg}");
        assert!(parse::is_transient_error(stderr));
    }
}
