//! loom models of the drain protocol (`src/tracker.rs`): the guard count
//! with its `CLOSED` bit, and the wake-up through the tracker's "drained"
//! context. Also the group's first-error slot (`src/group.rs`), whose
//! spawned tasks report through a tracker.
//!
//! Run with `ci/loom.sh` (`RUSTFLAGS="--cfg loom" cargo test --release` in `loom/`).
#![cfg(loom)]

use ctxcore::{Context, Group, TaskAbandoned, Tracker};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// The last guard dropped on another thread while the owner cancels and
/// waits: the wait always returns (loom reports a deadlock on a lost
/// wake-up), and what the guard's owner did before dropping it is visible
/// after the wait (a relaxed write: only the protocol's happens-before
/// makes it visible; tracker.rs invariant 4).
#[test]
fn last_guard_drop_vs_cancel_and_wait() {
    loom::model(|| {
        let tracker = Tracker::new(&Context::background());
        let work = Arc::new(AtomicUsize::new(0));
        let guard = tracker.track().unwrap();
        let w = work.clone();
        let t = thread::spawn(move || {
            w.store(1, Ordering::Relaxed);
            drop(guard);
        });
        loom::future::block_on(tracker.cancel_and_wait("shutdown"));
        assert_eq!(work.load(Ordering::Relaxed), 1);
        assert_eq!(tracker.in_flight(), 0);
        assert!(tracker.is_drained());
        t.join().unwrap();
    });
}

/// Two guards dropped on two threads (one a clone) while the owner drains:
/// both are waited for.
#[test]
fn two_guards_on_two_threads() {
    loom::model(|| {
        let tracker = Tracker::new(&Context::background());
        let work = Arc::new(AtomicUsize::new(0));
        let a = tracker.track().unwrap();
        let b = a.clone();
        let threads: Vec<_> = [a, b]
            .into_iter()
            .map(|guard| {
                let w = work.clone();
                thread::spawn(move || {
                    w.fetch_add(1, Ordering::Relaxed);
                    drop(guard);
                })
            })
            .collect();
        tracker.close();
        loom::future::block_on(tracker.wait());
        assert_eq!(work.load(Ordering::Relaxed), 2);
        for t in threads {
            t.join().unwrap();
        }
    });
}

/// `track` racing `close`: the new guard is either refused or counted, and
/// a counted one is waited for (tracker.rs invariant 1).
#[test]
fn track_vs_close() {
    loom::model(|| {
        let tracker = Arc::new(Tracker::new(&Context::background()));
        let work = Arc::new(AtomicUsize::new(0));
        let (tr, w) = (tracker.clone(), work.clone());
        let t = thread::spawn(move || match tr.track() {
            Some(guard) => {
                w.store(1, Ordering::Relaxed);
                drop(guard);
                true
            }
            None => false,
        });
        tracker.close();
        loom::future::block_on(tracker.wait());
        let tracked = work.load(Ordering::Relaxed) == 1;
        let got_guard = t.join().unwrap();
        // A guard that was counted finished before the wait returned.
        assert_eq!(tracked, got_guard);
    });
}

/// A clone taken on one thread while the original is dropped on another and
/// the owner closes: the count never reaches zero early (tracker.rs
/// invariant 2), so the clone's work is waited for.
#[test]
fn clone_vs_drop_vs_close() {
    loom::model(|| {
        let tracker = Tracker::new(&Context::background());
        let work = Arc::new(AtomicUsize::new(0));
        let guard = tracker.track().unwrap();
        let w = work.clone();
        let t = thread::spawn(move || {
            let subtask = guard.clone();
            drop(guard);
            w.store(1, Ordering::Relaxed);
            drop(subtask);
        });
        tracker.close();
        loom::future::block_on(tracker.wait());
        assert_eq!(work.load(Ordering::Relaxed), 1);
        t.join().unwrap();
    });
}

#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Spawned,
    InTask,
    Abandoned,
}
impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for Failure {}
impl From<TaskAbandoned> for Failure {
    fn from(_: TaskAbandoned) -> Self {
        Failure::Abandoned
    }
}

/// A spawned group task failing on another thread while an in-task future
/// fails in the waiting one: exactly one error wins, it is the cause of the
/// group's context, and `wait` returns it after both have finished.
#[test]
fn group_spawned_error_vs_in_task_error() {
    loom::model(|| {
        let mut group = Group::<Failure>::new(&Context::background());
        let ctx = group.context().clone();
        let mut task = None;
        group.spawn_with(|t| task = Some(t), async { Err(Failure::Spawned) });
        group.spawn(async { Err(Failure::InTask) });
        let task = task.unwrap();
        let t = thread::spawn(move || loom::future::block_on(task));
        let err = loom::future::block_on(group.wait()).unwrap_err();
        assert_ne!(err, Failure::Abandoned);
        assert_eq!(ctx.cause().unwrap().downcast_ref::<Failure>(), Some(&err));
        t.join().unwrap();
    });
}
