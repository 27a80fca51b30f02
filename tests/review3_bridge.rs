//! Review tests: the tokio-util bridge under re-entrancy and races.
#![cfg(feature = "tokio-util")]
use ctxcore::{Context, TokenCancelled};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// token.cancel() from inside an after-func of the child, while the child
/// is being cancelled by its handle.
#[test]
fn token_cancel_inside_child_after_func() {
    let token = CancellationToken::new();
    let (ctx, h) = Context::background().with_cancellation_token(&token);
    let t = token.clone();
    ctx.after_func(move || t.cancel());
    drop(h);
    assert!(token.is_cancelled());
    assert!(ctx.is_done());
}

/// The child's after-func reads the parent token's state while the parent
/// token cancels the (child-token-bridged) context: no tokio-util lock held.
#[test]
fn parent_token_state_read_from_after_func() {
    let parent = CancellationToken::new();
    let child = parent.child_token();
    let (ctx, _h) = Context::background().with_cancellation_token(&child);
    let p = parent.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    ctx.after_func(move || {
        let _c = p.child_token();
        if p.is_cancelled() {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    parent.cancel();
    assert!(ctx.cause().unwrap().is::<TokenCancelled>());
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// Token → context → token cycle through two bridges.
#[test]
fn cycle_through_two_bridges() {
    let t0 = CancellationToken::new();
    let (a, ha) = Context::background().with_cancellation_token(&t0);
    let ta = a.cancellation_token().detach();
    let (b, _hb) = Context::background().with_cancellation_token(&ta);
    let t0c = t0.clone();
    b.after_func(move || t0c.cancel()); // back to the first token
    drop(ha);
    assert!(b.is_done() && t0.is_cancelled());
}

/// A chain of bridges: the cancel nests one call per link (documented in
/// src/tokio_util.rs: keep chains short); 100 links fit a 2 MiB stack with
/// room to spare (500 overflowed a debug build in review).
#[cfg_attr(miri, ignore)]
#[test]
fn long_bridge_chain() {
    let n = std::env::var("CHAIN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100usize);
    let (root, h) = Context::background().with_cancel();
    let mut ctx = root.clone();
    let mut keep = Vec::new();
    for _ in 0..n {
        let t = ctx.cancellation_token().detach();
        let (c, hc) = Context::background().with_cancellation_token(&t);
        keep.push(hc);
        ctx = c;
    }
    let last = ctx.clone();
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || h.cancel())
        .unwrap()
        .join()
        .unwrap();
    assert!(last.is_done());
}

/// Handle drop racing token.cancel() and ContextToken drop racing cancel.
#[cfg_attr(miri, ignore)]
#[test]
fn stress_handle_drop_vs_token_cancel() {
    for _ in 0..2000 {
        let token = CancellationToken::new();
        let (ctx, h) = Context::background().with_cancellation_token(&token);
        let ct = ctx.cancellation_token();
        let kept = ct.token().clone();
        let t = token.clone();
        let a = std::thread::spawn(move || t.cancel());
        let b = std::thread::spawn(move || drop(h));
        let c = std::thread::spawn(move || drop(ct));
        a.join().unwrap();
        b.join().unwrap();
        c.join().unwrap();
        assert!(ctx.is_done());
        let _ = kept.is_cancelled();
    }
}

/// Few-thread variant for Miri.
#[test]
fn race_small() {
    for _ in 0..3 {
        let token = CancellationToken::new();
        let (ctx, h) = Context::background().with_cancellation_token(&token);
        let ct = ctx.cancellation_token();
        let t = token.clone();
        let a = std::thread::spawn(move || t.cancel());
        let c = std::thread::spawn(move || drop(ct));
        drop(h);
        a.join().unwrap();
        c.join().unwrap();
        assert!(ctx.is_done());
    }
}
