//! The bridge to tokio-util's `CancellationToken` (issue 14, part 3),
//! cancelled through each side: `Context::cancellation_token` (context →
//! token) and `Context::with_cancellation_token` (token → context), and
//! that neither side leaks when the other is dropped.
#![cfg(feature = "tokio-util")]

use ctxcore::{Context, ContextToken, Error, ManualClock, TokenCancelled};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------
// Per-thread live-byte counting, to show that nothing is left behind.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn note(bytes: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
}

// SAFETY: forwards every call to `System`; the counter is a const-initialised
// thread-local without a destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from our caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: forwarded from our caller.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from our caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

// ---------------------------------------------------------------------------
// Context → token

#[test]
fn token_is_cancelled_by_the_context_handle_an_ancestor_and_a_deadline() {
    let (ctx, h) = Context::background().with_cancel();
    let token = ctx.cancellation_token();
    let lib = token.clone();
    assert!(!lib.is_cancelled());
    h.cancel();
    assert!(lib.is_cancelled());
    assert!(token.is_cancelled());

    let (root, h) = Context::background().with_cancel();
    let (child, _c) = root.with_cancel();
    let token = child.cancellation_token();
    h.cancel_with("shutdown");
    assert!(token.is_cancelled());

    static CLOCK: ManualClock = ManualClock::new();
    let (ctx, _h) = Context::with_timer(&CLOCK).with_timeout(Duration::from_secs(1));
    let token = ctx.cancellation_token();
    assert!(!token.is_cancelled());
    CLOCK.advance(Duration::from_secs(1));
    assert!(token.is_cancelled(), "the deadline cancels the token");
}

#[test]
fn token_of_a_done_context_is_cancelled_at_once_and_of_background_never() {
    let (ctx, h) = Context::background().with_cancel();
    h.cancel();
    assert!(ctx.cancellation_token().is_cancelled());
    let token = Context::background().cancellation_token();
    assert!(!token.is_cancelled());
    assert!(!ctx.without_cancel().cancellation_token().is_cancelled());
}

#[test]
fn dropping_the_context_token_unlinks_it() {
    let (ctx, h) = Context::background().with_cancel();
    let token = ctx.cancellation_token();
    let clone = token.clone();
    drop(token);
    h.cancel();
    assert!(
        !clone.is_cancelled(),
        "a dropped ContextToken no longer follows the context"
    );

    // Detached, it follows the context to the end.
    let (ctx, h) = Context::background().with_cancel();
    let token: CancellationToken = ctx.cancellation_token().detach();
    h.cancel();
    assert!(token.is_cancelled());
}

/// A long-lived context that hands out (and drops) many tokens does not
/// grow: each `ContextToken`'s link is gone with it.
#[test]
fn a_long_lived_context_does_not_accumulate_links() {
    let (ctx, h) = Context::background().with_cancel();
    let warm: ContextToken = ctx.cancellation_token();
    drop(warm);
    let before = live();
    for _ in 0..1000 {
        let token = ctx.cancellation_token();
        let lib = token.clone();
        assert!(!lib.is_cancelled());
    }
    assert_eq!(live() - before, 0, "bytes left behind by 1000 dropped ContextTokens");
    drop(h);
}

/// A library that only takes tokens, on a multi-threaded runtime: tasks
/// waiting on the token end when the context is cancelled from elsewhere.
#[cfg_attr(miri, ignore = "tokio's runtime under Miri is too slow")]
#[test]
fn tasks_waiting_on_the_token_end_when_the_context_is_cancelled() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (ctx, h) = Context::background().with_cancel();
        let token = ctx.cancellation_token();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let t = token.child_token();
                tokio::spawn(async move { t.cancelled().await })
            })
            .collect();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            h.cancel();
        });
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t).await.unwrap().unwrap();
        }
    });
}

// ---------------------------------------------------------------------------
// Token → context

#[test]
fn the_token_cancels_the_context_and_its_subtree_with_a_typed_cause() {
    let token = CancellationToken::new();
    let (ctx, _h) = Context::background().with_cancellation_token(&token);
    let (child, _c) = ctx.with_cancel();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    child.after_func(move || {
        f.fetch_add(1, Ordering::SeqCst);
    });
    assert!(!ctx.is_done());
    token.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert!(child.is_done());
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "after-funcs run on the cancelling thread"
    );
    let cause = child.cause().unwrap();
    assert_eq!(cause.downcast_ref::<TokenCancelled>(), Some(&TokenCancelled));
    let err = child.error().unwrap();
    assert_eq!(err.to_string(), "context canceled: cancellation token cancelled");
}

#[test]
fn a_parent_token_cancels_through_a_child_token() {
    let parent = CancellationToken::new();
    let (ctx, _h) = Context::background().with_cancellation_token(&parent.child_token());
    parent.cancel();
    assert!(ctx.cause().unwrap().is::<TokenCancelled>());
}

#[test]
fn a_cancelled_token_gives_a_done_context() {
    let token = CancellationToken::new();
    token.cancel();
    let (ctx, _h) = Context::background().with_cancellation_token(&token);
    assert!(ctx.is_done());
    assert!(ctx.cause().unwrap().is::<TokenCancelled>());
}

