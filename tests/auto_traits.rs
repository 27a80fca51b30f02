//! The auto traits DESIGN.md promises, pinned down at compile time.

use ctxcore::{
    AfterFunc, CancelHandle, Cause, Context, ContextError, ContextRef, Done, DoneOwned, Error, Instant, Key, Run,
    RunWithCause, ScopedContext, StaticContext,
};

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn static_<T: 'static>() {}
fn clone<T: Clone>() {}
fn copy_eq<T: Copy + Eq + core::fmt::Debug + core::fmt::Display + core::error::Error>() {}
fn instant<T: Copy + Eq + Ord + core::hash::Hash + core::fmt::Debug>() {}
fn fused<T: futures_core::future::FusedFuture>() {}
fn error<T: core::fmt::Debug + core::fmt::Display + core::error::Error>() {}

#[test]
fn auto_traits_hold() {
    send::<Context>();
    sync::<Context>();
    static_::<Context>();
    clone::<Context>();
    send::<CancelHandle>();
    sync::<CancelHandle>();
    send::<AfterFunc>();
    sync::<AfterFunc>();
    send::<Done<'static>>();
    send::<DoneOwned>();
    static_::<DoneOwned>();
    send::<Run<core::future::Ready<u8>>>();
    static_::<Run<core::future::Ready<u8>>>();
    fused::<Done<'static>>();
    fused::<DoneOwned>();
    sync::<StaticContext>();
    send::<ScopedContext<'static>>();
    sync::<ScopedContext<'static>>();
    send::<ContextRef<'static>>();
    sync::<ContextRef<'static>>();
    send::<Cause>();
    sync::<Cause>();
    clone::<Cause>();
    copy_eq::<Error>();
    send::<ContextError>();
    sync::<ContextError>();
    static_::<ContextError>();
    clone::<ContextError>();
    error::<ContextError>();
    send::<RunWithCause<core::future::Ready<u8>>>();
    static_::<RunWithCause<core::future::Ready<u8>>>();
    fused::<RunWithCause<core::future::Ready<u8>>>();
    instant::<Instant>();
    sync::<Key<u8>>();
    assert!(
        core::mem::size_of::<Key<()>>() > 0,
        "keys must not be zero-sized: they are identified by address"
    );
}

/// A `run` future over a `Send` future is `Send`, so it can be spawned.
#[test]
fn run_future_is_send_for_send_futures() {
    let (ctx, _h) = Context::background().with_cancel();
    let fut = ctx.run(async { 1 });
    fn assert_send<T: Send + 'static>(_: &T) {}
    assert_send(&fut);
    assert_eq!(futures::executor::block_on(fut), Ok(1));
}

/// A child of a done parent shares the parent's node: done at birth, same
/// error and cause, its handle reports done and cancelling it changes nothing.
#[test]
fn child_of_a_done_parent_is_done_at_birth() {
    let (parent, h) = Context::background().with_cancel();
    h.cancel_with("gone");
    let (child, ch) = parent.with_cancel();
    assert!(ch.is_done());
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(child.cause().unwrap().as_str(), Some("gone"));
    ch.cancel_with("ignored");
    assert_eq!(child.cause().unwrap().as_str(), Some("gone"));
    let (grandchild, _gh) = child.with_deadline(Instant::MAX);
    assert_eq!(grandchild.cause().unwrap().as_str(), Some("gone"));
}
