use std::{env, fs, path::PathBuf};
fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    // lm3s6965evb (Cortex-M) or QEMU virt (RISC-V): the linker scripts of
    // cortex-m-rt and riscv-rt both include `memory.x` (no file of that name
    // here: the linker would find it in the working directory first).
    let riscv = env::var("TARGET").unwrap_or_default().starts_with("riscv");
    let memory = if riscv { "memory-riscv.x" } else { "memory-cortex-m.x" };
    fs::copy(memory, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory-cortex-m.x");
    println!("cargo:rerun-if-changed=memory-riscv.x");
}
