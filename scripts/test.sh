#!/usr/bin/env bash
# Every test, including the real-Slurm ones: installs and starts the local
# Slurm test cluster (root, Debian), then runs cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/slurm-test-cluster.sh start
scripts/test-deps.sh
export NFSLURM_SLURM_TESTS=1
cargo build --locked --quiet
cargo test --locked "$@"
