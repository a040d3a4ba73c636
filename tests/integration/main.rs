//! One integration-test binary: the CLI end to end on the local executor, and
//! (in `slurm`) against the real Slurm test cluster that
//! `scripts/slurm-test-cluster.sh` starts.

mod alerts;
mod arrays;
mod browser;
mod chaos;
mod clean;
mod common;
mod dicom;
mod docs;
mod failures;
mod hardening;
mod local;
mod multicluster;
mod newcomer;
mod ops;
mod provenance;
mod reference;
mod schedules;
mod serve;
mod slurm;
mod templates;
mod views;
mod worker;
