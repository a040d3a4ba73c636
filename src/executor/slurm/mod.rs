//! The Slurm executor: `run_*` functions do I/O, `parse_*` functions are pure.

pub mod arrays;
pub mod decide;
pub mod directives;
mod executor;
pub mod parse;

pub use executor::{CallCounts, SlurmExecutor, process_calls, run_state_of};
