//! Executors: Slurm (the default) and local. Both take the same prepared runs
//! (scripts already rendered and written, intents already recorded) and report
//! what happened as [`RunUpdate`]s; the failure policy and the store are theirs
//! to share, not to reimplement.

pub mod local;
pub mod slurm;

use std::path::PathBuf;

use crate::model::UnitKey;
use crate::state::{RunRow, RunUpdate, Store};

/// The reason recorded on runs `nfslurm cancel` stopped, by either executor.
pub const CANCELLED_BY_US: &str = "cancelled by nfslurm cancel";

/// A run ready to hand to an executor: its intent is already in the store.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub run_id: i64,
    pub key: UnitKey,
    pub token: String,
    pub script_path: PathBuf,
    pub log_path: PathBuf,
    pub cpus: u32,
    pub mem_mb: u64,
    pub time_limit_s: u64,
    pub gpus: u32,
    /// The script's shared `#SBATCH` directives (all but job name, output,
    /// error, comment and array): units share an array only when these agree.
    pub directives: Vec<String>,
    /// A retry of a failed run: always a single job, never an array task.
    pub retry: bool,
    /// Runs it waits for: earlier in this batch, or already in flight.
    pub depends_on: Vec<i64>,
}

/// What a submission achieved.
#[derive(Debug, Default)]
pub struct SubmitOutcome {
    /// Run ID and the job ID the executor gave it.
    pub submitted: Vec<(i64, String)>,
    /// Submissions the scheduler refused (a bad request: a config error),
    /// one per refused call. Their runs are in no other list: the engine
    /// withdraws them, so nothing of them stays behind.
    pub rejected: Vec<Rejected>,
    /// Runs never handed over (an upstream run could not be submitted, or a
    /// submit limit was hit): their intents are withdrawn.
    pub withdrawn: Vec<i64>,
    /// Units left for a later sync by `max_submitted` or `max_concurrent`.
    pub deferred: usize,
    /// Set when the cluster could not be reached: the command exits 2.
    pub unreachable: Option<String>,
}

/// One submission the scheduler refused.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The runs it held (run ID, unit).
    pub runs: Vec<(i64, UnitKey)>,
    /// What was refused and why, naming the template line when one is to blame.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The cluster or a tool could not be reached (exit code 2).
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{0}")]
    Other(String),
}

/// The executors' only way to write run state. The engine implements it and
/// applies the failure policy to the runs that ended; executors record as
/// they go (a crash loses at most the answers of the call in progress, and
/// those runs are adopted by token at the next sync).
pub trait Journal {
    /// The state, to read (job IDs of runs already in flight).
    fn store(&self) -> &Store;
    /// Records what happened to runs: submitted (job IDs), or ended.
    fn record(&mut self, updates: &[RunUpdate]) -> Result<(), crate::state::StateError>;
    /// Records runs' tokens before the sbatch call that carries them.
    fn set_tokens(&mut self, tokens: &[(i64, String)]) -> Result<(), crate::state::StateError>;
}

pub trait Executor {
    fn kind(&self) -> crate::config::ExecutorKind;

    /// Looks at every open run of this executor and says what changed.
    fn reconcile(
        &mut self,
        store: &Store,
        open: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError>;

    /// Hands the runs over, in order (each after the runs it depends on).
    /// Records job IDs in the journal as it goes.
    fn submit(
        &mut self,
        journal: &mut dyn Journal,
        batch: &[Prepared],
        now: i64,
    ) -> Result<SubmitOutcome, ExecError>;

    /// Stops the given runs; returns the updates that mark them cancelled.
    fn cancel(
        &mut self,
        store: &Store,
        runs: &[RunRow],
        now: i64,
    ) -> Result<Vec<RunUpdate>, ExecError>;
}
