//! nfslurm: keeps a neuroimaging study processed on a Slurm cluster, unattended.

pub mod config;
pub mod executor;
pub mod model;
pub mod render;
pub mod study;
