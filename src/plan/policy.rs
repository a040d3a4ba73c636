//! The failure policy: what a unit's bookkeeping becomes when one of
//! its runs ends. Pure: the caller passes the time and the random jitter.

use crate::config::{Pipeline, RetryPolicy};
use crate::model::{AuditFrom, RunState, UnitAudit, UnitState};
use crate::state::{RunRow, UnitRow, UnitUpdate};

/// The backoff delay before attempt `attempts + 1`, in seconds:
/// `min(initial × factor^(attempts-1), max)`, then ± `jitter` (a value in -1..=1
/// scaled by the policy's jitter fraction).
pub fn backoff_delay(policy: &RetryPolicy, attempts: u32, jitter: f64) -> u64 {
    let exp = attempts.saturating_sub(1).min(64) as i32;
    let base =
        (policy.initial_delay_s as f64 * policy.factor.powi(exp)).min(policy.max_delay_s as f64);
    let spread = base * policy.jitter * jitter.clamp(-1.0, 1.0);
    (base + spread).max(0.0).round() as u64
}

/// Memory for the next attempt after an OOM: the request times `mem_factor`,
/// at least 20% above the MaxRSS observed, capped at `max_mem`.
pub fn escalate_memory(policy: &RetryPolicy, requested_mb: u64, max_rss_mb: Option<i64>) -> u64 {
    let grown = (requested_mb as f64 * policy.mem_factor).ceil() as u64;
    let observed = max_rss_mb
        .map(|m| (m.max(0) as f64 * 1.2).ceil() as u64)
        .unwrap_or(0);
    grown.max(observed).min(policy.max_mem_mb.max(requested_mb))
}

/// Time for the next attempt after a TIMEOUT, capped at `max_time`.
pub fn escalate_time(policy: &RetryPolicy, requested_s: u64) -> u64 {
    let grown = (requested_s as f64 * policy.time_factor).ceil() as u64;
    // Slurm counts in minutes: round up so the request really grows.
    let grown = grown.div_ceil(60) * 60;
    grown.min(policy.max_time_s.max(requested_s))
}

/// The unit update for a run that reached the terminal state `run.state`.
pub fn on_run_end(
    policy: &RetryPolicy,
    pipeline: &Pipeline,
    unit: &UnitRow,
    run: &RunRow,
    now: i64,
    jitter: f64,
) -> UnitUpdate {
    let mut update = UnitUpdate {
        unit_id: unit.id,
        run_id: Some(run.id),
        ..Default::default()
    };
    let end = run.ended_at.unwrap_or(now);
    match run.state {
        RunState::Succeeded => {
            update.success_run_id = Some(run.id);
            update.attempts = Some(0);
            update.infra_attempts = Some(0);
            update.next_attempt_at = Some(None);
        }
        RunState::Failed if run.exit_code.is_some_and(crate::model::cannot_run) => {
            // A typo in the command or a missing image: no retry can help.
            let attempts = unit.attempts + 1;
            update.attempts = Some(attempts);
            update.next_attempt_at = Some(None);
            update.audit = Some(UnitAudit::new(
                Some(AuditFrom::Run(run.state)),
                UnitState::Failed,
                format!(
                    "{}: not retried, fix the command or the image, then `nfslurm retry`",
                    crate::model::exit_reason(run.exit_code.unwrap_or(127))
                ),
            ));
        }
        RunState::Failed | RunState::Timeout | RunState::Oom => {
            let attempts = unit.attempts + 1;
            update.attempts = Some(attempts);
            let max = pipeline.max_attempts;
            if attempts < max {
                let delay = backoff_delay(policy, attempts, jitter);
                update.next_attempt_at = Some(Some(end + delay as i64));
            } else {
                update.next_attempt_at = Some(None);
            }
            let mut change = String::new();
            if run.state == RunState::Oom {
                let mem = escalate_memory(policy, run.mem_mb, run.max_rss_mb);
                if mem != run.mem_mb {
                    update.mem_mb = Some(Some(mem));
                    change = format!("; memory {} MB -> {} MB", run.mem_mb, mem);
                }
            }
            if run.state == RunState::Timeout {
                let time = escalate_time(policy, run.time_limit_s);
                if time != run.time_limit_s {
                    update.time_s = Some(Some(time));
                    change = format!("; time {} s -> {} s", run.time_limit_s, time);
                }
            }
            let new = if attempts < max {
                UnitState::Retrying
            } else {
                UnitState::Failed
            };
            update.audit = Some(UnitAudit::new(
                Some(AuditFrom::Run(run.state)),
                new,
                format!(
                    "{} (failure {attempts} of {max} allowed){change}",
                    run.state
                ),
            ));
        }
        RunState::InfraFailed | RunState::Lost => {
            let infra = unit.infra_attempts + 1;
            update.infra_attempts = Some(infra);
            update.next_attempt_at = Some(None);
            let new = if infra > policy.infra_max {
                UnitState::Failed
            } else {
                UnitState::Retrying
            };
            update.audit = Some(UnitAudit::new(
                Some(AuditFrom::Run(run.state)),
                new,
                format!(
                    "infrastructure failure {infra} of {} allowed retries, does not count an attempt",
                    policy.infra_max
                ),
            ));
        }
        RunState::Cancelled => {
            // Cancelled by a user (scancel or `nfslurm cancel`): no retry until `retry`.
            update.cancelled = Some(true);
            update.audit = Some(UnitAudit::new(
                Some(AuditFrom::Run(RunState::Cancelled)),
                UnitState::Cancelled,
                "cancelled by a user: `nfslurm retry` resumes it",
            ));
        }
        _ => {}
    }
    update
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_delay_s: 300,
            max_delay_s: 3600,
            factor: 2.0,
            jitter: 0.1,
            mem_factor: 1.5,
            max_mem_mb: 16384,
            time_factor: 1.5,
            max_time_s: 7200,
            infra_max: 5,
            lost_after_s: 600,
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = policy();
        assert_eq!(backoff_delay(&p, 1, 0.0), 300);
        assert_eq!(backoff_delay(&p, 2, 0.0), 600);
        assert_eq!(backoff_delay(&p, 3, 0.0), 1200);
        assert_eq!(backoff_delay(&p, 10, 0.0), 3600);
        assert_eq!(backoff_delay(&p, 1, 1.0), 330);
        assert_eq!(backoff_delay(&p, 1, -1.0), 270);
    }

    #[test]
    fn memory_follows_factor_maxrss_and_cap() {
        let p = policy();
        assert_eq!(escalate_memory(&p, 1000, None), 1500);
        assert_eq!(escalate_memory(&p, 1000, Some(2000)), 2400);
        assert_eq!(escalate_memory(&p, 12000, None), 16384);
        assert_eq!(escalate_time(&p, 3600), 5400);
        assert_eq!(escalate_time(&p, 6000), 7200);
        assert_eq!(escalate_time(&p, 60), 120);
    }
}
