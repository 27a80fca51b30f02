#!/usr/bin/env bash
# cargo-fuzz targets (fuzz/): builds every target, then runs each for a
# bounded time, printing executions, coverage and (for the ops targets) the
# number of operations checked against the reference model.
#
#   ci/fuzz.sh                 # every target, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=600 ci/fuzz.sh ops   # a longer campaign of one target
#
# Seeds come from fuzz/corpus/<target>/ (read only); new inputs go to a
# scratch directory (FUZZ_WORK, default a temp dir), so the committed corpus
# never grows by itself. Exits non-zero if any target crashes, leaks or times
# out; the reproducer is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(ops time ops_threads grpc_timeout)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/fuzz"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR" ;; esac
WORK="${FUZZ_WORK:-$(mktemp -d)}"

# --debug-assertions: the core's debug_asserts are part of what is checked.
FUZZ_FLAGS=(--release --debug-assertions)

echo "== building fuzz targets: ${TARGETS[*]}"
cargo +nightly fuzz build "${FUZZ_FLAGS[@]}"

status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t" "fuzz/corpus/$t"
    log="$WORK/$t.log"
    echo "== fuzzing $t for ${FUZZ_SECONDS}s"
    set +e
    cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$t" "$WORK/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=20 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    # libFuzzer's last status line carries the coverage reached.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E '^Done [0-9]+ runs' "$log" || true
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$log" || true
    grep -E '^ctxcore-fuzz:' "$log" || true
    if [ "$rc" -ne 0 ]; then
        echo "!! $t failed (exit $rc); log: $log"
        grep -E -m 20 'panicked|assertion|ERROR|SUMMARY|left:|right:|Test unit written' "$log" || tail -n 40 "$log"
        status=1
    fi
done
exit "$status"
