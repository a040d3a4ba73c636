#!/usr/bin/env bash
# The figures of docs/performance.md, in one table: the library and command
# benchmarks (`cargo bench --bench scale`) on synthetic studies, then a real
# study on the Slurm test cluster in each submission mode. Figures with a
# target are marked `met` or `not met`; nothing is asserted.
#
#   scripts/bench.sh                      # everything (about 11 minutes here)
#   scripts/bench.sh --no-slurm           # the synthetic benchmarks only
#   scripts/bench.sh --slurm-only         # the Slurm cluster part only
#   scripts/bench.sh --modes jobs         # one submission mode (jobs, arrays)
#   scripts/bench.sh --subjects 20        # a smaller Slurm study (default 100 x 2 sessions)
#   scripts/bench.sh --reps 3 --only sync # passed to the scale benchmark; `sync`
#                                         # alone gives the three figures of a
#                                         # study at rest (no-op sync, status,
#                                         # status --json at 10,000 sessions)
#   scripts/bench.sh --only dicom,sync-dicom --baseline dd380cc
#                                         # DICOM figures; a no-op sync timed
#                                         # against the nfslurm of commit REV too
#   scripts/bench.sh --no-slurm --only serve --serve-duration 20
#                                         # `nfslurm serve` under load (default
#                                         # 60 s: 200 WebSocket clients, 100
#                                         # status requests/s, a sync every 10 s
#                                         # on a 10,000-session study); a
#                                         # shorter run to try it out
#
# Generated studies live under a temporary folder and are deleted at the end.
# Release build; CARGO_TARGET_DIR is honoured.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

