//! Pure parsers for what `sbatch`, `squeue` and `sacct` print.
//!
//! No I/O here: the `run_*` side calls the commands with the format strings
//! below and hands their output to these functions. Every parser is tested on
//! real output captured from a Slurm 22.05 cluster (`tests/fixtures/slurm/`,
//! see its README for how each file was made).
//!
//! Slurm's output is not a stable API and is often surprising, so the parsers
//! keep what Slurm said rather than guess: an unexpected state becomes
//! [`SlurmState::Unknown`] (never success), `squeue`'s summary row for a
//! pending array (`123_[1,4,7%2]`) is kept as a row, and `sacct`'s short-lived
//! placeholder rows are flagged rather than dropped.

use std::fmt;

use chrono::NaiveDateTime;

/// `squeue --format` for [`parse_squeue`]: job ID as shown (`123`, `123_4`,
/// `123_[1,4%2]`), raw ID, state, reason, comment, nodes, start time,
/// dependency, time limit. Use it with
/// `squeue --noheader --states=all --user=<user> --format=<this>`.
pub const SQUEUE_FORMAT: &str = "%i|%A|%T|%r|%k|%N|%S|%E|%l";

/// `sacct --format` for [`parse_sacct`]. Use it with
/// `sacct --noheader --parsable2 -j <ids> --format=<this>`, without `-X`:
/// MaxRSS is only on the step rows.
pub const SACCT_FORMAT: &str = "JobID,JobIDRaw,JobName,State,ExitCode,NodeList,Submit,Start,End,ElapsedRaw,MaxRSS,ReqMem,TimelimitRaw,Comment,Reason";

const SQUEUE_FIELDS: usize = 9;
const SACCT_FIELDS: usize = 15;
const SACCT_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// A line of Slurm output these parsers could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`sbatch --parsable` printed `{line}`, not a job ID")]
    Sbatch { line: String },
    #[error("`{command}` printed {found} fields where {expected} were expected: `{line}`")]
    FieldCount {
        command: &'static str,
        expected: usize,
        found: usize,
        line: String,
    },
    #[error("`{command}` printed a bad {field} `{value}` in `{line}`")]
    Field {
        command: &'static str,
        field: &'static str,
        value: String,
        line: String,
    },
}

/// A job state in Slurm's words (`squeue %T`, `sacct State`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SlurmState {
    Pending,
    Running,
    Completing,
    Configuring,
    Requeued,
    Suspended,
    Completed,
    Failed,
    Timeout,
    OutOfMemory,
    /// sacct says `CANCELLED by <uid>` when someone ran scancel, and a bare
    /// `CANCELLED` when Slurm cancelled it (e.g. `--kill-on-invalid-dep`).
    Cancelled {
        by: Option<String>,
    },
    NodeFail,
    BootFail,
    Preempted,
    Deadline,
    /// Any other word (`REQUEUE_HOLD`, `SPECIAL_EXIT`, `RESIZING`, a
    /// truncated `OUT_OF_ME+`...): recorded and looked at again, never taken
    /// for success.
    Unknown(String),
}

impl SlurmState {
    pub fn parse(s: &str) -> SlurmState {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("CANCELLED") {
            // `CANCELLED+` is sacct's truncated `CANCELLED by <uid>` (fixed-width
            // output); with --parsable2 the uid is spelled out.
            if rest.is_empty() || rest == "+" {
                return SlurmState::Cancelled { by: None };
            }
            if let Some(by) = rest.strip_prefix(" by ") {
                let by = by.trim();
                if !by.is_empty() {
                    return SlurmState::Cancelled {
                        by: Some(by.to_string()),
                    };
                }
            }
            return SlurmState::Unknown(s.to_string());
        }
        match s {
            "PENDING" => SlurmState::Pending,
            "RUNNING" => SlurmState::Running,
            "COMPLETING" => SlurmState::Completing,
            "CONFIGURING" => SlurmState::Configuring,
            "REQUEUED" => SlurmState::Requeued,
            "SUSPENDED" => SlurmState::Suspended,
            "COMPLETED" => SlurmState::Completed,
            "FAILED" => SlurmState::Failed,
            "TIMEOUT" => SlurmState::Timeout,
            "OUT_OF_MEMORY" => SlurmState::OutOfMemory,
            "NODE_FAIL" => SlurmState::NodeFail,
            "BOOT_FAIL" => SlurmState::BootFail,
            "PREEMPTED" => SlurmState::Preempted,
            "DEADLINE" => SlurmState::Deadline,
            other => SlurmState::Unknown(other.to_string()),
        }
    }

    /// The job will not run (again) under this ID. `Completing` is not
    /// finished: its exit code and accounting are not final yet. `Unknown` is
    /// not finished either, so it gets looked at again.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            SlurmState::Completed
                | SlurmState::Failed
                | SlurmState::Timeout
                | SlurmState::OutOfMemory
                | SlurmState::Cancelled { .. }
                | SlurmState::NodeFail
                | SlurmState::BootFail
                | SlurmState::Preempted
                | SlurmState::Deadline
        )
    }

    /// Slurm's word for the state (`CANCELLED` without the `by <uid>`; use
    /// `Display` for the full form).
    pub fn as_str(&self) -> &str {
        match self {
            SlurmState::Pending => "PENDING",
            SlurmState::Running => "RUNNING",
            SlurmState::Completing => "COMPLETING",
            SlurmState::Configuring => "CONFIGURING",
            SlurmState::Requeued => "REQUEUED",
            SlurmState::Suspended => "SUSPENDED",
            SlurmState::Completed => "COMPLETED",
            SlurmState::Failed => "FAILED",
            SlurmState::Timeout => "TIMEOUT",
            SlurmState::OutOfMemory => "OUT_OF_MEMORY",
            SlurmState::Cancelled { .. } => "CANCELLED",
            SlurmState::NodeFail => "NODE_FAIL",
            SlurmState::BootFail => "BOOT_FAIL",
            SlurmState::Preempted => "PREEMPTED",
            SlurmState::Deadline => "DEADLINE",
            SlurmState::Unknown(s) => s,
        }
    }
}

