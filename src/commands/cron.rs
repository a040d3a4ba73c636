//! `nfslurm cron install|show|remove`: the login-node crontab line for `sync`.

use super::{Failure, Settings};
use crate::cli::CronAction;

pub fn run(_settings: &Settings, _action: CronAction) -> anyhow::Result<i32> {
    Err(Failure::user("`nfslurm cron` is being written", None))
}
