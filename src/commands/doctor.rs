//! `nfslurm doctor`: checks everything a study needs, one line each.

use super::{Failure, Settings};

pub fn run(_settings: &Settings) -> anyhow::Result<i32> {
    Err(Failure::user("`nfslurm doctor` is being written", None))
}
