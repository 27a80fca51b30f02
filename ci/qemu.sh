#!/usr/bin/env bash
# Firmware tests under QEMU: tests/firmware on the lm3s6965evb board as a
# Cortex-M3 (thumbv7m, native atomics) and as a Cortex-M0 (thumbv6m, no CAS:
# portable-atomic with the single-core cfg), and on the RISC-V `virt` machine
# as an RV32IMC (riscv32imc, QEMU's `rv32` CPU with the atomic extension off:
# `-cpu rv32,a=off`; portable-atomic with the single-core cfg) and an
# RV32IMAC (riscv32imac, native atomics). Semihosting carries the output and
# the exit code; a failed check, a panic or a hang (timeout) fails.
#
# Two firmwares, each on both CPUs: `ctxcore-firmware` (the `alloc` API on a
# small heap) and `noalloc` (no allocator linked: `StaticContext` roots,
# `ScopedContext` children pinned in tasks, deadlines on the firmware's
# fixed-size `TickTimer`). The `noalloc` images are then checked for allocator
# symbols (needs llvm-tools' llvm-nm; a hit fails the script).
#
# Then, informational (never fails the script):
#   - both on ctxcore's plain spin lock (no `critical-section`), where the
#     SysTick handler is expected to deadlock against the thread code it
#     interrupted: the hazard docs/embedded.md describes;
#
# Last, the size firmwares (release), which fail the script:
#   - each size_* image runs under QEMU on the M3, the M0, the RV32IMC and the
#     RV32IMAC; it prints nothing (no core::fmt: the measured configuration,
#     docs/embedded.md "Flash"), so its verdict is its semihosting exit code
#     alone, and a failed check, a panic or a hang fails;
#   - the size guard: .text/.rodata of the size_* firmwares on the M3, the M0
#     and the RV32IMC, printed as a table and compared with
#     tests/firmware/sizes.baseline; any size firmware whose .text + .rodata
#     grew by more than 5% over its baseline line fails. To accept
# a change in size, update the baseline in the same commit:
#   SIZES_UPDATE=1 ci/qemu.sh     (SIZES_ONLY=1 skips the QEMU runs)
# which rewrites tests/firmware/sizes.baseline (docs/embedded.md, "Size guard").
set -euo pipefail
cd "$(dirname "$0")/../tests/firmware"
export CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/qemu"
case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$PWD/../../$CARGO_TARGET_DIR" ;; esac
QEMU_TIMEOUT="${QEMU_TIMEOUT:-120}"

SIZES_ONLY="${SIZES_ONLY:-0}"
SIZES_UPDATE="${SIZES_UPDATE:-0}"
BASELINE="$PWD/sizes.baseline"

missing=()
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
command -v qemu-system-riscv32 >/dev/null || missing+=(qemu-system-misc)
if [ "${#missing[@]}" -ne 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  pkgs=("${missing[@]}")
  # Some images ship a backported `qemu-utils` (10.x) whose `Breaks:`
  # refuses the distribution's `qemu-system-*` (7.2), and apt would then
  # remove it: keep it, at the emulators' own version (seen on this
  # project's machines in December 2026; nothing here uses it).
  if dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q 'ok installed'; then
    pkgs+=("qemu-utils=$(apt-cache policy qemu-system-arm | awk '/Candidate:/ { print $2 }')")
  fi
  $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades "${pkgs[@]}" >/dev/null
fi
rustup target add thumbv7m-none-eabi thumbv6m-none-eabi \
  riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf >/dev/null

run() { # cpu, elf, timeout -> QEMU's exit code
  local semi=(-display none -serial none -monitor none -semihosting-config enable=on,target=native)
  case "$1" in
    # RISC-V `virt`, machine mode from reset (-bios none); rv32imc: the A
    # extension off, so a stray AMO instruction traps (and the run times out).
    rv32imc) timeout "$3" qemu-system-riscv32 -machine virt -cpu rv32,a=off -bios none "${semi[@]}" -kernel "$2" ;;
    rv32imac) timeout "$3" qemu-system-riscv32 -machine virt -cpu rv32 -bios none "${semi[@]}" -kernel "$2" ;;
    *) timeout "$3" qemu-system-arm -cpu "$1" -machine lm3s6965evb "${semi[@]}" -kernel "$2" ;;
  esac
}

