#!/usr/bin/env bash
# Side-by-side benchmarks of ctxcore and tokio-util's CancellationToken
# (issue 6): prints `scenario ctxcore_ns tokio_util_ns ratio` per scenario
# (then its target and whether it holds), the derived checks, and a last line
# `K of N targets hold`.
#
#   BENCH_QUICK=1 ci/bench.sh   # short mode for .ci/run: 3 rounds, ~3 minutes
#   ci/bench.sh                 # criterion's default settings, 1 round (~12 min)
#   BENCH_ROUNDS=5 ci/bench.sh  # any number of rounds; each figure is the
#                               # lowest median over the rounds
#   BENCH_GO=1 ci/bench.sh      # also Go's context (ci/bench_go.sh), if `go` exists
#
# Single-thread scenarios are timed by the thread's CPU clock unless
# BENCH_CLOCK=wall is set (see benches/versus.rs): on a shared machine, time
# spent descheduled is not the code's. The thread-count scenarios (*_1t, *_2t,
# *_4t) always use wall time, and are noisy on a loaded machine.
#
# Timing never fails the script: it exits non-zero only if the benches do not
# build. Results land in $CARGO_TARGET_DIR/bench-ci/ (results.json feeds
# ci/bench_chart.py, which draws docs/benchmarks.svg).
set -uo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/bench-ci"
rm -rf "$out"
mkdir -p "$out"

if ! cargo bench --benches --no-run; then
    echo "bench: build failed" >&2
    exit 1
fi

if [ "${BENCH_QUICK:-0}" != "0" ]; then
    args=(--warm-up-time 0.2 --measurement-time 0.5 --sample-size 20 --nresamples 2000 --noplot)
    rounds="${BENCH_ROUNDS:-3}"
else
    args=(--noplot)
    rounds="${BENCH_ROUNDS:-1}"
fi

cargo bench --bench memory >"$out/memory.txt" 2>"$out/memory.err" ||
    echo "bench: memory bench did not finish (see $out/memory.err)" >&2

export BENCH_CLOCK="${BENCH_CLOCK:-cpu}"
homes=()
for round in $(seq 1 "$rounds"); do
    # A criterion home of our own per round, so a stale figure from an older
    # run can never reach the table (and a user's baselines are left alone).
    home="$out/criterion-$round"
    homes+=("$home")
    CRITERION_HOME="$home" cargo bench --bench versus -- "${args[@]}" >"$out/criterion-$round.log" 2>&1 ||
        echo "bench: criterion round $round did not finish (see $out/criterion-$round.log)" >&2
done

python3 ci/bench_table.py "$out/memory.txt" "$out/results.json" "${homes[@]}" || true
# Optional third column: Go's context on the same scenarios (needs `go`).
if [ "${BENCH_GO:-0}" != "0" ]; then
    ci/bench_go.sh || true
fi
exit 0