impl fmt::Display for SlurmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlurmState::Cancelled { by: Some(by) } => write!(f, "CANCELLED by {by}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// sacct's `ExitCode`: `<exit status>:<signal>`, e.g. `3:0` for `exit 3`,
/// `0:125` for OUT_OF_MEMORY, `0:15` for a step killed by SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExitCode {
    pub code: i32,
    pub signal: i32,
}

impl ExitCode {
    pub fn parse(s: &str) -> Option<ExitCode> {
        let (code, signal) = s.trim().split_once(':')?;
        Some(ExitCode {
            code: code.parse().ok()?,
            signal: signal.parse().ok()?,
        })
    }

    pub fn is_success(&self) -> bool {
        self.code == 0 && self.signal == 0
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.code, self.signal)
    }
}

/// What `sbatch --parsable` printed: `993`, or `993;cluster` on multi-cluster
/// setups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedJob {
    pub job_id: String,
    pub cluster: Option<String>,
}

/// Reads `sbatch --parsable` stdout: one line, a numeric job ID, optionally
/// `;cluster`. Anything else is an error: a garbled answer must not be taken
/// for a job ID.
pub fn parse_sbatch_parsable(stdout: &str) -> Result<SubmittedJob, ParseError> {
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines.next().unwrap_or("");
    let err = || ParseError::Sbatch {
        line: stdout.trim().to_string(),
    };
    if lines.next().is_some() {
        return Err(err());
    }
    let (job_id, cluster) = match line.split_once(';') {
        Some((id, cluster)) => (id, Some(cluster)),
        None => (line, None),
    };
    if job_id.is_empty() || !job_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let cluster = match cluster {
        None => None,
        Some(c) if !c.is_empty() && !c.contains(char::is_whitespace) && !c.contains(';') => {
            Some(c.to_string())
        }
        Some(_) => return Err(err()),
    };
    Ok(SubmittedJob {
        job_id: job_id.to_string(),
        cluster,
    })
}

/// One `squeue` row, for [`SQUEUE_FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqueueRow {
    /// As squeue shows it: `123`, an array task `123_4`, or for an array whose
    /// tasks have not started yet, one summary row `123_[1,4,7%2]`.
    pub job_id: String,
    /// The job's own numeric ID. An array task has a fresh one, except the
    /// last task, which keeps the array's ID (see the fixtures).
    pub raw_id: String,
    pub state: SlurmState,
    /// `None`, `Dependency`, `Resources`, `Priority`, `NonZeroExitCode`,
    /// `DependencyNeverSatisfied`, `TimeLimit`, `OutOfMemory`...
    pub reason: String,
    pub comment: String,
    /// Empty while pending.
    pub nodes: String,
    /// Start time (`YYYY-MM-DDTHH:MM:SS`, local); for a pending job Slurm's
    /// estimate when it has one; `None` for squeue's `N/A`.
    pub start: Option<String>,
    /// `afterok:18(unfulfilled)`, `afterok:22(failed)`; empty for squeue's
    /// `(null)`.
    pub dependency: String,
    /// As squeue shows it: `1:00`, `UNLIMITED`, or `365-00:00:00` for some
    /// jobs submitted without a limit (probably those the backfill scheduler
    /// started).
    pub time_limit: String,
}

impl SqueueRow {
    /// The summary row of an array with tasks still pending: `123_[1,4,7%2]`.
    /// It stands for several tasks, not one job.
    pub fn is_array_summary(&self) -> bool {
        self.job_id.ends_with(']') && self.job_id.contains("_[")
    }
}

/// Reads `squeue --noheader --format=<SQUEUE_FORMAT>` stdout. Blank lines are
/// skipped. The comment is the only free-text field; a `|` inside it is kept
/// (the fields around it have fixed places).
pub fn parse_squeue(stdout: &str) -> Result<Vec<SqueueRow>, ParseError> {
    let mut rows = Vec::new();
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        if fields.len() < SQUEUE_FIELDS {
            return Err(ParseError::FieldCount {
                command: "squeue",
                expected: SQUEUE_FIELDS,
                found: fields.len(),
                line: line.to_string(),
            });
        }
        // fields 0..4 and the last 4 are fixed; the comment is what is between
        let n = fields.len();
        let comment = fields[4..n - 4].join("|");
        let (job_id, raw_id) = (fields[0].trim(), fields[1].trim());
        if job_id.is_empty() || raw_id.is_empty() || !raw_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Field {
                command: "squeue",
                field: "job ID",
                value: format!("{job_id}|{raw_id}"),
                line: line.to_string(),
            });
        }
        let start = match fields[n - 3].trim() {
            "" | "N/A" | "Unknown" | "None" => None,
            s => Some(s.to_string()),
        };
        let dependency = match fields[n - 2].trim() {
            "(null)" => String::new(),
            d => d.to_string(),
        };
        rows.push(SqueueRow {
            job_id: job_id.to_string(),
            raw_id: raw_id.to_string(),
            state: SlurmState::parse(fields[2]),
            reason: fields[3].trim().to_string(),
            comment,
            nodes: fields[n - 4].trim().to_string(),
            start,
            dependency,
            time_limit: fields[n - 1].trim().to_string(),
        });
    }
    Ok(rows)
}