fail=0
alloc_features=(--features alloc,critical-section)
noalloc_features=(--no-default-features --features critical-section,noalloc)

# cpu, target, binary, cargo feature args... : build, run, check the verdict.
firmware() {
  local cpu=$1 target=$2 bin=$3
  shift 3
  echo "=== $bin on $cpu ($target)"
  timeout 900 cargo build --quiet --target "$target" --bin "$bin" "$@"
  local log="$CARGO_TARGET_DIR/$bin-$cpu.log" rc
  set +e
  run "$cpu" "$CARGO_TARGET_DIR/$target/debug/$bin" "$QEMU_TIMEOUT" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ] || ! grep -q '^PASS: ' "$log"; then
    [ "$rc" -eq 124 ] && echo "TIMEOUT after ${QEMU_TIMEOUT}s (hang or deadlock)"
    echo "FAILED: $bin on $cpu (exit $rc)"
    fail=1
  fi
}

cpus="cortex-m3:thumbv7m-none-eabi cortex-m0:thumbv6m-none-eabi rv32imc:riscv32imc-unknown-none-elf rv32imac:riscv32imac-unknown-none-elf"
[ "$SIZES_ONLY" = 1 ] && cpus=""
for pair in $cpus; do
  cpu=${pair%%:*} target=${pair#*:}
  firmware "$cpu" "$target" ctxcore-firmware "${alloc_features[@]}"
  firmware "$cpu" "$target" noalloc "${noalloc_features[@]}"
done

# No allocator in the heap-free images: without `alloc` nothing can call
# one (the link would fail for want of a `#[global_allocator]`), and here we
# look: no `__rust_alloc`/`__rg_alloc`/`__rdl_alloc` or `alloc::alloc` symbol.
llvm_bin=""
if rustup component add llvm-tools >/dev/null 2>&1; then
  llvm_bin="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
fi
if [ "$SIZES_ONLY" = 1 ]; then
  :
elif [ -n "$llvm_bin" ]; then
  echo "=== noalloc: allocator symbols"
  for target in thumbv7m-none-eabi thumbv6m-none-eabi riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf; do
    elf="$CARGO_TARGET_DIR/$target/debug/noalloc"
    hits=$("$llvm_bin/llvm-nm" "$elf" | grep -cE '__rust_(alloc|dealloc|realloc)|__rg_alloc|__rdl_alloc|5alloc5alloc' || true)
    if [ "$hits" -ne 0 ]; then
      echo "FAILED: $target noalloc links allocator symbols:"
      "$llvm_bin/llvm-nm" "$elf" | grep -E '__rust_(alloc|dealloc|realloc)|__rg_alloc|__rdl_alloc|5alloc5alloc'
      fail=1
    else
      echo "$target noalloc: no allocator symbol linked"
    fi
  done
else
  echo "llvm-tools unavailable: allocator-symbol check skipped (the link itself needs no allocator)"
fi

# Both firmwares again on ctxcore's plain spin lock (no `critical-section`):
# the handler is expected to spin forever on a lock held by the code it
# interrupted. Never fails the script: it shows the hazard the feature removes.
specs="ctxcore-firmware:alloc noalloc:noalloc"
[ "$SIZES_ONLY" = 1 ] && specs=""
for spec in $specs; do
  bin=${spec%%:*} features=${spec#*:}
  echo "=== informational: $bin on the plain spin lock (no critical-section), cortex-m3"
  timeout 900 cargo build --quiet --no-default-features --features "$features" \
    --target thumbv7m-none-eabi --bin "$bin"
  set +e
  run cortex-m3 "$CARGO_TARGET_DIR/thumbv7m-none-eabi/debug/$bin" 20 >"$CARGO_TARGET_DIR/spin-$bin.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" -eq 124 ]; then
    echo "spin lock: deadlocked as documented (the handler spun on a lock its own thread held; killed after 20 s)"
  else
    echo "spin lock: exit $rc; the handler did not hit a held lock this time"
  fi
done

# A known core problem (see tests/firmware/src/bin/scoped_prio.rs): a
# ScopedContext dropped by a task on an InterruptExecutor while the
# thread-mode timer driver it preempted still holds its node (inside
# TimerFiring::fire) spins forever in its drop. Informational until the core
# is fixed; SysTick's watchdog ends the run either way.
if [ "$SIZES_ONLY" != 1 ]; then
echo "=== informational: scoped_prio (ScopedContext dropped above the priority of its timer driver), cortex-m3"
timeout 900 cargo build --quiet --no-default-features --features critical-section,noalloc,irq-executor \
  --target thumbv7m-none-eabi --bin scoped_prio
set +e
run cortex-m3 "$CARGO_TARGET_DIR/thumbv7m-none-eabi/debug/scoped_prio" 30 >"$CARGO_TARGET_DIR/scoped_prio.log" 2>&1
rc=$?
set -e
if grep -q '^DEADLOCK' "$CARGO_TARGET_DIR/scoped_prio.log"; then
  echo "scoped_prio: deadlocked as known (exit $rc): $(grep '^DEADLOCK' "$CARGO_TARGET_DIR/scoped_prio.log")"
elif grep -q '^PASS' "$CARGO_TARGET_DIR/scoped_prio.log"; then
  echo "scoped_prio: passed (exit $rc): the core problem no longer reproduces; make this a required check"
else
  echo "scoped_prio: exit $rc:"; cat "$CARGO_TARGET_DIR/scoped_prio.log"
fi

fi

# The size firmwares (release: opt-level "s", LTO, one codegen unit), the
# images that are measured: run under QEMU, verdict by exit code only (they
# print nothing; their panic handler does not format).
size_bins_alloc="size_base size_cancel size_full"
size_bins_noalloc="size_bare size_signal size_waitcell size_static size_child size_scoped"
cpus="cortex-m3:thumbv7m-none-eabi cortex-m0:thumbv6m-none-eabi rv32imc:riscv32imc-unknown-none-elf rv32imac:riscv32imac-unknown-none-elf"
[ "$SIZES_ONLY" = 1 ] && cpus=""
for pair in $cpus; do
  cpu=${pair%%:*} target=${pair#*:}
  echo "=== size firmwares on $cpu ($target, release): exit code"
  for group in "alloc:$size_bins_alloc" "noalloc:$size_bins_noalloc"; do
    if [ "${group%%:*}" = alloc ]; then features=("${alloc_features[@]}"); else features=("${noalloc_features[@]}"); fi
    bins=(); for bin in ${group#*:}; do bins+=(--bin "$bin"); done
    timeout 900 cargo build --quiet --release --target "$target" "${bins[@]}" "${features[@]}"
    for bin in ${group#*:}; do
      set +e
      run "$cpu" "$CARGO_TARGET_DIR/$target/release/$bin" "$QEMU_TIMEOUT" >"$CARGO_TARGET_DIR/$bin-$cpu-release.log" 2>&1
      rc=$?
      set -e
      if [ "$rc" -eq 0 ]; then
        echo "$bin on $cpu: PASS (exit 0)"
      else
        [ "$rc" -eq 124 ] && echo "TIMEOUT after ${QEMU_TIMEOUT}s (hang or deadlock)"
        echo "FAILED: $bin on $cpu (exit $rc)"
        fail=1
      fi
    done
  done
done

# Their sizes, each group over its skeleton (size_base with a heap, size_bare
# without), then the guard against the committed baseline.
echo "=== code size (release), bytes; guard: .text + .rodata within 5% of tests/firmware/sizes.baseline"
if [ -n "$llvm_bin" ]; then
  size="$llvm_bin/llvm-size"
  sizes="$CARGO_TARGET_DIR/sizes.txt"
  mkdir -p "$CARGO_TARGET_DIR"
  : >"$sizes"
  for target in thumbv7m-none-eabi thumbv6m-none-eabi riscv32imc-unknown-none-elf; do
    for group in "alloc:$size_bins_alloc ctxcore-firmware" "noalloc:$size_bins_noalloc noalloc"; do
      if [ "${group%%:*}" = alloc ]; then features=("${alloc_features[@]}"); else features=("${noalloc_features[@]}"); fi
      base=""
      for bin in ${group#*:}; do
        timeout 900 cargo build --quiet --release --target "$target" --bin "$bin" "${features[@]}"
        read -r text rodata < <("$size" -A "$CARGO_TARGET_DIR/$target/release/$bin" |
          awk '$1==".text"{t=$2} $1==".rodata"{r=$2} END{print t+0, r+0}')
        [ -z "$base" ] && base=$text && first=$bin
        printf '%-28s %-17s .text %6d  .rodata %5d  .text over %-10s %+6d\n' \
          "$target" "$bin" "$text" "$rodata" "$first" "$((text - base))"
        # The guard covers the size_* firmwares; the test firmwares grow
        # with every check added to them.
        case "$bin" in size_*) echo "$target $bin $text $rodata" >>"$sizes" ;; esac
      done
    done
  done
  if [ "$SIZES_UPDATE" = 1 ]; then
    {
      echo "# .text and .rodata (bytes) of the size firmwares, release profile, written by"
      echo "# SIZES_UPDATE=1 ci/qemu.sh; ci/qemu.sh fails when a firmware's .text + .rodata"
      echo "# grows more than 5% over its line here. $(rustc -V)"
      echo "# target bin text rodata"
      cat "$sizes"
    } >"$BASELINE"
    echo "size guard: wrote $BASELINE"
  elif [ ! -f "$BASELINE" ]; then
    echo "FAILED: size guard: no $BASELINE (SIZES_UPDATE=1 ci/qemu.sh writes it)"
    fail=1
  else
    grep -q "$(rustc -V)" "$BASELINE" ||
      echo "size guard: note: the baseline was measured with another toolchain ($(sed -n 's/.*\(rustc [0-9][^ ]*\).*/\1/p' "$BASELINE" | head -1)), this is $(rustc -V | cut -d' ' -f1-2)"
    while read -r target bin text rodata; do
      old=$(awk -v t="$target" -v b="$bin" '$1==t && $2==b {print $3+$4}' "$BASELINE")
      now=$((text + rodata))
      if [ -z "$old" ]; then
        echo "FAILED: size guard: $target $bin has no baseline line (SIZES_UPDATE=1 ci/qemu.sh)"
        fail=1
      elif [ $((now * 100)) -gt $((old * 105)) ]; then
        echo "FAILED: size guard: $target $bin .text+.rodata $now > baseline $old + 5%; shrink it, or update tests/firmware/sizes.baseline in the same commit (SIZES_UPDATE=1 ci/qemu.sh)"
        fail=1
      elif [ $((now * 100)) -lt $((old * 95)) ]; then
        echo "size guard: $target $bin shrank: $now < baseline $old - 5%; consider updating the baseline"
      fi
    done <"$sizes"
    [ "$fail" -eq 0 ] && echo "size guard: every size firmware within 5% of its baseline"
  fi
else
  echo "FAILED: llvm-tools unavailable: sizes and the size guard skipped"
  fail=1
fi

if [ "$fail" -ne 0 ]; then
  echo "qemu: FAILED"
  exit 1
fi
if [ "$SIZES_ONLY" = 1 ]; then echo "qemu: sizes within the baseline (SIZES_ONLY: no QEMU runs)"; exit 0; fi
echo "qemu: both firmwares and the size firmwares passed on cortex-m3, cortex-m0, rv32imc and rv32imac; sizes within the baseline"
