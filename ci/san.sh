#!/usr/bin/env bash
# AddressSanitizer (with its leak checker) and ThreadSanitizer over the
# stress tests (tests/stress.rs), on nightly with a sanitized std
# (-Zbuild-std, which needs the rust-src component).
#
# Bounded: the stress tests run at CTXCORE_STRESS_SCALE percent of their
# default sizes (default 50), and each sanitizer (build + run) is capped by
# SAN_TIMEOUT seconds (default 240). Here, on 2 shared cores, building the
# sanitized std and the dev-dependencies takes 2-3 minutes per sanitizer from
# cold (seconds when cached) and the tests 5-30 s, so the script stays under
# about 7 minutes. Runnable alone from the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${SAN_TARGET:-x86_64-unknown-linux-gnu}"
export CTXCORE_STRESS_SCALE="${CTXCORE_STRESS_SCALE:-50}"
SAN_TIMEOUT="${SAN_TIMEOUT:-240}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! rustup +nightly component list --installed | grep -q '^rust-src'; then
    rustup +nightly component add rust-src
fi

run() {
    local san="$1"
    shift
    echo "== ${san} sanitizer: tests/stress.rs (scale ${CTXCORE_STRESS_SCALE}%)"
    # Own target dir per sanitizer: instrumented std must not mix.
    RUSTFLAGS="-Zsanitizer=${san} ${SAN_RUSTFLAGS:-}" \
    RUSTDOCFLAGS="-Zsanitizer=${san}" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/san-${san}" \
        timeout "${SAN_TIMEOUT}" \
        cargo +nightly test -Zbuild-std --target "${TARGET}" --test stress "$@"
}

# Leaks (nodes never freed) fail the run: LeakSanitizer is on by default.
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:${ASAN_OPTIONS:-}" run address
# The std library's own synchronisation is instrumented too (build-std),
# so every report is about real unsynchronised accesses.
TSAN_OPTIONS="halt_on_error=1:${TSAN_OPTIONS:-}" run thread
echo "== sanitizers: no reports"
