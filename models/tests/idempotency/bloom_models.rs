//! Models of the Bloom filter's generations (`bloom.rs`): concurrent `see`s
//! of one key, and a rotation (the clock read every second insert under
//! `perfkit_loom`, every 64th otherwise) racing the `see` of a key seen
//! before, under every interleaving.
//!
//! The promises: a key is never reported unseen (`before == false`) after
//! it was seen, as long as at most one rotation came between (a key is
//! remembered for at least one rotation period); two concurrent `see`s of a
//! new key report it unseen at most once (the layer's fast path is taken by
//! one of them at most).
//!
//! Mutations of `bloom.rs` each was seen to catch: the check asking only
//! the current generation (the rotation model); a rotation dropping the
//! generations' newer one (the rotation model); `see` checking the current
//! generation without setting the key (both models).

// A model's setup that fails should fail the model.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use loom::thread;

use crate::bloom::SeenFilter;
use crate::sync::advance;

const ROTATE_EVERY: Duration = Duration::from_secs(60);

fn model(scenario: impl Fn() + Send + Sync + 'static) {
    loom::model::Builder::new().check(scenario);
}

fn filter() -> Arc<SeenFilter> {
    Arc::new(SeenFilter::new(1_000, 0.001, ROTATE_EVERY).expect("valid parameters"))
}

#[test]
fn concurrent_sees_of_a_new_key_report_it_new_at_most_once() {
    model(|| {
        let filter = filter();
        let key = filter.digest("k");
        let sees: Vec<_> = (0..2)
            .map(|_| {
                let filter = Arc::clone(&filter);
                thread::spawn(move || filter.see(key).before)
            })
            .collect();
        let new = sees
            .into_iter()
            .map(|see| see.join().expect("a see"))
            .filter(|before| !before)
            .count();
        assert!(new <= 1, "{new} requests took the fast path for one key");
        assert!(filter.see(key).before, "a key seen was forgotten");
    });
}

/// A key seen, then: the clock moves past the rotation period while other
/// keys arrive (their inserts read the clock and rotate), and the key is
/// seen again, in any order. One rotation at most: the key is remembered.
#[test]
fn a_key_seen_survives_a_rotation() {
    model(|| {
        let filter = filter();
        let key = filter.digest("k");
        let _ = filter.see(key);
        let clock = thread::spawn(|| advance(ROTATE_EVERY));
        let others = {
            let filter = Arc::clone(&filter);
            thread::spawn(move || {
                for other in ["a", "b"] {
                    let _ = filter.see(filter.digest(other));
                }
            })
        };
        let again = {
            let filter = Arc::clone(&filter);
            thread::spawn(move || filter.see(key).before)
        };
        assert!(
            again.join().expect("the key again"),
            "a key seen was forgotten"
        );
        clock.join().expect("the clock");
        others.join().expect("other keys");
        assert!(filter.see(key).before, "a key seen was forgotten");
        assert!(filter.stats().rotations <= 1);
    });
}
