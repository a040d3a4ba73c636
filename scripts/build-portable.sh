#!/usr/bin/env bash
# Builds the `nfslurm` binary that starts on every login node: linked against
# an old glibc (2.17 by default, RHEL 7 and later) with zig as the C compiler
# and linker, stripped, SQLite and TLS compiled in. Writes
# `target/portable/nfslurm`. See docs/install.md.
#
#   scripts/build-portable.sh
#   NFSLURM_PORTABLE_GLIBC=2.28 scripts/build-portable.sh
#
# Installs `cargo-zigbuild` (crates.io) and `ziglang` (PyPI) when missing.
# Only this machine's Rust target is needed: cargo-zigbuild's
# `x86_64-unknown-linux-gnu.2.17` is that target with zig linking it against
# glibc 2.17's symbol versions.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC="${NFSLURM_PORTABLE_GLIBC:-2.17}"
TARGET="x86_64-unknown-linux-gnu.$GLIBC"
BUILD_DIR=target/portable-build # its own target dir: no lock shared with the debug build
OUT=target/portable/nfslurm
# The versions this build was checked with (docs/install.md)
ZIGBUILD_VERSION=0.24.1
ZIGLANG_VERSION=0.17.1

die() {
  echo "error: $*" >&2
  exit 1
}

[[ "$GLIBC" =~ ^2\.[0-9]+$ ]] || die "\`NFSLURM_PORTABLE_GLIBC\` must look like \`2.17\`, not \`$GLIBC\`"
command -v cargo >/dev/null || die "\`cargo\` is not installed"
[[ -d "$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/lib" ]] ||
  die "the Rust target \`x86_64-unknown-linux-gnu\` is not installed (hint: \`rustup target add x86_64-unknown-linux-gnu\`)"

# zig: cargo-zigbuild finds `python3 -m ziglang` first, then `zig` on PATH
if ! python3 -m ziglang version >/dev/null 2>&1 && ! zig version >/dev/null 2>&1; then
  command -v python3 >/dev/null ||
    die "zig is missing and so is \`python3\` to install it with" \
      "(hint: install \`python3-pip\`, or put \`zig\` on PATH)"
  echo "installing \`ziglang==$ZIGLANG_VERSION\` from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION" ||
    die "\`python3 -m pip install ziglang==$ZIGLANG_VERSION\` failed"
  python3 -m ziglang version >/dev/null || die "\`python3 -m ziglang version\` fails after installing it"
fi

if ! cargo zigbuild --help >/dev/null 2>&1; then
  echo "installing \`cargo-zigbuild $ZIGBUILD_VERSION\` from crates.io" >&2
  cargo install --locked --quiet --version "$ZIGBUILD_VERSION" cargo-zigbuild ||
    die "\`cargo install --locked cargo-zigbuild\` failed"
  cargo zigbuild --help >/dev/null ||
    die "\`cargo zigbuild\` is not found after installing it (hint: is \`~/.cargo/bin\` on PATH?)"
fi

start=$SECONDS
cargo zigbuild --locked --quiet --profile portable --target "$TARGET" --target-dir "$BUILD_DIR" ||
  die "\`cargo zigbuild --target $TARGET\` failed"
built="$BUILD_DIR/x86_64-unknown-linux-gnu/portable/nfslurm"
[[ -x "$built" ]] || die "the build did not produce \`$built\`"
mkdir -p "$(dirname "$OUT")"
cp "$built" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "built \`$OUT\` for glibc $GLIBC ($(stat -c %s "$OUT") bytes, $((SECONDS - start)) s)" >&2
