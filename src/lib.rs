//! nfslurm: keeps a neuroimaging study processed on a Slurm cluster, unattended.
//!
//! The heart is [`plan`]: a pure function of (config, state snapshot, now)
//! that says what runs and why. [`state`] remembers, [`executor`] acts,
//! [`engine`] ties them together, and [`commands`] are the thin CLI layer.

pub mod alerts;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod executor;
pub mod model;
pub mod notify;
pub mod output;
pub mod plan;
pub mod process;
pub mod provenance;
pub mod render;
pub mod serve;
pub mod state;
pub mod study;
pub mod templating;
pub mod views;
