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

use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::{self, Config, ExecutorKind};

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

impl Settings {
    /// The output layer for this command's mode (`--json`, `-q`, default).
    pub fn printer(&self) -> crate::output::Printer {
        crate::output::Printer::new(self.json, self.quiet)
    }
}

pub use crate::engine::selection::{SelectionSpec, read_participant_file, resolve_selection};
pub use crate::engine::{executor_of, make_executor, open_store, read_snapshot};
pub use crate::error::{Failure, error_chain};
pub use crate::output::{display_path, json_path};

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
