//! Dynamic shell completion (`source <(COMPLETE=bash nfslurm)`): unit keys,
//! subjects, job IDs and `run:N` of the study the shell is in, read from its
//! state without writing anything.

use std::ffi::OsStr;

use clap_complete::engine::CompletionCandidate;

use crate::state::complete::{Word, completion_words};

/// The study's state directory, as commands find it: `$NFSLURM_CONFIG`,
/// else `nfslurm.yaml` upward from the working directory. `None` when
/// there is none or it does not load (completion then offers nothing).
fn state_dir() -> Option<std::path::PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    let file = crate::config::find_config(None, &cwd).ok()?;
    Some(crate::config::load(&file).ok()?.paths.state_dir)
}

fn candidates(words: Vec<Word>, current: &OsStr) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    words
        .into_iter()
        .filter(|w| w.value.starts_with(prefix.as_ref()))
        .map(|w| CompletionCandidate::new(w.value).help(Some(w.help.into())))
        .collect()
}

/// For `show`: units, subjects and runs.
pub fn show_targets(current: &OsStr) -> Vec<CompletionCandidate> {
    state_dir()
        .map(|dir| candidates(completion_words(&dir, true, true), current))
        .unwrap_or_default()
}

/// For `logs`: units (their last run) and runs.
pub fn log_targets(current: &OsStr) -> Vec<CompletionCandidate> {
    state_dir()
        .map(|dir| candidates(completion_words(&dir, true, false), current))
        .unwrap_or_default()
}

/// For `cancel` and `retry`: runs.
pub fn runs(current: &OsStr) -> Vec<CompletionCandidate> {
    state_dir()
        .map(|dir| candidates(completion_words(&dir, false, false), current))
        .unwrap_or_default()
}
