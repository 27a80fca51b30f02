#!/usr/bin/env bash
# Side-by-side benchmarks of ctxcore and tokio-util's CancellationToken
# (issue 6): prints `scenario ctxcore_ns tokio_util_ns ratio` per scenario and
# a last line `K of N targets hold`.
#
#   ci/bench.sh                 # full criterion settings (~10 minutes)
#   BENCH_QUICK=1 ci/bench.sh   # short mode for .ci/run (~2-3 minutes)
#
# Timing never fails the script: it exits non-zero only if the benches do not
# build. Results land in $CARGO_TARGET_DIR/bench-ci/ (results.json for
# ci/bench_chart.py).
set -uo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/bench-ci"
# Our own criterion home, emptied first, so a stale figure from an older run
# can never end up in the table (and a user's baselines are left alone).
export CRITERION_HOME="$out/criterion"
rm -rf "$out"
mkdir -p "$out"

if ! cargo bench --benches --no-run; then
    echo "bench: build failed" >&2
    exit 1
fi

if [ "${BENCH_QUICK:-0}" != "0" ]; then
    args=(--warm-up-time 0.2 --measurement-time 0.5 --sample-size 20 --nresamples 2000 --noplot)
else
    args=(--noplot)
fi

cargo bench --bench memory >"$out/memory.txt" 2>"$out/memory.err" ||
    echo "bench: memory bench did not finish (see $out/memory.err)" >&2
# criterion's own progress goes to a log; the table below is the output.
cargo bench --bench versus -- "${args[@]}" >"$out/criterion.log" 2>&1 ||
    echo "bench: criterion run did not finish (see $out/criterion.log)" >&2

python3 ci/bench_table.py "$CRITERION_HOME" "$out/memory.txt" "$out/results.json" || true
exit 0
