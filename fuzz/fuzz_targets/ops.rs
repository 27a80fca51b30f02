//! Random programs over a context forest, checked step by step against a
//! reference model (see `fuzz/src/lib.rs`).
#![no_main]

use ctxcore_fuzz::{report_at_exit, run_program, Program};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|prog: Program| {
    report_at_exit();
    run_program(&prog, &mut |_, real, a| real.exec(a));
});
