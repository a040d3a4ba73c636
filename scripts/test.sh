#!/usr/bin/env bash
# Every test, including the real-Slurm ones: installs and starts the local
# Slurm test cluster (root, Debian), then runs cargo test, then builds and
# checks the portable binary (old glibc, size, the demo with it).
set -euo pipefail
cd "$(dirname "$0")/.."
# Two clusters: the multi-cluster tests use the second one.
scripts/slurm-test-cluster.sh start --clusters 2
scripts/test-deps.sh
cargo build --locked --quiet
# The real-Slurm tests are #[ignore]d for a plain `cargo test` (which then
# says it did not run them); here they run, and fail if the cluster is not up.
# The browser tests' screenshots, for a person to look at.
shots="${CARGO_TARGET_DIR:-target}/screenshots"
rm -rf "$shots"
cargo test --locked "$@" -- --include-ignored
if [ -d "$shots" ]; then
    echo "screenshots of the dashboard and the report (headless Chromium):"
    for shot in "$shots"/*.png; do
        echo "  $(realpath "$shot")"
    done
fi
scripts/check-portable.sh
