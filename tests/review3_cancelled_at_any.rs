//! Review: an `any` node's cause and location must come from the same parent.
use ctxcore::Context;
use std::sync::{Arc, Barrier};

#[test]
fn any_cause_and_location_from_one_parent() {
    let mut bad = 0;
    for i in 0..3_000u32 {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        let others: Vec<_> = (0..512).map(|_| Context::background().with_cancel()).collect();
        let mut parents = vec![&a];
        parents.extend(others.iter().map(|(c, _)| c));
        parents.push(&b);
        let any = Context::any(parents);
        let bar = Arc::new(Barrier::new(2));
        let b2 = bar.clone();
        let t = std::thread::spawn(move || {
            b2.wait();
            for _ in 0..(i * 7919 % 4000) {
                std::hint::spin_loop();
            }
            ha.cancel_with("a");
            line!() - 1
        });
        bar.wait();
        hb.cancel_with("b");
        let lb = line!() - 1;
        let la = t.join().unwrap();
        let cause = any.cause().unwrap().as_str().unwrap();
        let line = any.cancelled_at().unwrap().line();
        let expect = if cause == "a" { la } else { lb };
        if line != expect {
            bad += 1;
            eprintln!("mismatch: cause {cause:?} but cancelled_at line {line} (a: {la}, b: {lb})");
        }
    }
    assert_eq!(bad, 0);
}

#[test]
fn born_done_any_cause_and_location_from_one_parent() {
    let mut bad = 0;
    for i in 0..3_000u32 {
        let (a, ha) = Context::background().with_cancel();
        let (b, hb) = Context::background().with_cancel();
        hb.cancel_with("b");
        let lb = line!() - 1;
        let bar = Arc::new(Barrier::new(2));
        let b2 = bar.clone();
        let t = std::thread::spawn(move || {
            b2.wait();
            for _ in 0..(i * 7919 % 4000) {
                std::hint::spin_loop();
            }
            ha.cancel_with("a");
            line!() - 1
        });
        bar.wait();
        let others: Vec<_> = (0..512).map(|_| Context::background().with_cancel()).collect();
        let mut parents = vec![&a];
        parents.extend(others.iter().map(|(c, _)| c));
        parents.push(&b);
        let any = Context::any(parents);
        let la = t.join().unwrap();
        let cause = any.cause().unwrap().as_str().unwrap();
        let line = any.cancelled_at().unwrap().line();
        let expect = if cause == "a" { la } else { lb };
        if line != expect {
            bad += 1;
            eprintln!("mismatch: cause {cause:?} but cancelled_at line {line} (a: {la}, b: {lb})");
        }
    }
    assert_eq!(bad, 0);
}

/// More distinct locations than located immortal nodes, racing children.
#[test]
fn many_plain_parents_children_report_their_parents_site() {
    let parents: Vec<_> = (0..64).map(|_| Context::background().with_cancel()).collect();
    let mut lines = Vec::new();
    for (i, (_, h)) in parents.iter().enumerate() {
        // Distinct call sites: one per arm.
        let l = match i % 4 {
            0 => {
                h.cancel();
                line!() - 1
            }
            1 => {
                h.cancel();
                line!() - 1
            }
            2 => {
                h.cancel();
                line!() - 1
            }
            _ => {
                h.cancel();
                line!() - 1
            }
        };
        lines.push(l);
    }
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    for ((p, _), l) in parents.iter().zip(&lines) {
                        let (c, _h) = p.with_cancel();
                        assert_eq!(c.cancelled_at().unwrap().line(), *l);
                        let (gc, _g) = c.with_cancel();
                        assert_eq!(gc.cancelled_at().unwrap().line(), *l);
                        assert_eq!(c.cause().unwrap().as_error(), Some(ctxcore::Error::Canceled));
                    }
                }
            });
        }
    });
}

static ROOT: ctxcore::StaticContext = ctxcore::StaticContext::new();
#[test]
fn child_of_plainly_cancelled_static() {
    ROOT.cancel();
    let l = line!() - 1;
    let (c, _h) = ROOT.context().with_cancel();
    assert_eq!(c.cancelled_at().unwrap().line(), l);
    let (gc, _g) = c.with_cancel();
    assert_eq!(gc.cancelled_at().unwrap().line(), l);
    println!("{c:?}");
}
