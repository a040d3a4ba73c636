//! Against the real Slurm test cluster (see docs/slurm-test-cluster.md).
