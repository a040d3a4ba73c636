//! Executors: Slurm (default) and local.

pub mod slurm;
