#!/usr/bin/env bash
# loom models of the core's concurrent protocols (loom/tests/models.rs), in
# their own workspace so that `--cfg loom` reaches only ctxcore and loom.
# Bounded: LOOM_MAX_PREEMPTIONS=3 keeps the whole run to seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/loom"
timeout "${LOOM_TIMEOUT:-900}" cargo test --release --manifest-path loom/Cargo.toml -- --test-threads=2 "$@"
