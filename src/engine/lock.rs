//! The plan lock: only its holder plans, submits or changes unit state, so
//! nothing is submitted twice. Held for one use case, never while idle.

use std::time::Duration;

use crate::config::Config;
use crate::error::Failure;
use crate::state::{self, LockGuard};

/// How long a command that must act waits for the lock.
pub const COMMAND_WAIT: Duration = Duration::from_secs(60);

/// Takes the plan lock if no other command holds it, at once.
pub fn try_acquire(config: &Config) -> anyhow::Result<Option<LockGuard>> {
    plan_lock_within(config, Duration::ZERO)
}

/// Takes the plan lock, waiting up to a minute for it (a user error then).
pub fn acquire(config: &Config) -> anyhow::Result<LockGuard> {
    plan_lock_within(config, COMMAND_WAIT)?.ok_or_else(|| lock_busy(config))
}

/// Takes the plan lock within `timeout`; `None` when it stayed taken.
pub fn plan_lock_within(config: &Config, timeout: Duration) -> anyhow::Result<Option<LockGuard>> {
    Ok(state::lock_with_timeout(
        &config.paths.state_dir,
        "plan.lock",
        timeout,
    )?)
}

/// The error of a command that could not get the lock in time.
pub fn lock_busy(config: &Config) -> anyhow::Error {
    Failure::user(
        format!(
            "another nfslurm command holds `{}`",
            config.paths.state_dir.join("plan.lock").display()
        ),
        Some(
            "wait for it to finish (a sync can take a while on a busy controller), then try again",
        ),
    )
}