#[test]
fn the_other_cancels_win_first_and_leave_the_token_alone() {
    // The handle.
    let token = CancellationToken::new();
    let (ctx, h) = Context::background().with_cancellation_token(&token);
    h.cancel_with("handle");
    assert_eq!(ctx.cause().unwrap().as_str(), Some("handle"));
    token.cancel();
    assert_eq!(ctx.cause().unwrap().as_str(), Some("handle"), "first cancel wins");

    // An ancestor, before and after.
    let token = CancellationToken::new();
    let (root, rh) = Context::background().with_cancel();
    let (ctx, _h) = root.with_cancellation_token(&token);
    rh.cancel_with("root");
    assert_eq!(ctx.cause().unwrap().as_str(), Some("root"));
    assert!(!token.is_cancelled(), "the context side never cancels the token");
    let (late, _h) = root.with_cancellation_token(&token);
    assert_eq!(late.cause().unwrap().as_str(), Some("root"));
}

#[cfg_attr(miri, ignore = "tokio's runtime under Miri is too slow")]
#[test]
fn a_task_waiting_on_the_context_wakes_when_the_token_is_cancelled() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let (ctx, _h) = Context::background().with_cancellation_token(&shutdown);
        let waiting = tokio::spawn(ctx.done_owned());
        let running = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.run(std::future::pending::<()>()).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = shutdown.clone();
        tokio::spawn(async move { s.cancel() }).await.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), waiting)
                .await
                .unwrap()
                .unwrap(),
            Error::Canceled
        );
        assert_eq!(running.await.unwrap(), Err(Error::Canceled));
    });
}

/// Nothing leaks when either side goes away: a context dropped (its handle
/// with it) releases the bridge and its clone of the token; a token dropped
/// by its owner while the context lives is released once the context is
/// done.
#[test]
fn neither_side_leaks() {
    let (root, _rh) = Context::background().with_cancel();
    let token = CancellationToken::new();
    // Warm up whatever is allocated once.
    drop(root.with_cancellation_token(&token));
    let before = live();
    for _ in 0..500 {
        let (ctx, h) = root.with_cancellation_token(&token);
        let (_child, _c) = ctx.with_cancel();
        drop(h);
        drop(ctx);
    }
    assert_eq!(live() - before, 0, "bytes left behind by 500 dropped bridged contexts");

    let before = live();
    for _ in 0..500 {
        let own = CancellationToken::new();
        let (ctx, h) = root.with_cancellation_token(&own);
        drop(own); // only the bridge holds it now
        assert!(!ctx.is_done());
        h.cancel();
        assert!(ctx.is_done());
    }
    assert_eq!(live() - before, 0, "bytes left behind by 500 dropped tokens");

    // Cancelled through the token: the bridge is released too.
    let before = live();
    for _ in 0..500 {
        let own = CancellationToken::new();
        let (ctx, h) = root.with_cancellation_token(&own);
        own.cancel();
        assert!(ctx.is_done());
        drop((ctx, h));
    }
    assert_eq!(live() - before, 0, "bytes left behind by 500 token cancels");
}

/// A panicking after-func on one bridged context neither escapes into the
/// token's `cancel()` nor keeps the token's other waiters from waking.
#[test]
fn a_panicking_after_func_does_not_stop_the_other_waiters() {
    let token = CancellationToken::new();
    let (a, _ha) = Context::background().with_cancellation_token(&token);
    let (b, _hb) = Context::background().with_cancellation_token(&token);
    let (c, _hc) = Context::background().with_cancellation_token(&token);
    b.after_func(|| panic!("after-func panics (expected in this test)"));
    let other = token.clone();
    let watcher = std::thread::spawn(move || futures::executor::block_on(other.cancelled()));
    std::thread::sleep(Duration::from_millis(5));
    token.cancel(); // must not panic here
    for ctx in [&a, &b, &c] {
        assert!(ctx.is_done());
        assert!(ctx.cause().unwrap().is::<TokenCancelled>());
    }
    watcher.join().unwrap();
}

/// Both directions chained: token → context → token.
#[test]
fn both_ways_chained() {
    let upstream = CancellationToken::new();
    let (ctx, _h) = Context::background().with_cancellation_token(&upstream);
    let (query, _q) = ctx.with_timeout(Duration::from_secs(60));
    let downstream = query.cancellation_token();
    upstream.cancel();
    assert!(downstream.is_cancelled());
}

/// The token cancelled from other threads while contexts are made from it
/// and their parents cancelled: every context ends done, with the token's
/// cause or its parent's, never live.
#[cfg_attr(miri, ignore = "many threads and rounds")]
#[test]
fn racing_token_cancel_parent_cancel_and_creation() {
    for _ in 0..300 {
        let token = CancellationToken::new();
        let (root, rh) = Context::background().with_cancel();
        let t = token.clone();
        let canceller = std::thread::spawn(move || t.cancel());
        let parent = std::thread::spawn(move || rh.cancel_with("parent"));
        let (ctx, _h) = root.with_cancellation_token(&token);
        canceller.join().unwrap();
        parent.join().unwrap();
        assert!(ctx.is_done());
        let cause = ctx.cause().unwrap();
        assert!(
            cause.is::<TokenCancelled>() || cause.as_str() == Some("parent"),
            "{cause}"
        );
    }
}
