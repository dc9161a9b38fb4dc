//! Models of `generations`: a fill (a load's or a promotion's write into
//! L1) racing an invalidation or a `set` of its key, or an invalidation of
//! many keys (a pattern, a tag, a clear), under every interleaving.
//!
//! Each model has the cache's shape in miniature: a lower tier (the truth,
//! one value) and a first tier (one key's slot). A fill takes its lease,
//! reads the lower tier, and writes what it read into L1 under
//! `if_current`; an invalidation changes the lower tier first, then L1
//! under `bump_then` (or moves the epoch with `bump_all`, then clears L1),
//! as `Cache::set`, `invalidate` and `invalidate_pattern` do. The promise:
//! once the invalidation is done, L1 never holds the old value.
//!
//! Mutations each was seen to catch: `if_current` writing without checking
//! the generation, or checking it and writing after the lock is released;
//! `bump_all` moving the epoch without waiting for fills past their check
//! (the epoch read outside the write).

// A model's setup that fails should fail the model (clippy does not see a
// `cfg(all(test, perfkit_loom))` module as a test).
#![allow(clippy::unwrap_used)]

use loom::sync::{Arc, Mutex};
use loom::thread;

use crate::generations::Generations;

const OLD: u32 = 1;
const NEW: u32 = 2;

struct World {
    generations: Generations,
    first: Mutex<Option<u32>>,
    lower: Mutex<u32>,
}

fn world() -> Arc<World> {
    Arc::new(World {
        generations: Generations::new(),
        first: Mutex::new(None),
        lower: Mutex::new(OLD),
    })
}

/// A fill of key `k` on its own thread: lease, read the lower tier, write
/// L1 if the lease is still current.
fn fill(world: &Arc<World>) -> thread::JoinHandle<()> {
    let world = Arc::clone(world);
    thread::spawn(move || {
        let lease = world.generations.lease("k");
        let seen = *world.lower.lock().unwrap();
        world
            .generations
            .if_current(lease, || *world.first.lock().unwrap() = Some(seen));
    })
}

/// `fills` fills of `k` race an invalidation (the lower tier changed
/// first, then `invalidate` on L1, as the cache does); what L1 holds once
/// all are done.
fn race(fills: usize, invalidate: impl Fn(&World)) -> Option<u32> {
    let world = world();
    let fillers: Vec<_> = (0..fills).map(|_| fill(&world)).collect();
    *world.lower.lock().unwrap() = NEW;
    invalidate(&world);
    for filler in fillers {
        filler.join().unwrap();
    }
    *world.first.lock().unwrap()
}

/// `invalidate`, or `set` with `NEW`: L1 changed under a generation bump.
fn bump_then(first: Option<u32>) -> impl Fn(&World) {
    move |world| {
        world
            .generations
            .bump_then("k", || *world.first.lock().unwrap() = first);
    }
}

#[test]
fn a_fill_racing_an_invalidation_never_lands_the_old_value() {
    loom::model(|| {
        assert_ne!(race(1, bump_then(None)), Some(OLD), "a stale fill landed");
    });
}

#[test]
fn a_fill_racing_a_set_never_overwrites_it_with_the_old_value() {
    loom::model(|| {
        let first = race(1, bump_then(Some(NEW)));
        assert_eq!(first, Some(NEW), "the set's value was lost");
    });
}

#[test]
fn a_fill_racing_an_invalidation_of_many_keys_never_lands_the_old_value() {
    loom::model(|| {
        // A pattern, tag or clear: the epoch moves, then L1 is cleared.
        let first = race(1, |world| {
            world.generations.bump_all();
            *world.first.lock().unwrap() = None;
        });
        assert_ne!(first, Some(OLD), "a stale fill landed");
    });
}

#[test]
fn two_fills_and_an_invalidation() {
    loom::model(|| {
        assert_ne!(race(2, bump_then(None)), Some(OLD), "a stale fill landed");
    });
}