run_lib=1
run_slurm=1
modes="jobs,arrays"
subjects=100
sessions=2
sync_every=3
timeout_s=2400
lib_args=()
only=""
run_serve=1
serve_duration=60
baseline=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-slurm) run_slurm=0 ;;
        --slurm-only) run_lib=0 ;;
        --modes) modes="$2"; shift ;;
        --subjects) subjects="$2"; shift ;;
        --sync-every) sync_every="$2"; shift ;;
        --timeout) timeout_s="$2"; shift ;;
        --reps) lib_args+=("$1" "$2"); shift ;;
        --only) only="$2"; shift ;;
        --serve-duration) serve_duration="$2"; shift ;;
        --baseline) baseline="$2"; shift ;;
        -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument \`$1\`" >&2; exit 1 ;;
    esac
    shift
done

# `--only`: `serve` is the load benchmark of `nfslurm serve`; the other names
# go to the scale benchmark (none left: it does not run).
if [ -n "$only" ]; then
    IFS=, read -ra only_list <<< "$only"
    lib_only=()
    run_serve=0
    for name in "${only_list[@]}"; do
        if [ "$name" = serve ]; then run_serve=1; else lib_only+=("$name"); fi
    done
    if [ ${#lib_only[@]} -eq 0 ]; then
        run_lib=0
    else
        lib_args+=(--only "$(IFS=,; echo "${lib_only[*]}")")
    fi
fi
[ "$run_lib" = 0 ] && [ -z "$only" ] && run_serve=0

work=$(mktemp -d /tmp/nfslurm-bench-sh.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
table="$work/figures.tsv"
: > "$table"

echo "building (release)..." >&2
if ! { cargo build --release && cargo bench --bench scale --no-run \
    && cargo bench --bench serve_load --no-run; } > "$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
nfslurm="$target_dir/release/nfslurm"

# pydicom is the speed anchor of the header-reading figure.
if [ "$run_lib" = 1 ]; then
    scripts/test-deps.sh
fi

if [ -n "$baseline" ]; then
    echo "building the baseline nfslurm of $baseline (release)..." >&2
    mkdir -p "$work/baseline"
    git archive "$baseline" | tar -x -C "$work/baseline"
    if ! (cd "$work/baseline" && CARGO_TARGET_DIR="$work/baseline-target" cargo build --release --bin nfslurm) > "$work/baseline.log" 2>&1; then
        cat "$work/baseline.log" >&2
        exit 1
    fi
    export NFSLURM_BASELINE_BIN="$work/baseline-target/release/nfslurm"
fi

# --- the synthetic benchmarks ------------------------------------------------
# First: submitting writes 10,500 files and folders, and on this machine's
# ext4 (no journal) creating files within minutes of deleting many is several
# times slower. Whatever ran before this script counts too: the Slurm part
# (whose 1,400 jobs churn slurmd's spool), a test suite, a previous run.
if [ "$run_lib" = 1 ]; then
    cargo bench --quiet --bench scale -- --tsv "$work/lib.tsv" "${lib_args[@]}" >&2
    cat "$work/lib.tsv" >> "$table"
fi

# --- nfslurm serve under load ------------------------------------------------
# The 10,000-session study of the no-op sync figure, switched to the local
# executor by the benchmark; loopback only, and it stops by itself.
if [ "$run_serve" = 1 ]; then
    echo "serve load: generating the 10,000-session study..." >&2
    cargo bench --quiet --bench scale -- --setup sync "$work/serve-study" > /dev/null
    cargo bench --quiet --bench serve_load -- --nfslurm "$nfslurm" \
        --study "$work/serve-study" --duration "$serve_duration" \
        --tsv "$work/serve.tsv" >&2
    cat "$work/serve.tsv" >> "$table"
    rm -rf "$work/serve-study"
fi


# --- a real study on the Slurm test cluster ---------------------------------
# figure NAME VALUE UNIT [TARGET]: a row of the table.
figure() {
    local status=""
    if [ -n "${4:-}" ]; then
        if awk -v v="$2" -v t="$4" 'BEGIN { exit !(v <= t) }'; then status="met"; else status="not met"; fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" "$status" >> "$work/slurm.tsv"
}

now_ms() { date +%s%3N; }

# calls NAME LINE: the count NAME=N in nfslurm's `slurm calls` log line, or 0.
calls() {
    local n
    n=$(sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<< "$2" | head -1)
    echo "${n:-0}"
}

# Writes a study of $subjects x $sessions sessions with trivial commands.
write_study() {
    local dir=$1 mode=$2
    mkdir -p "$dir/dicom"
    cat > "$dir/nfslurm.yaml" <<EOF
version: 1
site: local
executor: slurm
scheduler:
  submission: $mode
paths:
  dicom_root: dicom
discovery:
  mapping:
    file: mapping.csv
    scan_id_column: ScanID
    subject_column: SubjectCode
    session_column: SessionID
  validation:
    min_files: 2
  settle: 0s
pipelines:
  bids:
    level: session
    command: echo bids {{ subject.label }} {{ session.label }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
  qsiprep:
    level: subject
    depends_on: [bids]
    command: echo qsiprep {{ subject.label }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
  qsirecon:
    level: session
    depends_on: [qsiprep]
    command: echo qsirecon {{ subject.label }} {{ session.label }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
  qsiparc:
    level: session
    depends_on: [qsirecon]
    command: echo qsiparc {{ subject.label }} {{ session.label }}
    resources: { cpus: 1, mem: 100M, time: "00:05:00" }
EOF
    echo "ScanID,SubjectCode,SessionID" > "$dir/mapping.csv"
    local sub ses scan
    for sub in $(seq -f '%04g' 1 "$subjects"); do
        for ses in $(seq 1 "$sessions"); do
            scan="S${sub}${ses}"
            echo "$scan,$sub,$ses" >> "$dir/mapping.csv"
            mkdir -p "$dir/dicom/$scan/DWI"
            echo DICM > "$dir/dicom/$scan/DWI/IM0001.dcm"
            echo DICM > "$dir/dicom/$scan/DWI/IM0002.dcm"
        done
    done
}

# Units not yet in a final state, from `status --json`.
unsettled() {
    "$nfslurm" --config "$1/nfslurm.yaml" status --json 2> /dev/null \
        | grep -cE '"state": "(waiting|queued|running|retrying|stale)"' || true
}

bench_slurm_mode() {
    local mode=$1
    local dir="$work/slurm-$mode"
    write_study "$dir" "$mode"
    local units=$((subjects * sessions * 3 + subjects))
    echo "slurm ($mode): $subjects subjects x $sessions sessions, $units units" >&2
    local syncs=0 sbatch=0 squeue=0 sacct=0 cpu_ms=0 rss_kb=0 first_cpu_ms=0 first_ms=0
    local start end left
    start=$(now_ms)
    while :; do
        local t0 t1 line u s m
        t0=$(now_ms)
        if ! /usr/bin/time -o "$work/time" -f '%U %S %M' \
            "$nfslurm" -v --config "$dir/nfslurm.yaml" sync > /dev/null 2> "$work/stderr"; then
            echo "slurm ($mode): sync failed:" >&2
            grep -v 'slurm calls' "$work/stderr" | tail -5 >&2
            if [ "$syncs" = 0 ]; then
                # The first sync submits everything: without it there is nothing to measure.
                local why
                why=$(grep -m1 'error' "$work/stderr" | cut -c1-60 || true)
                figure "slurm $mode: could not be measured (${why:-the first sync failed})" "" ""
                return
            fi
        fi
        t1=$(now_ms)
        syncs=$((syncs + 1))
        line=$(grep 'slurm calls' "$work/stderr" | tail -1 || true)
        sbatch=$((sbatch + $(calls sbatch "$line")))
        squeue=$((squeue + $(calls squeue "$line")))
        sacct=$((sacct + $(calls sacct "$line")))
        read -r u s m < <(tail -1 "$work/time")
        local c
        c=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%d", (u + s) * 1000 }')
        cpu_ms=$((cpu_ms + c))
        [ "$m" -gt "$rss_kb" ] && rss_kb=$m
        if [ "$syncs" = 1 ]; then
            first_cpu_ms=$c
            first_ms=$((t1 - t0))
        fi
        left=$(unsettled "$dir")
        end=$(now_ms)
        if [ "$left" = 0 ]; then break; fi
        if [ $(((end - start) / 1000)) -gt "$timeout_s" ]; then
            echo "slurm ($mode): $left units still not done after ${timeout_s}s; cancelling" >&2
            "$nfslurm" --config "$dir/nfslurm.yaml" cancel --all > /dev/null 2>&1 || true
            break
        fi
        sleep "$sync_every"
    done
    local done_units
    done_units=$("$nfslurm" --config "$dir/nfslurm.yaml" status --json 2> /dev/null \
        | grep -c '"state": "done"' || true)
    echo "slurm ($mode): $done_units of $units units done in $(((end - start) / 1000)) s, $syncs syncs" >&2
    local p="slurm $mode ($subjects x $sessions, $units units)"
    figure "$p: units done" "$done_units" ""
    figure "$p: makespan, first sync to all done" "$(awk -v e="$((end - start))" 'BEGIN { printf "%.1f", e / 1000 }')" s
    figure "$p: syncs (one every ${sync_every}s)" "$syncs" ""
    figure "$p: sbatch calls" "$sbatch" ""
    figure "$p: squeue calls per sync" "$(awk -v q="$squeue" -v n="$syncs" 'BEGIN { printf "%.2f", q / n }')" "" 1
    figure "$p: sacct calls" "$sacct" ""
    figure "$p: first sync (discover + submit all) wall" "$first_ms" ms
    figure "$p: first sync client CPU" "$first_cpu_ms" ms
    figure "$p: client CPU, all syncs" "$cpu_ms" ms
    figure "$p: peak RSS of a sync" "$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')" MB
}

# `submit --all --wait` of 50 subjects x 2 sessions x 4 pipelines in arrays:
# the client's own CPU (user + sys of nfslurm itself, from its getrusage at
# exit), the same with the Slurm tools it ran (sbatch, squeue, sacct: what
# /usr/bin/time sees, since it counts waited-for children), its sbatch calls,
# and squeue calls per poll of the wait.
bench_slurm_wait() {
    local dir="$work/slurm-wait" saved=$subjects
    subjects=50
    write_study "$dir" arrays
    subjects=$saved
    "$nfslurm" --config "$dir/nfslurm.yaml" discover > /dev/null
    if ! /usr/bin/time -o "$work/time" -f '%U %S %M %e' \
        "$nfslurm" -v --config "$dir/nfslurm.yaml" submit --all --wait > /dev/null 2> "$work/stderr"; then
        echo "slurm wait: submit --all --wait failed:" >&2
        grep -v 'slurm calls' "$work/stderr" | tail -5 >&2
        figure "slurm submit --all --wait: could not be measured" "" ""
        return
    fi
    local line polls u s m e
    line=$(grep 'slurm calls' "$work/stderr" | tail -1 || true)
    polls=$(sed -n 's/.*wait: [0-9]* runs followed in \([0-9]*\) polls.*/\1/p' "$work/stderr" | tail -1)
    read -r u s m e < <(tail -1 "$work/time")
    local p="slurm submit --all --wait (50x2x4, arrays)"
    figure "$p: client CPU (nfslurm itself), user + sys" "$(awk -v c="$(calls cpu_ms "$line")" 'BEGIN { printf "%.2f", c / 1000 }')" s 0.1
    figure "$p: CPU with the Slurm tools it ran" "$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')" s
    figure "$p: wall" "$e" s
    figure "$p: sbatch calls" "$(calls sbatch "$line")" "" 8
    figure "$p: squeue per poll ($polls polls)" "$(awk -v q="$(calls squeue "$line")" -v n="${polls:-0}" 'BEGIN { printf "%.2f", (n > 0) ? q / n : q }')" "" 1
}

if [ "$run_slurm" = 1 ]; then
    if ! scripts/slurm-test-cluster.sh status > /dev/null 2>&1; then
        echo "starting the Slurm test cluster..." >&2
        scripts/slurm-test-cluster.sh start >&2
    fi
    # Other jobs on the one-node cluster would be in the makespan: wait for a quiet queue.
    for _ in $(seq 1 120); do
        [ -z "$(squeue --noheader 2> /dev/null)" ] && break
        sleep 5
    done
    [ -n "$(squeue --noheader 2> /dev/null)" ] \
        && echo "warning: other jobs are on the cluster; the makespan includes waiting for them" >&2
    IFS=, read -ra mode_list <<< "$modes"
    for mode in "${mode_list[@]}"; do
        bench_slurm_mode "$mode"
    done
    bench_slurm_wait
fi

[ -f "$work/slurm.tsv" ] && cat "$work/slurm.tsv" >> "$table"

# --- the table ----------------------------------------------------------------
print_rows() {
    awk -F '\t' '
        BEGIN { printf "%-72s %14s  %-14s %s\n", "figure", "value", "target", "status" }
        {
            target = ($4 == "") ? "" : (($4 ~ /^[<>]/) ? $4 : "<= " $4) " " $3
            printf "%-72s %10s %-3s  %-14s %s\n", $1, $2, $3, target, $5
        }'
}
echo
print_rows < "$table"

# The three figures of a study at rest (10,000 sessions, 35,000 done units)
# against their targets, apart: a no-op `sync`, `status`, `status --json`.
if grep -q '^sync 10k: `nfslurm' "$table"; then
    echo
    echo "a study at rest, 10,000 sessions / 35,000 done units:"
    grep -E '^sync 10k: `nfslurm (sync`, nothing to do|status`|status --json`)' "$table" | print_rows
fi