/// One job from `sacct`, its step rows folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SacctJob {
    /// JobID of the job row: `994`, or `1009_7` for an array task.
    pub job_id: String,
    pub raw_id: String,
    pub job_name: String,
    pub state: SlurmState,
    /// The job row's exit code (the batch script's).
    pub exit_code: ExitCode,
    /// `None` for sacct's `None assigned` (never started).
    pub node: Option<String>,
    pub submit: Option<NaiveDateTime>,
    pub start: Option<NaiveDateTime>,
    pub end: Option<NaiveDateTime>,
    pub elapsed_s: Option<u64>,
    /// Largest MaxRSS over all step rows, in MiB rounded up (so any usage
    /// shows as at least 1). `None` when no row reported one (a running job
    /// before its first sample, a job that never started).
    pub max_rss_mb: Option<u64>,
    /// `None` on placeholder rows (`16?`).
    pub req_mem_mb: Option<u64>,
    /// `None` for `UNLIMITED`, `Partition_Limit` (a job that never started)
    /// and placeholder rows. Some jobs submitted without a limit show 525600
    /// minutes (a year) instead of `UNLIMITED`.
    pub time_limit_s: Option<u64>,
    /// Empty until the job has ended: sacct showed no comment for pending and
    /// running jobs here. Look tokens up in squeue first.
    pub comment: String,
    /// The last pending reason; on finished jobs mostly noise, except
    /// `Dependency` on a job cancelled by `--kill-on-invalid-dep`.
    pub reason: String,
    /// sacct's stand-in row, shown for a few seconds around a job's start and
    /// end (JobName `allocation`, ReqMem `16?`, no time limit, empty comment).
    /// Its state can lag (PENDING while the steps already run): do not use
    /// it to decide anything but "the job exists".
    pub placeholder: bool,
}

/// Reads `sacct --noheader --parsable2 --format=<SACCT_FORMAT>` stdout.
///
/// Step rows (`994.batch`, `994.extern`, `994.0`, `1009_7.batch`) are folded
/// into their job: only their MaxRSS is used. A step row whose job row is not
/// in the output is skipped. Jobs come out in the order of their job rows; a
/// job row seen twice (requeued job with `--duplicates`) keeps the last.
pub fn parse_sacct(stdout: &str) -> Result<Vec<SacctJob>, ParseError> {
    let mut jobs: Vec<SacctJob> = Vec::new();
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != SACCT_FIELDS {
            return Err(ParseError::FieldCount {
                command: "sacct",
                expected: SACCT_FIELDS,
                found: f.len(),
                line: line.to_string(),
            });
        }
        let bad = |field: &'static str, value: &str| ParseError::Field {
            command: "sacct",
            field,
            value: value.to_string(),
            line: line.to_string(),
        };
        let job_id_field = f[0].trim();
        if job_id_field.is_empty() {
            return Err(bad("JobID", job_id_field));
        }
        let max_rss = match f[10].trim() {
            "" => None,
            s => Some(parse_size_mb(s, 1).ok_or_else(|| bad("MaxRSS", s))?),
        };

        if let Some((job_id, _step)) = job_id_field.split_once('.') {
            if let Some(job) = jobs.iter_mut().rev().find(|j| j.job_id == job_id) {
                job.max_rss_mb = job.max_rss_mb.max(max_rss);
            }
            continue;
        }

        let state = SlurmState::parse(f[3]);
        let exit_code = ExitCode::parse(f[4]).ok_or_else(|| bad("ExitCode", f[4]))?;
        let node = match f[5].trim() {
            "" | "None assigned" | "(null)" => None,
            s => Some(s.to_string()),
        };
        let time = |field: &'static str, s: &str| -> Result<Option<NaiveDateTime>, ParseError> {
            match s.trim() {
                "" | "Unknown" | "None" | "N/A" => Ok(None),
                t => NaiveDateTime::parse_from_str(t, SACCT_TIME_FORMAT)
                    .map(Some)
                    .map_err(|_| bad(field, t)),
            }
        };
        let elapsed_s = match f[9].trim() {
            "" => None,
            s => Some(s.parse::<u64>().map_err(|_| bad("ElapsedRaw", s))?),
        };
        let req_mem = f[11].trim();
        let job_name = f[2].trim().to_string();
        let placeholder = job_name == "allocation" || req_mem.ends_with('?');
        let req_mem_mb = match req_mem {
            "" => None,
            s if s.ends_with('?') => None,
            // before 21.08 ReqMem ended in `c` (per CPU) or `n` (per node)
            s => Some(
                parse_size_mb(s.trim_end_matches(['c', 'n']), 1 << 20)
                    .ok_or_else(|| bad("ReqMem", s))?,
            ),
        };
        let time_limit_s = match f[12].trim() {
            // TimelimitRaw is in minutes
            s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Some(
                s.parse::<u64>()
                    .map_err(|_| bad("TimelimitRaw", s))?
                    .saturating_mul(60),
            ),
            _ => None,
        };
        let job = SacctJob {
            job_id: job_id_field.to_string(),
            raw_id: f[1].trim().to_string(),
            job_name,
            state,
            exit_code,
            node,
            submit: time("Submit", f[6])?,
            start: time("Start", f[7])?,
            end: time("End", f[8])?,
            elapsed_s,
            max_rss_mb: max_rss,
            req_mem_mb,
            time_limit_s,
            comment: f[13].to_string(),
            reason: f[14].trim().to_string(),
            placeholder,
        };
        match jobs.iter().position(|j| j.job_id == job.job_id) {
            Some(i) => jobs[i] = job,
            None => jobs.push(job),
        }
    }
    Ok(jobs)
}

