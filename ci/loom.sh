#!/usr/bin/env bash
# loom models of the core's concurrent protocols (tests/loom.rs).
# Bounded: LOOM_MAX_PREEMPTIONS=3 keeps the whole run to a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
timeout "${LOOM_TIMEOUT:-900}" cargo test --release --test loom -- --test-threads=2
