//! The Slurm executor: `run_*` functions do I/O, `parse_*` functions are pure.