/// A sacct size (`1076K`, `86720K`, `100M`, `1.50G`, bare `0`) in MiB,
/// rounded up. `bare_unit` is the unit of a number without suffix: bytes for
/// MaxRSS, MiB for ReqMem.
fn parse_size_mb(s: &str, bare_unit: u64) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let unit: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                _ => return None,
            };
            (&s[..i], unit)
        }
        _ => (s, bare_unit),
    };
    let value: f64 = num.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let bytes = value * unit as f64;
    Some((bytes / (1u64 << 20) as f64).ceil() as u64)
}

/// The command failed for a reason that may go away by itself: the controller
/// or slurmdbd is down, slow or rate-limiting. Retry with backoff, then leave
/// it for the next sync.
pub fn is_transient_error(stderr: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        // controller down or restarting (sbatch, squeue, scancel)
        "unable to contact slurm controller",
        "slurm backup controller in standby mode",
        "socket timed out",
        "connection timed out",
        "connection refused",
        "connection reset by peer",
        "communication connection failure",
        "zero bytes were transmitted or received",
        // sbatch: "Slurm temporarily unable to accept job, sleeping and retrying"
        "temporarily unable",
        "resource temporarily unavailable",
        // per-user RPC rate limit
        "rate limit exceeded",
        // sacct with slurmdbd down
        "problem talking to the database",
    ];
    let lower = stderr.to_ascii_lowercase();
    TRANSIENT.iter().any(|t| lower.contains(t))
}

/// A transient sbatch error after which the job was certainly not queued
/// (the controller was never reached, or said it took nothing), so sbatch
/// may be called again at once. Any other transient error (a timeout, a
/// reset connection, a tool killed at its deadline) may come after the job
/// was queued: retrying could queue it twice, so the run is left
/// `submitting` for the next sync to adopt by its token.
pub fn is_safe_to_resubmit(stderr: &str) -> bool {
    const NOT_QUEUED: &[&str] = &[
        "unable to contact slurm controller (connect failure)",
        "connection refused",
        "slurm backup controller in standby mode",
        "temporarily unable to accept job",
        "rate limit exceeded",
    ];
    let lower = stderr.to_ascii_lowercase();
    NOT_QUEUED.iter().any(|t| lower.contains(t))
}

/// sbatch was refused because of a limit on how many jobs may be queued:
/// submit again later, the request itself is fine.
///
/// Slurm prints the limit's name on its own line before the generic
/// "Job violates accounting/QOS policy (job submit limit, user's size and/or
/// time limits)". That generic line also covers size and time limits, which
/// waiting does not cure: when a named limit is present it decides (only
/// `*SubmitJob*` limits count); the generic line alone counts as a submit
/// limit.
pub fn is_submit_limit(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("maxjobcount limit reached") {
        return true;
    }
    let mut named = stderr
        .lines()
        .filter_map(|l| {
            let word = l.trim().rsplit(": ").next()?.trim();
            let is_limit_name = word.ends_with("Limit")
                && !word.contains(char::is_whitespace)
                && (word.starts_with("QOS") || word.starts_with("Assoc"));
            is_limit_name.then_some(word)
        })
        .peekable();
    if named.peek().is_some() {
        return named.any(|w| w.contains("SubmitJob"));
    }
    lower.contains("job violates accounting/qos policy")
}

#[cfg(test)]
mod tests {

    #[test]
    fn sbatch_is_called_again_only_when_nothing_can_have_been_queued() {
        let down = include_str!("../../../tests/fixtures/slurm/sbatch_controller_down.stderr");
        assert!(
            is_transient_error(down) && is_safe_to_resubmit(down),
            "{down}"
        );
        for maybe_queued in [
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
            "sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received",
            "`sbatch` did not answer within 2m: killed",
        ] {
            assert!(!is_safe_to_resubmit(maybe_queued), "{maybe_queued}");
        }
    }
    use super::*;

