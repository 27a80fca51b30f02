#!/usr/bin/env bash
# Go's own context package on the scenarios of benches/versus.rs
# (ci/go/context_bench_test.go, standard library only): a third column for
# docs/benchmarks.md. Optional: does nothing (exit 0) without a `go` binary
# (Debian: apt-get install golang-go). Prints `go <scenario> <ns>` lines, each
# the lowest of BENCH_GO_COUNT runs (default 3), and writes them to
# $CARGO_TARGET_DIR/bench-ci/go.json. Never fails on timing.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null; then
    echo "bench_go: no go toolchain, skipped" >&2
    exit 0
fi
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/bench-ci"
mkdir -p "$out"
export GOCACHE="$target_dir/go-cache" GOPATH="$target_dir/go-path" GOFLAGS=-mod=mod GOTOOLCHAIN=local GOPROXY=off
(cd ci/go && go test -run '^$' -bench . -benchtime "${BENCH_GO_TIME:-300ms}" -count "${BENCH_GO_COUNT:-3}" .) >"$out/go.log" 2>&1 ||
    echo "bench_go: go test did not finish (see $out/go.log)" >&2
python3 - "$out/go.log" "$out/go.json" <<'PY'
import json, re, sys
names = {
    "IsDone1t": "is_done_1t", "IsDone2t": "is_done_2t",
    "ChildCreateDrop": "child_create_drop", "ChildCreateCancelDrop": "child_create_cancel_drop",
    "ChildOfCancelled": "child_of_cancelled",
    "CancelFlat10": "cancel_flat_10", "CancelFlat100": "cancel_flat_100", "CancelFlat1000": "cancel_flat_1000",
    "CancelChain10": "cancel_chain_10", "CancelChain100": "cancel_chain_100", "CancelChain1000": "cancel_chain_1000",
    "Wake1": "wake_1", "Wake100": "wake_100", "Wake1000": "wake_1000",
    "Churn1t": "churn_1t", "Churn2t": "churn_2t", "DeadlineCreateDrop": "deadline_create_drop",
    "PerRequest1t": "per_request_1t", "PerRequest2t": "per_request_2t",
}
best = {}
for line in open(sys.argv[1]):
    m = re.match(r"^Benchmark(\w+?)(-\d+)?\s+\d+\s+([\d.]+) ns/op", line)
    if m and m.group(1) in names:
        k = names[m.group(1)]
        best[k] = min(best.get(k, float("inf")), float(m.group(3)))
json.dump(best, open(sys.argv[2], "w"), indent=1)
for k, v in best.items():
    print(f"go {k} {v:.2f}")
PY
exit 0
