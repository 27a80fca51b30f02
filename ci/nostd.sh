#!/usr/bin/env bash
# no_std builds of the library for bare-metal Cortex-M, and a check of every
# feature combination on the host.
#
#   thumbv6m-none-eabi    Cortex-M0: no compare-and-swap, so always with the
#                         `portable-atomic` feature. The library never turns on
#                         portable-atomic's `unsafe-assume-single-core` or
#                         `critical-section`: a final binary does, so this
#                         script plays that binary with the single-core cfg.
#   thumbv7em-none-eabihf Cortex-M4F/M7: native atomics (no 64-bit ones).
#   riscv32imc-unknown-none-elf
#                         RV32IMC: no atomic extension (load/store only, no
#                         CAS): `portable-atomic` and the single-core cfg, as
#                         on the M0 (ci/qemu.sh runs the firmwares on it).
#   riscv32imac-unknown-none-elf
#                         RV32IMAC: native 32-bit atomics, no feature needed.
#
# Each target: no features, `alloc`, `critical-section`, both, and both with
# the `embassy-time` backend (the firmware set).
# Host: `cargo hack check --feature-powerset --no-dev-deps` (every combination
# is meant to compile). `--no-dev-deps` edits Cargo.toml while it runs and
# restores it afterwards. `tokio-util` (the CancellationToken bridge: std-only
# code that touches no cfg of the others) is left out of the powerset, which
# it would grow from 48 to 80 checks, and checked alone and with every other
# feature instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/nostd"

rustup target add thumbv6m-none-eabi thumbv7em-none-eabihf \
  riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf >/dev/null

fail=0
build() { # target, features, extra RUSTFLAGS
  local target=$1 features=$2 rustflags=${3:-}
  echo "--- $target --no-default-features --features '$features'"
  if ! RUSTFLAGS="$rustflags" timeout 600 cargo build --quiet --lib \
      --no-default-features --features "$features" --target "$target"; then
    echo "FAILED: $target [$features]"
    fail=1
  fi
}

m0_cfg="--cfg portable_atomic_unsafe_assume_single_core"
for extra in "" ",alloc" ",critical-section" ",alloc,critical-section" ",alloc,critical-section,embassy-time"; do
  build thumbv6m-none-eabi "portable-atomic$extra" "$m0_cfg"
done
for features in "" "alloc" "critical-section" "alloc,critical-section" "alloc,critical-section,embassy-time"; do
  build thumbv7em-none-eabihf "$features"
done
# The M4F with portable-atomic too (it must not need the M0's cfg).
build thumbv7em-none-eabihf "portable-atomic,alloc"
# RISC-V: the bare core and the firmware set, without and with the A extension.
for extra in "" ",alloc,critical-section,embassy-time"; do
  build riscv32imc-unknown-none-elf "portable-atomic$extra" "$m0_cfg"
done
for features in "" "alloc,critical-section,embassy-time"; do
  build riscv32imac-unknown-none-elf "$features"
done

echo "--- host: cargo hack check --feature-powerset --no-dev-deps"
if ! command -v cargo-hack >/dev/null; then
  cargo install cargo-hack --locked
fi
if ! timeout 1500 cargo hack check --feature-powerset --no-dev-deps --lib --exclude-features tokio-util; then
  echo "FAILED: host feature powerset"
  fail=1
fi
for features in "--no-default-features --features tokio-util" "--all-features"; do
  # shellcheck disable=SC2086 # word splitting is the point
  if ! timeout 600 cargo check --quiet --lib $features; then
    echo "FAILED: host [$features]"
    fail=1
  fi
done

if [ "$fail" -ne 0 ]; then
  echo "nostd: FAILED"
  exit 1
fi
echo "nostd: all builds passed"
