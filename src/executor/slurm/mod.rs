//! The Slurm executor: `run_*` functions do I/O, `parse_*` functions are pure.

mod executor;
pub mod parse;

pub use executor::{CallCounts, SACCT_FORMAT, SQUEUE_FORMAT, SlurmExecutor, run_state_of};
