//! One integration-test binary: the CLI end to end on the local executor, and
//! (in `slurm`) against the real Slurm test cluster that
//! `scripts/slurm-test-cluster.sh` starts.

mod arrays;
mod chaos;
mod common;
mod dicom;
mod failures;
mod local;
mod ops;
mod provenance;
mod slurm;
mod templates;
