#!/usr/bin/env bash
# The portable binary's test, run by scripts/test.sh: builds it with
# scripts/build-portable.sh, then fails loudly unless
#   - no dynamic symbol needs a glibc newer than the one targeted (`objdump -T`),
#   - it needs no shared library beyond glibc's own (SQLite and TLS bundled),
#   - it is at most 20 MB,
#   - `nfslurm demo` run with it ends with every valid unit done.
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC="${NFSLURM_PORTABLE_GLIBC:-2.17}"
BIN=target/portable/nfslurm
MAX_BYTES=20000000
# what `nfslurm demo` runs: bids 5 + qsiprep 3 + qsirecon 5 + qsiparc 5 units
DEMO_VALID_UNITS=18

fail() {
  echo "check-portable: FAILED: $*" >&2
  exit 1
}

# ver_le A B: A <= B, comparing dotted versions number by number (2.9 < 2.17)
ver_le() {
  local -a a b
  IFS=. read -ra a <<<"$1"
  IFS=. read -ra b <<<"$2"
  local i n=$((${#a[@]} > ${#b[@]} ? ${#a[@]} : ${#b[@]}))
  for ((i = 0; i < n; i++)); do
    local x=$((10#${a[i]:-0})) y=$((10#${b[i]:-0}))
    ((x < y)) && return 0
    ((x > y)) && return 1
  done
  return 0
}

# The comparison itself, on cases where string order is wrong
ver_le 2.9 2.17 && ver_le 2.17 2.17 && ver_le 2.2.5 2.17 && ! ver_le 2.28 2.17 &&
  ! ver_le 2.17.1 2.17 && ! ver_le 2.100 2.28 || fail "ver_le compares versions wrongly"

if ! command -v objdump >/dev/null || ! command -v readelf >/dev/null; then
  command -v apt-get >/dev/null || fail "\`objdump\` is missing (hint: install binutils)"
  echo "installing \`binutils\`" >&2
  apt-get install -y -qq binutils >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq binutils >/dev/null; } ||
    fail "\`apt-get install binutils\` failed"
fi
command -v python3 >/dev/null || fail "\`python3\` is missing (it reads the demo's JSON status)"

rm -f "$BIN"
NFSLURM_PORTABLE_GLIBC="$GLIBC" scripts/build-portable.sh || fail "scripts/build-portable.sh failed"
[[ -x "$BIN" ]] || fail "\`$BIN\` was not built"

# glibc symbol versions: every GLIBC_x.y[.z] must be <= the target, none private.
# Reads the version column of `objdump -T` (newer binutils put it in
# parentheses, older ones do not): one "VERSION SYMBOL" line per versioned
# symbol. Unversioned ones must be weak: std's references to `statx`,
# `getrandom` and the like, null where glibc lacks them.
dyn="$(objdump -T "$BIN")" || fail "\`objdump -T $BIN\` failed"
unversioned_strong="$(awk '$1 ~ /^[0-9a-f]+$/ && /\*UND\*/ && $2 != "w" {
  v = $(NF - 1)
  if (length(v) == 16 && v ~ /^[0-9a-f]+$/) print $NF
}' <<<"$dyn" | paste -sd ' ')"
[[ -z "$unversioned_strong" ]] ||
  fail "undefined symbols with no version and not weak (bound to whatever a login node's library has): $unversioned_strong"
sym_versions="$(awk '$1 ~ /^[0-9a-f]+$/ && NF >= 6 {
  v = $(NF - 1); gsub(/[()]/, "", v)
  if (!(length(v) == 16 && v ~ /^[0-9a-f]+$/)) print v, $NF
}' <<<"$dyn")"
symbols_needing() { awk -v v="$1" '$1 == v { print $2 }' <<<"$sym_versions" | paste -sd ' '; }
foreign="$(awk '$1 ~ /^(GLIBCXX|CXXABI|OPENSSL|SQLITE|LIBSSL)/ { print $1 }' <<<"$sym_versions" | sort -u | paste -sd ' ')"
[[ -z "$foreign" ]] || fail "symbols versioned by a library other than glibc: $foreign"
versions="$(awk '$1 ~ /^GLIBC_/ { sub(/^GLIBC_/, "", $1); print $1 }' <<<"$sym_versions" | sort -u)"
[[ -n "$versions" ]] || fail "\`objdump -T $BIN\` lists no GLIBC symbol versions: is it dynamically linked against glibc?"
highest="" too_new=()
while read -r v; do
  [[ "$v" =~ ^[0-9]+(\.[0-9]+)+$ ]] || fail "symbols need \`GLIBC_$v\`: $(symbols_needing "GLIBC_$v")"
  ver_le "$v" "$GLIBC" || too_new+=("GLIBC_$v ($(symbols_needing "GLIBC_$v"))")
  if [[ -z "$highest" ]] || ! ver_le "$v" "$highest"; then highest="$v"; fi
done <<<"$versions"
((${#too_new[@]} == 0)) ||
  fail "symbols need a glibc newer than the targeted $GLIBC: $(printf '%s; ' "${too_new[@]}")highest GLIBC_$highest"

# shared libraries: glibc's own and libgcc_s only (no libsqlite3, libssl, libstdc++)
needed="$(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
[[ -n "$needed" ]] || fail "\`readelf -d $BIN\` lists no needed libraries: is it dynamically linked?"
while read -r lib; do
  case "$lib" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libutil.so.1 | \
      ld-linux-x86-64.so.2 | libgcc_s.so.1) ;;
    *) fail "it needs the shared library \`$lib\`, which a login node may not have" ;;
  esac
done <<<"$needed"

size=$(stat -c %s "$BIN")
((size <= MAX_BYTES)) || fail "\`$BIN\` is $size bytes, more than $MAX_BYTES"

# the demo, end to end, with the portable binary
tmp="$(mktemp -d -t nfslurm-portable-XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
rc=0
NO_COLOR=1 "$BIN" demo "$tmp/demo" >"$tmp/demo.out" 2>"$tmp/demo.err" || rc=$?
((rc == 0)) || { cat "$tmp/demo.out" "$tmp/demo.err" >&2; fail "\`$BIN demo\` exited with $rc"; }
"$BIN" --json --config "$tmp/demo/nfslurm.yaml" status >"$tmp/status.json" 2>"$tmp/status.err" ||
  { cat "$tmp/status.err" >&2; fail "\`$BIN --json status\` failed"; }
python3 - "$tmp/status.json" "$DEMO_VALID_UNITS" <<'EOF' || fail "the demo did not end with every valid unit done"
import json, sys
units = json.load(open(sys.argv[1]))["units"]
valid = [u for u in units if u["state"] != "invalid"]
not_done = [f'{u["pipeline"]} sub-{u["subject"]} ses-{u["session"]}: {u["state"]}' for u in valid if u["state"] != "done"]
if len(valid) != int(sys.argv[2]) or not_done:
    print(f"{len(valid)} valid units (want {sys.argv[2]}), not done: {not_done}", file=sys.stderr)
    sys.exit(1)
EOF

echo "check-portable: ok: \`$BIN\` $size bytes, highest symbol version GLIBC_$highest (target $GLIBC), needs $(paste -sd ' ' <<<"$needed"), demo: $DEMO_VALID_UNITS valid units done" >&2