    const SACCT_MIXED: &str = include_str!("../../../tests/fixtures/slurm/sacct_mixed.txt");
    const SACCT_LIVE: &str = include_str!("../../../tests/fixtures/slurm/sacct_live.txt");
    const SACCT_PLACEHOLDER_START: &str =
        include_str!("../../../tests/fixtures/slurm/sacct_placeholder_start.txt");
    const SACCT_PLACEHOLDER_END: &str =
        include_str!("../../../tests/fixtures/slurm/sacct_placeholder_end.txt");
    const SACCT_AFTER_DBD_RESTART: &str =
        include_str!("../../../tests/fixtures/slurm/sacct_after_dbd_restart.txt");
    const SACCT_OOM_NO_CGROUP: &str =
        include_str!("../../../tests/fixtures/slurm/sacct_oom_no_cgroup.txt");
    const SQUEUE_MIXED: &str = include_str!("../../../tests/fixtures/slurm/squeue_mixed.txt");
    const SQUEUE_AFTER_TIMEOUT: &str =
        include_str!("../../../tests/fixtures/slurm/squeue_after_timeout.txt");
    const SBATCH_PARSABLE: &str = include_str!("../../../tests/fixtures/slurm/sbatch_parsable.txt");
    const SBATCH_PARSABLE_MULTICLUSTER: &str =
        include_str!("../../../tests/fixtures/slurm/sbatch_parsable_multicluster.txt");
    const SBATCH_CONTROLLER_DOWN: &str =
        include_str!("../../../tests/fixtures/slurm/sbatch_controller_down.stderr");
    const SQUEUE_CONTROLLER_DOWN: &str =
        include_str!("../../../tests/fixtures/slurm/squeue_controller_down.stderr");
    const SACCT_DBD_DOWN: &str =
        include_str!("../../../tests/fixtures/slurm/sacct_dbd_down.stderr");
    const SQUEUE_FORGOTTEN_ID: &str =
        include_str!("../../../tests/fixtures/slurm/squeue_forgotten_id.stderr");
    const SBATCH_NODE_CONFIG: &str =
        include_str!("../../../tests/fixtures/slurm/sbatch_node_config.stderr");
    const SBATCH_BAD_DEPENDENCY: &str =
        include_str!("../../../tests/fixtures/slurm/sbatch_bad_dependency.stderr");

