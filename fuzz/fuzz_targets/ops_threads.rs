//! The `ops` program with a seeded schedule: each action runs either on the
//! fuzzing thread or on a freshly spawned thread, one at a time (lock-step),
//! so every run is deterministic and reproducible. It checks what changes
//! when objects cross threads — wakers registered on one thread and woken on
//! another, after-funcs run by the cancelling thread, contexts, futures and
//! handles dropped away from where they were made — against the same model.
//! True races are not explored here (they would make inputs irreproducible);
//! loom models and `tests/stress.rs` under ThreadSanitizer cover those.
#![no_main]

use ctxcore_fuzz::{report_at_exit, run_program, Program};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, Program)| {
    report_at_exit();
    let (schedule, prog) = input;
    run_program(&prog, &mut |i, real, a| {
        if schedule.rotate_right(i as u32) & 1 == 1 {
            std::thread::scope(|s| s.spawn(|| real.exec(a)).join().expect("action panicked"))
        } else {
            real.exec(a)
        }
    });
});
