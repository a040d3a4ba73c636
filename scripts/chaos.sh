#!/usr/bin/env bash
# Exactly once, tested from outside: kills nfslurm processes with SIGKILL at
# random moments while a study runs, lets plain `nfslurm sync` recover (no
# manual step), then counts what the jobs themselves recorded.
#
# Every job takes a lock named after its unit (flock -n) and appends its unit
# to a completions file when it ends; a job that finds its unit's lock held
# records an overlap instead. At the end each unit must be done, with exactly
# one completion and no overlap.
#
# Targets:
#   local-submit   kill `nfslurm submit --all`      (local executor)
#   local-sync     kill `nfslurm sync`              (local executor)
#   local-worker   kill the local worker            (local executor)
#   slurm-jobs     kill `submit`/`sync`             (Slurm, one job per unit)
#   slurm-arrays   kill `submit`/`sync`             (Slurm, job arrays)
#   concurrency    no kill: 25 `sync`s at once, again and again for D
#                  seconds, beside a busy local worker and `status --watch`;
#                  any error from any of them fails the target
#
# Usage: scripts/chaos.sh [-n N] [-d D] [TARGET...]
#        (default: N=20, D=60, every target but concurrency)
# Each trial adds a new subject (two sessions) and kills one process; the
# table printed at the end has: kills, units, completions, double
# completions, overlaps and lost units per target. Exit 1 if any of the last
# three is not 0. The Slurm targets need the test cluster
# (scripts/slurm-test-cluster.sh start). NFSLURM_BIN picks the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

n=20
duration=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n="$2"; shift 2 ;;
    -d) duration="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(local-submit local-sync local-worker slurm-jobs slurm-arrays)

bin="${NFSLURM_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --locked
  bin="$PWD/target/debug/nfslurm"
fi
[ -x "$bin" ] || { echo "chaos: no nfslurm binary at $bin" >&2; exit 1; }

results=()
failed=0

# A random delay in seconds, 0 to $1 ms.
rand_delay() { local ms=$((RANDOM % $1)); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }

# The window a kill is drawn from, in ms, per command: it adapts to how long
# the command lives on this machine, so kills keep landing on a fast machine
# and stay spread over the whole life on a slow one. A kill that came after
# the command had ended halves the window; one that landed widens it by a
# quarter (capped at the first window's 4x). About three kills in four land.
declare -A window=()

# Runs `nfslurm $@` in the study, in the background, and SIGKILLs it after a
# random delay within the command's window (first $1 ms); counts a kill when
# it died of it. `exec`: the PID killed is nfslurm itself, not a
# subshell around it.
kill_at_random() {
  local first="$1"; shift
  local key="$1" max
  max="${window[$key]:-$first}"
  (cd "$study" && NO_COLOR=1 exec "$bin" "$@") >>"$study/chaos-out.log" 2>&1 &
  local pid=$!
  sleep "$(rand_delay "$max")"
  kill -9 "$pid" 2>/dev/null || true
  # The exit status says whether the kill landed (137: died of SIGKILL), not
  # `kill`'s, which succeeds on a process that ended but is not yet reaped.
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  if [ "$rc" = 137 ]; then
    kills=$((kills + 1))
    max=$(( max + max / 4 + 1 ))
    [ "$max" -le $((first * 4)) ] || max=$((first * 4))
  else
    max=$(( max / 2 ))
    [ "$max" -ge 2 ] || max=2
  fi
  window[$key]=$max
}

new_study() {
  local target="$1" executor="$2" submission="$3"
  study=$(mktemp -d "${TMPDIR:-/tmp}/nfslurm-chaos-$target-XXXXXX")
  chaos="$study/chaos"
  mkdir -p "$chaos/locks" "$study/dicom"
  : >"$chaos/completions"
  : >"$chaos/overlaps"
  printf 'ScanID,SubjectCode,SessionID\n' >"$study/mapping.csv"
  # A per-run prefix keeps job names apart on a shared cluster.
  prefix="c$(printf '%04x' $((RANDOM)))"
  cat >"$study/nfslurm.yaml" <<EOF
version: 1
site: local
executor: $executor
scheduler:
  submission: $submission
paths:
  dicom_root: dicom
discovery:
  mapping: { file: mapping.csv }
  validation: { min_files: 1 }
  settle: 0s
pipelines:
  convert:
    level: session
    resources: { cpus: 1, mem: 100M, time: "00:10:00" }
    command: |
      exec 9>$chaos/locks/{{ pipeline }}-{{ subject.label }}-{{ session.label }}.lock
      if ! flock -n 9; then echo {{ pipeline }}-{{ subject.label }}-{{ session.label }} >> $chaos/overlaps; exit 1; fi
      sleep 0.\$(( RANDOM % 8 + 2 ))
      echo {{ pipeline }}-{{ subject.label }}-{{ session.label }} >> $chaos/completions
  prep:
    level: subject
    depends_on: [convert]
    resources: { cpus: 1, mem: 100M, time: "00:10:00" }
    command: |
      exec 9>$chaos/locks/{{ pipeline }}-{{ subject.label }}.lock
      if ! flock -n 9; then echo {{ pipeline }}-{{ subject.label }} >> $chaos/overlaps; exit 1; fi
      sleep 0.\$(( RANDOM % 8 + 2 ))
      echo {{ pipeline }}-{{ subject.label }} >> $chaos/completions
retry:
  max_attempts: 3
  initial_delay: 1s
  max_delay: 2s
  jitter: 0
EOF
}

