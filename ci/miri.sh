#!/usr/bin/env bash
# Unit and conformance tests under Miri, with strict provenance, then a
# second pass under the Tree Borrows model. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup component add miri rust-src --toolchain nightly >/dev/null
cargo +nightly miri setup >/dev/null 2>&1 || cargo +nightly miri setup
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/miri"
# Tests that need real time or many threads are #[cfg_attr(miri, ignore)].
TESTS=(--lib)
for t in conformance core_api alloc_budget scoped virtual_time stress lazy_arm review4_timer review5_lazy review2_done_dropck review_leak_scoped review_orphan_waiter review_panic_cause review_waker_drop review_api_holes adversary_pending_race adversary_scoped_mix adversary_detach_panic cancelled_at immortal_cache review6_immortal_cache review6_d5 review7_deadline_kids review8_settle stream; do
  [ -f "tests/$t.rs" ] && TESTS+=(--test "$t")
done
base="-Zmiri-strict-provenance -Zmiri-symbolic-alignment-check"
echo "== miri (stacked borrows): ${TESTS[*]}"
MIRIFLAGS="$base ${MIRIFLAGS:-}" timeout "${MIRI_TIMEOUT:-900}" cargo +nightly miri test "${TESTS[@]}"
echo "== miri (tree borrows): ${TESTS[*]}"
MIRIFLAGS="$base -Zmiri-tree-borrows ${MIRIFLAGS:-}" timeout "${MIRI_TIMEOUT:-900}" cargo +nightly miri test "${TESTS[@]}"
# portable-atomic-util's `Arc` is built through a raw-pointer unsizing in
# `value::push` (the one `unsafe` that only that feature compiles): the value
# tests again with it, Stacked Borrows (~1 min, most of it the rebuild).
echo "== miri (portable-atomic's Arc): value tests"
MIRIFLAGS="$base ${MIRIFLAGS:-}" timeout "${MIRI_TIMEOUT:-900}" \
  cargo +nightly miri test --no-default-features --features std,portable-atomic --test conformance value
