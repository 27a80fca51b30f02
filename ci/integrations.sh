#!/usr/bin/env bash
# The integration crates beyond their tests (the README's test command runs
# those): every feature of ctxcore-http and ctxcore-sql builds alone, the
# three-tier demo runs end to end (it exits non-zero when an outcome it
# expects does not happen), and the integration benches run once in their
# short mode, printing their figures (timing never fails the script).
#
#   ci/integrations.sh            # all of it
#   INTEGRATION_BENCH=0 ci/integrations.sh   # skip the benches
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-hack >/dev/null; then
  cargo install cargo-hack --locked
fi

echo "--- each feature of the integration crates alone"
timeout 1200 cargo hack check -p ctxcore-http -p ctxcore-sql --each-feature --no-dev-deps

echo "--- the three-tier demo, end to end"
timeout 600 cargo run -q -p ctxcore-demo

if [ "${INTEGRATION_BENCH:-1}" != 0 ]; then
  echo "--- integration benches: they must build; their figures never fail the run"
  timeout 900 cargo bench -p ctxcore-http -p ctxcore-sql --all-features --no-run
  for crate in ctxcore-http ctxcore-sql; do
    timeout 300 cargo bench -p "$crate" --all-features --bench '*' -- --quick --noplot \
      || echo "bench: $crate's benches did not finish (figures only, not a gate)"
  done
fi
