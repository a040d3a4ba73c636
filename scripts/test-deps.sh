#!/usr/bin/env bash
# What the tests need beside Rust: Debian's `dcm2niix` (the real BIDS
# conversion) and pydicom (its test files are the real scanner files, and
# it is the speed anchor of scripts/bench.sh) for the DICOM tests; Debian's
# `chromium` and `chromium-driver` for the dashboard's browser tests. Quiet
# when all are there; fails loudly when one cannot be installed.
set -euo pipefail

if ! command -v dcm2niix >/dev/null 2>&1; then
    echo "test-deps: installing dcm2niix (Debian package)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix; } >/tmp/nfslurm-test-deps-apt.log 2>&1; then
        cat /tmp/nfslurm-test-deps-apt.log >&2
        echo "test-deps: error: cannot install dcm2niix" >&2
        exit 1
    fi
fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "test-deps: installing chromium and chromium-driver (Debian packages)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/tmp/nfslurm-test-deps-apt.log 2>&1; then
        cat /tmp/nfslurm-test-deps-apt.log >&2
        echo "test-deps: error: cannot install chromium and chromium-driver" >&2
        exit 1
    fi
fi

if ! python3 -c 'import pydicom' >/dev/null 2>&1; then
    echo "test-deps: installing pydicom (PyPI)" >&2
    if ! python3 -m pip install --quiet pydicom >/tmp/nfslurm-test-deps-pip.log 2>&1 \
        && ! python3 -m pip install --quiet --break-system-packages pydicom >>/tmp/nfslurm-test-deps-pip.log 2>&1; then
        cat /tmp/nfslurm-test-deps-pip.log >&2
        echo "test-deps: error: cannot install pydicom" >&2
        exit 1
    fi
fi

[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { echo "test-deps: error: /usr/bin/chromium or /usr/bin/chromedriver missing after install" >&2; exit 1; }
command -v dcm2niix >/dev/null || { echo "test-deps: error: dcm2niix not on PATH after install" >&2; exit 1; }
python3 -c 'import pydicom' || { echo "test-deps: error: pydicom not importable after install" >&2; exit 1; }
