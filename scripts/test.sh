#!/usr/bin/env bash
# Every test, including the real-Slurm ones: installs and starts the local
# Slurm test cluster (root, Debian), then runs cargo test, then builds and
# checks the portable binary (old glibc, size, the demo with it).
set -euo pipefail
cd "$(dirname "$0")/.."
# Two clusters: the multi-cluster tests use the second one.
scripts/slurm-test-cluster.sh start --clusters 2
export NFSLURM_SLURM_TESTS=1
cargo build --locked --quiet
cargo test --locked "$@"
scripts/check-portable.sh