# Adds subject number $1 with two sessions.
add_subject() {
  local s
  s=$(printf '%s%03d' "$prefix" "$1")
  for e in 1 2; do
    mkdir -p "$study/dicom/SCAN$s$e"
    echo DICM >"$study/dicom/SCAN$s$e/IM0001.dcm"
    echo "SCAN$s$e,$s,$e" >>"$study/mapping.csv"
  done
}

nf() { (cd "$study" && NO_COLOR=1 exec "$bin" "$@"); }

# Syncs until every unit is done or nothing moves for a while.
recover() {
  local start=$SECONDS pending
  while :; do
    nf sync >>"$study/chaos-out.log" 2>&1 || true
    pending=$(nf --json status | python3 -c '
import json, sys
units = json.load(sys.stdin)["units"]
print(sum(1 for u in units if u["state"] != "done"))')
    [ "$pending" = 0 ] && return 0
    [ $((SECONDS - start)) -lt 300 ] || return 0
    sleep 1
  done
}

# 25 syncs at once, round after round, while the worker runs jobs and
# `status --watch` redraws. Counts errors: a non-zero exit, or an `error`,
# `locked` or `panic` line from any of them.
concurrency_rounds() {
  local end=$((SECONDS + duration)) i=0 round pids p errors=0
  add_subject 1
  nf discover >/dev/null 2>&1 || true
  nf submit --all >>"$study/chaos-out.log" 2>&1
  (cd "$study" && NO_COLOR=1 exec "$bin" status --watch 1) >"$study/watch.out" 2>"$study/watch.err" &
  local watch=$!
  local subjects=1 added=$SECONDS
  while [ $SECONDS -lt $end ]; do
    i=$((i + 1))
    # A new subject every 2 s keeps the worker busy and the syncs planning.
    if [ $((SECONDS - added)) -ge 2 ]; then
      subjects=$((subjects + 1))
      add_subject "$subjects"
      added=$SECONDS
    fi
    pids=()
    for round in $(seq 1 25); do
      (cd "$study" && NO_COLOR=1 exec "$bin" sync) >>"$study/sync-$round.out" 2>>"$study/sync-$round.err" &
      pids+=($!)
    done
    for p in "${pids[@]}"; do
      wait "$p" || errors=$((errors + 1))
    done
  done
  kill "$watch" 2>/dev/null || true
  wait "$watch" 2>/dev/null || true
  errors=$((errors + $(cat "$study"/sync-*.err "$study/watch.err" | grep -ci 'error\|locked\|panic' || true)))
  rounds=$i
  conc_errors=$errors
}

# Counts what the jobs recorded and adds the target's row; $2 is the first
# column (kills, or errors for the concurrency target), $3 extra errors.
tally() {
  local target="$1" first="$2" errors="$3" units completions doubles overlaps lost recorded
  units=$(nf --json status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["units"]))')
  lost=$(nf --json status | python3 -c '
import json, sys
print(sum(1 for u in json.load(sys.stdin)["units"] if u["state"] != "done"))')
  completions=$(wc -l <"$chaos/completions")
  doubles=$(sort "$chaos/completions" | uniq -d | wc -l)
  overlaps=$(wc -l <"$chaos/overlaps")
  # Units done without a completion of their own are lost too.
  recorded=$(sort -u "$chaos/completions" | wc -l)
  [ "$recorded" -ge "$units" ] || lost=$((lost + units - recorded))
  results+=("$(printf '%-13s %6s %6s %12s %8s %9s %5s' "$target" "$first" "$units" "$completions" "$doubles" "$overlaps" "$lost")")
  if [ "$errors" != 0 ] || [ "$doubles" != 0 ] || [ "$overlaps" != 0 ] || [ "$lost" != 0 ]; then
    failed=1
    echo "chaos: $target failed; the study is kept in $study" >&2
  else
    # Nothing of the study outlives a passing run.
    (cd "$study" && NO_COLOR=1 "$bin" worker stop >/dev/null 2>&1 || true)
    rm -rf "$study"
  fi
}

run_target() {
  local target="$1"
  kills=0
  window=()
  case "$target" in
    concurrency)
      new_study "$target" local arrays
      concurrency_rounds
      recover
      echo "concurrency: $rounds rounds of 25 syncs in ${duration}s, $conc_errors errors" >&2
      tally "$target" "e=$conc_errors" "$conc_errors"
      return ;;
    local-*) new_study "$target" local arrays ;;
    slurm-jobs) new_study "$target" slurm jobs ;;
    slurm-arrays) new_study "$target" slurm arrays ;;
    *) echo "chaos: unknown target \`$target\`" >&2; exit 1 ;;
  esac
  local i
  for i in $(seq 1 "$n"); do
    add_subject "$i"
    case "$target" in
      local-submit)
        nf discover >/dev/null 2>&1 || true
        kill_at_random 60 submit --all ;;
      local-sync)
        kill_at_random 30 sync ;;
      local-worker)
        nf sync >>"$study/chaos-out.log" 2>&1 || true
        sleep "$(rand_delay 1500)"
        local wpid
        wpid=$(cut -d' ' -f1 "$study/.nfslurm/worker.pid" 2>/dev/null || true)
        if [ -n "$wpid" ] && kill -9 "$wpid" 2>/dev/null; then kills=$((kills + 1)); fi ;;
      slurm-*)
        if [ $((i % 2)) = 0 ]; then
          nf discover >/dev/null 2>&1 || true
          kill_at_random 150 submit --all
        else
          kill_at_random 150 sync
        fi ;;
    esac
  done
  recover
  tally "$target" "$kills" 0
}

for t in "${targets[@]}"; do
  run_target "$t"
done

printf '%-13s %6s %6s %12s %8s %9s %5s\n' target kills units completions doubles overlaps lost
printf '%s\n' "${results[@]}"
exit "$failed"