    fn job<'a>(jobs: &'a [SacctJob], id: &str) -> &'a SacctJob {
        jobs.iter()
            .find(|j| j.job_id == id)
            .unwrap_or_else(|| panic!("no job {id} in {jobs:#?}"))
    }

    fn row<'a>(rows: &'a [SqueueRow], id: &str) -> &'a SqueueRow {
        rows.iter()
            .find(|r| r.job_id == id)
            .unwrap_or_else(|| panic!("no row {id} in {rows:#?}"))
    }

    fn at(s: &str) -> Option<NaiveDateTime> {
        Some(NaiveDateTime::parse_from_str(s, SACCT_TIME_FORMAT).unwrap())
    }

    // ---- states and exit codes

    #[test]
    fn state_words_round_trip() {
        for word in [
            "PENDING",
            "RUNNING",
            "COMPLETING",
            "CONFIGURING",
            "REQUEUED",
            "SUSPENDED",
            "COMPLETED",
            "FAILED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "CANCELLED",
            "NODE_FAIL",
            "BOOT_FAIL",
            "PREEMPTED",
            "DEADLINE",
        ] {
            let state = SlurmState::parse(word);
            assert!(!matches!(state, SlurmState::Unknown(_)), "{word}");
            assert_eq!(state.as_str(), word);
            assert_eq!(state.to_string(), word);
        }
    }

    #[test]
    fn cancelled_by_uid_and_truncated() {
        assert_eq!(
            SlurmState::parse("CANCELLED by 0"),
            SlurmState::Cancelled {
                by: Some("0".into())
            }
        );
        assert_eq!(
            SlurmState::parse("CANCELLED by 0").to_string(),
            "CANCELLED by 0"
        );
        assert_eq!(
            SlurmState::parse("CANCELLED+"),
            SlurmState::Cancelled { by: None }
        );
        assert_eq!(
            SlurmState::parse("CANCELLED"),
            SlurmState::Cancelled { by: None }
        );
        assert!(SlurmState::parse("CANCELLED by 0").is_finished());
    }

    #[test]
    fn unexpected_state_is_unknown_and_not_finished() {
        for word in [
            "REQUEUE_HOLD",
            "SPECIAL_EXIT",
            "OUT_OF_ME+",
            "",
            "CANCELLEDX",
            "completed",
        ] {
            let state = SlurmState::parse(word);
            assert_eq!(state, SlurmState::Unknown(word.to_string()));
            assert!(!state.is_finished());
            assert_eq!(state.as_str(), word);
        }
    }

    #[test]
    fn finished_states() {
        assert!(!SlurmState::Pending.is_finished());
        assert!(!SlurmState::Running.is_finished());
        assert!(!SlurmState::Completing.is_finished());
        assert!(!SlurmState::Requeued.is_finished());
        assert!(SlurmState::Completed.is_finished());
        assert!(SlurmState::Timeout.is_finished());
        assert!(SlurmState::OutOfMemory.is_finished());
        assert!(SlurmState::NodeFail.is_finished());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            ExitCode::parse("3:0"),
            Some(ExitCode { code: 3, signal: 0 })
        );
        assert_eq!(
            ExitCode::parse("0:125"),
            Some(ExitCode {
                code: 0,
                signal: 125
            })
        );
        assert!(ExitCode::parse("0:0").unwrap().is_success());
        assert!(!ExitCode::parse("0:15").unwrap().is_success());
        assert_eq!(ExitCode::parse("3"), None);
        assert_eq!(ExitCode::parse("a:b"), None);
        assert_eq!(ExitCode::parse("").map(|e| e.to_string()), None);
        assert_eq!(ExitCode { code: 3, signal: 0 }.to_string(), "3:0");
    }

    // ---- sbatch

    #[test]
    fn sbatch_bare_id_from_real_capture() {
        assert_eq!(
            parse_sbatch_parsable(SBATCH_PARSABLE).unwrap(),
            SubmittedJob {
                job_id: "19".into(),
                cluster: None
            }
        );
    }

    #[test]
    fn sbatch_multi_cluster_form() {
        assert_eq!(
            parse_sbatch_parsable(SBATCH_PARSABLE_MULTICLUSTER).unwrap(),
            SubmittedJob {
                job_id: "19".into(),
                cluster: Some("nfslurm-test".into())
            }
        );
        assert_eq!(parse_sbatch_parsable("993\n").unwrap().job_id, "993");
    }

    #[test]
    fn sbatch_garbage_is_rejected() {
        for out in [
            "",
            "\n",
            "Submitted batch job 993\n",
            "abc",
            "993;",
            "993;a b",
            "993\n994\n",
            ";cluster",
            "-1",
        ] {
            let err = parse_sbatch_parsable(out).unwrap_err();
            assert!(matches!(err, ParseError::Sbatch { .. }), "{out:?}");
        }
    }

    // ---- squeue

    #[test]
    fn squeue_mixed_states() {
        let rows = parse_squeue(SQUEUE_MIXED).unwrap();
        assert_eq!(rows.len(), 15);
        assert_eq!(row(&rows, "18").state, SlurmState::Running);
        assert_eq!(row(&rows, "18").time_limit, "1:00");
        assert_eq!(row(&rows, "18").comment, "nfslurm-test-token-1");
        assert_eq!(row(&rows, "18").nodes, "vm");
        assert_eq!(
            row(&rows, "18").start.as_deref(),
            Some("2026-11-27T04:58:31")
        );
        assert_eq!(row(&rows, "19").state, SlurmState::Completed);
        assert_eq!(row(&rows, "22").state, SlurmState::Failed);
        assert_eq!(row(&rows, "22").reason, "NonZeroExitCode");
        assert_eq!(row(&rows, "24").state, SlurmState::OutOfMemory);
        assert_eq!(row(&rows, "24").reason, "OutOfMemory");
        // squeue never says "by <uid>"
        assert_eq!(row(&rows, "26").state, SlurmState::Cancelled { by: None });
        // submitted without a limit, shown as a year
        assert_eq!(row(&rows, "30").time_limit, "365-00:00:00");
    }

    #[test]
    fn squeue_pending_with_dependency() {
        let rows = parse_squeue(SQUEUE_MIXED).unwrap();
        let p = row(&rows, "20");
        assert_eq!(p.state, SlurmState::Pending);
        assert_eq!(p.reason, "Dependency");
        assert_eq!(p.dependency, "afterok:18(unfulfilled)");
        assert_eq!(p.start, None);
        assert_eq!(p.nodes, "");
        assert_eq!(row(&rows, "19").dependency, "");
        // pending for resources: squeue shows an estimated start
        let q = row(&rows, "31");
        assert_eq!(
            (q.state.clone(), q.reason.as_str()),
            (SlurmState::Pending, "Resources")
        );
        assert!(q.start.is_some());
    }

    #[test]
    fn squeue_dependency_cancelled_child() {
        let rows = parse_squeue(SQUEUE_MIXED).unwrap();
        let c = row(&rows, "23");
        assert_eq!(c.state, SlurmState::Cancelled { by: None });
        assert_eq!(c.reason, "DependencyNeverSatisfied");
        assert_eq!(c.dependency, "afterok:22(failed)");
        assert_eq!(c.comment, "nfslurm-test-token-5");
    }

    #[test]
    fn squeue_array_tasks_and_pending_summary() {
        let rows = parse_squeue(SQUEUE_MIXED).unwrap();
        for (id, raw) in [("27_1", "28"), ("27_4", "29"), ("27_7", "27")] {
            let r = row(&rows, id);
            assert_eq!(r.raw_id, raw);
            assert_eq!(r.state, SlurmState::Completed);
            assert_eq!(r.comment, "nfslurm-test-token-8");
            assert!(!r.is_array_summary());
        }
        let summary = row(&rows, "32_[1,4,7%2]");
        assert!(summary.is_array_summary());
        assert_eq!(summary.raw_id, "32");
        assert_eq!(summary.state, SlurmState::Pending);
    }

    #[test]
    fn squeue_after_timeout() {
        let rows = parse_squeue(SQUEUE_AFTER_TIMEOUT).unwrap();
        assert_eq!(row(&rows, "18").state, SlurmState::Timeout);
        assert_eq!(row(&rows, "18").reason, "TimeLimit");
        let p = row(&rows, "20");
        assert_eq!(p.reason, "DependencyNeverSatisfied");
        assert_eq!(p.dependency, "afterok:18(failed)");
        // finished jobs were forgotten by then
        assert!(rows.iter().all(|r| r.job_id != "22"));
    }

    #[test]
    fn squeue_comment_with_pipe_and_bad_lines() {
        let rows =
            parse_squeue("5|5|RUNNING|None|a|b|vm|2026-11-27T04:58:31|(null)|1:00\n\n").unwrap();
        assert_eq!(rows[0].comment, "a|b");
        assert_eq!(rows[0].nodes, "vm");
        assert_eq!(rows[0].time_limit, "1:00");
        assert!(parse_squeue("").unwrap().is_empty());
        let err = parse_squeue("5|5|RUNNING\n").unwrap_err();
        assert_eq!(
            err,
            ParseError::FieldCount {
                command: "squeue",
                expected: 9,
                found: 3,
                line: "5|5|RUNNING".into()
            }
        );
        assert!(matches!(
            parse_squeue("JOBID|x|RUNNING|None|t|vm|N/A|(null)|1:00").unwrap_err(),
            ParseError::Field {
                field: "job ID",
                ..
            }
        ));
    }

    // ---- sacct

    #[test]
    fn sacct_mixed_folds_steps() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "18", "19", "20", "21", "22", "23", "24", "25", "26", "27_1", "27_4", "27_7", "30",
                "31", "32_1", "32_4", "32_7"
            ]
        );
        assert!(jobs.iter().all(|j| !j.placeholder));
    }

    #[test]
    fn sacct_completed() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        let ok = job(&jobs, "21");
        assert_eq!(ok.state, SlurmState::Completed);
        assert_eq!(ok.exit_code, ExitCode { code: 0, signal: 0 });
        assert_eq!(ok.job_name, "nf-ok");
        assert_eq!(ok.node.as_deref(), Some("vm"));
        assert_eq!(ok.submit, at("2026-11-27T04:58:31"));
        assert_eq!(ok.start, at("2026-11-27T04:58:31"));
        assert_eq!(ok.end, at("2026-11-27T04:58:32"));
        assert_eq!(ok.elapsed_s, Some(1));
        // max(1076K, 596K) rounded up to MiB
        assert_eq!(ok.max_rss_mb, Some(2));
        assert_eq!(ok.req_mem_mb, Some(256));
        assert_eq!(ok.time_limit_s, Some(525_600 * 60));
        assert_eq!(ok.comment, "nfslurm-test-token-3");
        assert_eq!(ok.reason, "None");
    }

    #[test]
    fn sacct_failed_exit_3() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        let failed = job(&jobs, "22");
        assert_eq!(failed.state, SlurmState::Failed);
        assert_eq!(failed.exit_code, ExitCode { code: 3, signal: 0 });
        assert_eq!(failed.max_rss_mb, Some(4)); // 3220K
        assert_eq!(failed.time_limit_s, None); // UNLIMITED
    }

    #[test]
    fn sacct_timeout() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        let t = job(&jobs, "18");
        assert_eq!(t.state, SlurmState::Timeout);
        assert_eq!(t.exit_code, ExitCode { code: 0, signal: 0 });
        assert_eq!(t.time_limit_s, Some(60));
        assert_eq!(t.elapsed_s, Some(76));
    }

    #[test]
    fn sacct_out_of_memory() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        for id in ["24", "25"] {
            let oom = job(&jobs, id);
            assert_eq!(oom.state, SlurmState::OutOfMemory, "{id}");
            assert_eq!(
                oom.exit_code,
                ExitCode {
                    code: 0,
                    signal: 125
                }
            );
            assert_eq!(oom.req_mem_mb, Some(100));
            assert!(oom.max_rss_mb.unwrap() > 0);
        }
        // the job that grows slowly is sampled near its limit (86720K);
        // the one that touches 400 MiB at once dies before the first sample
        assert_eq!(job(&jobs, "25").max_rss_mb, Some(85));
        assert_eq!(job(&jobs, "24").max_rss_mb, Some(2));
    }

    #[test]
    fn sacct_memory_overrun_without_cgroups_is_failed_signal_9() {
        // proctrack/linuxproc + OverMemoryKill: no OUT_OF_MEMORY, no extern step
        let jobs = parse_sacct(SACCT_OOM_NO_CGROUP).unwrap();
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(j.state, SlurmState::Failed);
        assert_eq!(j.exit_code, ExitCode { code: 0, signal: 9 });
        assert_eq!(j.max_rss_mb, Some(125)); // 127528K on the batch step
        assert_eq!(j.req_mem_mb, Some(100));
    }

    #[test]
    fn sacct_cancelled_by_root() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        let c = job(&jobs, "26");
        assert_eq!(
            c.state,
            SlurmState::Cancelled {
                by: Some("0".into())
            }
        );
        assert_eq!(c.exit_code, ExitCode { code: 0, signal: 0 });
        // a pending job cancelled by scancel never started
        let p = job(&jobs, "20");
        assert_eq!(
            p.state,
            SlurmState::Cancelled {
                by: Some("0".into())
            }
        );
        assert_eq!(p.start, None);
        assert_eq!(p.node, None);
    }

    #[test]
    fn sacct_dependency_cancelled_child() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        let child = job(&jobs, "23");
        assert_eq!(child.state, SlurmState::Cancelled { by: None });
        assert_eq!(child.reason, "Dependency");
        assert_eq!(child.node, None); // "None assigned"
        assert_eq!(child.start, None); // "None"
        assert_eq!(child.time_limit_s, None); // "Partition_Limit"
        assert_eq!(child.max_rss_mb, None);
        assert_eq!(child.comment, "nfslurm-test-token-5");
    }

    #[test]
    fn sacct_array_tasks() {
        let jobs = parse_sacct(SACCT_MIXED).unwrap();
        for (id, raw) in [("27_1", "28"), ("27_4", "29"), ("27_7", "27")] {
            let t = job(&jobs, id);
            assert_eq!(t.raw_id, raw);
            assert_eq!(t.state, SlurmState::Completed);
            assert_eq!(t.comment, "nfslurm-test-token-8");
            assert_eq!(t.max_rss_mb, Some(2));
        }
        assert_eq!(
            job(&jobs, "32_7").state,
            SlurmState::Cancelled {
                by: Some("0".into())
            }
        );
    }

    #[test]
    fn sacct_live_running_and_pending() {
        let jobs = parse_sacct(SACCT_LIVE).unwrap();
        let r = job(&jobs, "30");
        assert_eq!(r.state, SlurmState::Running);
        assert_eq!(r.end, None); // "Unknown"
        assert_eq!(r.max_rss_mb, None);
        // sacct shows no comment until the job ends
        assert_eq!(r.comment, "");
        let p = job(&jobs, "20");
        assert_eq!(p.state, SlurmState::Pending);
        assert_eq!(p.reason, "Dependency");
        assert_eq!((p.start, p.end, p.node.clone()), (None, None, None));
        let summary = job(&jobs, "32_[1,4,7%2]");
        assert_eq!(summary.state, SlurmState::Pending);
        assert!(jobs.iter().all(|j| !j.placeholder));
    }

    #[test]
    fn sacct_placeholder_rows() {
        let jobs = parse_sacct(SACCT_PLACEHOLDER_START).unwrap();
        assert_eq!(jobs.len(), 2);
        for j in &jobs {
            assert!(j.placeholder, "{}", j.job_id);
            assert_eq!(j.job_name, "allocation");
            assert_eq!(j.req_mem_mb, None); // "16?"
            assert_eq!(j.time_limit_s, None);
            assert_eq!(j.comment, "");
            // the placeholder says PENDING while its steps already run
            assert_eq!(j.state, SlurmState::Pending);
        }
        let jobs = parse_sacct(SACCT_PLACEHOLDER_END).unwrap();
        let done = job(&jobs, "35");
        assert!(done.placeholder);
        assert_eq!(done.state, SlurmState::Completed);
        assert_eq!(done.end, at("2026-11-27T05:00:27"));
        assert_eq!(done.comment, "nfslurm-test-token-ph1-a");
        assert_eq!(done.max_rss_mb, Some(4)); // 3104K
        assert!(job(&jobs, "36").placeholder);
    }

    #[test]
    fn sacct_lagging_row_after_dbd_restart() {
        let jobs = parse_sacct(SACCT_AFTER_DBD_RESTART).unwrap();
        let j = job(&jobs, "38");
        assert_eq!(j.state, SlurmState::Completed);
        assert!(!j.placeholder);
        assert_eq!(j.end, None);
        assert_eq!(j.comment, "");
    }

    #[test]
    fn sacct_bad_lines() {
        assert!(parse_sacct("").unwrap().is_empty());
        let short = "1|1|x|COMPLETED";
        assert_eq!(
            parse_sacct(short).unwrap_err(),
            ParseError::FieldCount {
                command: "sacct",
                expected: 15,
                found: 4,
                line: short.into()
            }
        );
        let bad_time = "1|1|x|COMPLETED|0:0|vm|yesterday|||0||1G|5||None";
        assert!(matches!(
            parse_sacct(bad_time).unwrap_err(),
            ParseError::Field { field: "Submit", ref value, .. } if value == "yesterday"
        ));
        let bad_exit = "1|1|x|COMPLETED|zero|vm||||0||1G|5||None";
        assert!(matches!(
            parse_sacct(bad_exit).unwrap_err(),
            ParseError::Field {
                field: "ExitCode",
                ..
            }
        ));
    }

    #[test]
    fn sacct_orphan_step_is_skipped_and_unknown_state_kept() {
        let out = "7.batch|7.batch|batch|COMPLETED|0:0|vm||||0|10M||||\n\
                   8|8|x|SPECIAL_EXIT|0:0|vm||||0||1Gn|UNLIMITED|t|None\n";
        let jobs = parse_sacct(out).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].state, SlurmState::Unknown("SPECIAL_EXIT".into()));
        assert_eq!(jobs[0].req_mem_mb, Some(1024));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb("0", 1), Some(0));
        assert_eq!(parse_size_mb("1076K", 1), Some(2));
        assert_eq!(parse_size_mb("86720K", 1), Some(85));
        assert_eq!(parse_size_mb("1.50G", 1), Some(1536));
        assert_eq!(parse_size_mb("256M", 1 << 20), Some(256));
        assert_eq!(parse_size_mb("256", 1 << 20), Some(256));
        assert_eq!(parse_size_mb("12X", 1), None);
        assert_eq!(parse_size_mb("K", 1), None);
    }

    // ---- errors

    #[test]
    fn transient_errors_from_real_captures() {
        assert!(is_transient_error(SBATCH_CONTROLLER_DOWN));
        assert!(is_transient_error(SQUEUE_CONTROLLER_DOWN));
        assert!(is_transient_error(SACCT_DBD_DOWN));
        assert!(is_transient_error(
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
        ));
        assert!(is_transient_error(
            "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"
        ));
        assert!(is_transient_error(
            "squeue: error: Rate limit exceeded, please retry momentarily"
        ));
    }

    #[test]
    fn permanent_errors_are_not_transient() {
        for stderr in [
            SQUEUE_FORGOTTEN_ID,
            SBATCH_NODE_CONFIG,
            SBATCH_BAD_DEPENDENCY,
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
        ] {
            assert!(!is_transient_error(stderr), "{stderr}");
            assert!(!is_submit_limit(stderr), "{stderr}");
        }
        assert!(!is_submit_limit(SBATCH_CONTROLLER_DOWN));
    }

    #[test]
    fn submit_limits() {
        let policy = "Batch job submission failed: Job violates accounting/QOS policy \
                      (job submit limit, user's size and/or time limits)";
        assert!(is_submit_limit(&format!(
            "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: {policy}\n"
        )));
        assert!(is_submit_limit(&format!(
            "sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: {policy}\n"
        )));
        assert!(is_submit_limit(&format!("sbatch: error: {policy}\n")));
        assert!(is_submit_limit(
            "sbatch: error: Batch job submission failed: MaxJobCount limit reached"
        ));
        // a size limit: waiting does not help
        assert!(!is_submit_limit(&format!(
            "sbatch: error: QOSMaxCpuPerJobLimit\nsbatch: error: {policy}\n"
        )));
        assert!(!is_transient_error(policy));
    }
}
