//! One module per subcommand. Each takes resolved [`Settings`], never clap types.

pub mod clean;
pub mod complete;
pub mod cron;
pub mod demo;
pub mod discover;
pub mod doctor;
pub mod history;
pub mod init;
pub mod inspect;
pub mod manage;
pub mod provenance_view;
pub mod report;
pub mod serve;
pub mod session_view;
pub mod site;
pub mod status;
pub mod submit;
pub mod sync_dry;
pub mod worker;

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{self, Config, ExecutorKind};
use crate::state::{Snapshot, Store};

/// Global settings, resolved from flags and environment before any command runs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub config: Option<PathBuf>,
    pub executor: Option<ExecutorKind>,
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// `--reset-state`: set a refused state aside before the command runs.
    pub reset_state: bool,
}

pub use crate::engine::selection::{SelectionSpec, read_participant_file, resolve_selection};
pub use crate::engine::{executor_of, make_executor, open_store};
pub use crate::error::{Failure, error_chain};

/// Finds and loads the config; errors are user errors (exit 1).
pub fn load_config(settings: &Settings) -> anyhow::Result<Config> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let path = config::find_config(settings.config.as_deref(), &cwd).map_err(config_failure)?;
    let mut config = config::load(&path).map_err(config_failure)?;
    if let Some(kind) = settings.executor {
        config.executor = kind;
    }
    if settings.reset_state {
        reset_state(&config)?;
    }
    Ok(config)
}

/// `--reset-state`: moves a refused state aside and says where.
fn reset_state(config: &Config) -> anyhow::Result<()> {
    let dir = &config.paths.state_dir;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let backup = crate::state::health::reset(dir, &stamp).map_err(|why| {
        Failure::user(
            why,
            Some("without `--reset-state`, nfslurm uses the state as it is"),
        )
    })?;
    eprintln!(
        "moved the refused state to `{}`; starting afresh (every unit runs again)",
        display_path(&backup)
    );
    Ok(())
}

fn config_failure(err: config::ConfigError) -> anyhow::Error {
    let hint = err.hint();
    Failure {
        code: 1,
        message: err.to_string(),
        hint: hint.map(str::to_string),
    }
    .into()
}

/// A snapshot of the state, or an empty one when the study never ran.
pub fn read_snapshot(config: &Config) -> anyhow::Result<(Option<Store>, Snapshot)> {
    match Store::open_existing(&config.paths.state_dir)? {
        Some(store) => {
            let snap = store.snapshot()?;
            Ok((Some(store), snap))
        }
        None => Ok((None, Snapshot::default())),
    }
}

/// A path for people: relative to the working directory when inside it,
/// with control characters escaped (folder names come from outside).
pub fn display_path(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let shown = if cwd.parent().is_none() {
        // At `/` every absolute path would lose its leading slash.
        path.display().to_string()
    } else {
        path.strip_prefix(&cwd)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.display().to_string())
    };
    crate::output::escape_controls(&shown).into_owned()
}

/// A path as a JSON string: lossy for a name that is not UTF-8 (serde
/// refuses those, and `--json` output must always be JSON).
pub fn json_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
