//! Models of `lookups`: concurrent `get` misses of one key sharing one look
//! at the lower tiers, under every interleaving, with the ways a lookup
//! ends early: its caller dropped, its waiters out of patience (a stalled
//! caller), an invalidation detaching it.
//!
//! Each caller runs `get`'s loop (`Cache::get_below_first`): take a turn;
//! lead (look, then finish with the value) or wait; on `Retry` or
//! `Stalled`, take a turn again. The promises: every caller ends (loom fails
//! a model in which a thread waits forever: a lost wake-up, a waiter nobody
//! settles), every caller that gets a value gets the lower tier's, and no
//! entry is left in the map.
//!
//! `Notify` is tokio's (loom-tested by tokio); these models check what is
//! built around it: the registration before the check, who settles which
//! waiters (`crate::sync::Notify` gives loom a switch point where a waiter
//! registers). Every interleaving with up to three preemptions is explored.
//! Mutations each was seen to catch (loom reports a deadlock): the waiter's
//! `Notified` made after the outcome is checked (all four models); `finish`
//! not settling the waiters' slot (all four); a dropped first caller not
//! settling it (the cancelled one); `detach` (the stalled one) or `forget`
//! (the invalidation) removing the entry without sending its waiters to look
//! again.

// A model's setup that fails should fail the model (clippy does not see a
// `cfg(all(test, perfkit_loom))` module as a test).
#![allow(clippy::expect_used)]

use std::time::Duration;

use loom::future::block_on;
use loom::thread;

use crate::lookups::{Lookups, Turn, Waited};
use crate::sync::Arc;

const VALUE: u32 = 7;
const KEY: &str = "k";

/// How a caller behaves.
#[derive(Clone, Copy, PartialEq)]
enum Caller {
    /// Waits as long as it takes; leads to the end.
    Patient,
    /// Out of patience at once when it has to wait (a stalled first
    /// caller, as the waiter's timeout sees it): detaches that lookup.
    Impatient,
    /// Leads, then is dropped before it finishes (cancelled).
    Cancelled,
}

/// Every interleaving with up to `PREEMPTIONS` preemptions (loom's bound;
/// most concurrency bugs need two or three): three threads with every lock,
/// atomic and reference count a switch point are beyond an exhaustive
/// search.
fn model(scenario: impl Fn() + Send + Sync + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTIONS);
    }
    builder.check(scenario);
}

const PREEMPTIONS: usize = 3;

fn lookups() -> Arc<Lookups<u32>> {
    Arc::new(Lookups::new(Duration::from_secs(60)))
}

/// `get`'s loop over the shared lookups; the value it returns.
async fn get(lookups: &Lookups<u32>, caller: Caller) -> Option<u32> {
    let mut impatient = caller == Caller::Impatient;
    loop {
        match lookups.turn(KEY) {
            Turn::Lead(leader) => {
                if caller == Caller::Cancelled {
                    drop(leader);
                    return None;
                }
                let found = Some(Arc::new(VALUE));
                leader.finish(found.as_ref());
                return found.map(|value| *value);
            }
            Turn::Wait(slot) if impatient => {
                impatient = false;
                lookups.detach(KEY, &slot);
            }
            Turn::Wait(slot) => match lookups.wait(&slot).await {
                Waited::Found(found) => return found.map(|value| *value),
                Waited::Retry => {}
                Waited::Stalled => lookups.detach(KEY, &slot),
            },
        }
    }
}

/// Runs each caller on a thread of its own while `meanwhile` runs on this
/// one, then checks the promise: every caller that was not cancelled got
/// the lower tier's value, and no entry is left in the map.
fn every_caller_ends_with_the_value(callers: &'static [Caller], meanwhile: fn(&Lookups<u32>)) {
    model(move || {
        let lookups = lookups();
        let handles: Vec<_> = callers
            .iter()
            .map(|&caller| {
                let lookups = Arc::clone(&lookups);
                thread::spawn(move || block_on(get(&lookups, caller)))
            })
            .collect();
        meanwhile(&lookups);
        for (handle, caller) in handles.into_iter().zip(callers) {
            let got = handle.join().expect("a caller panicked");
            if *caller != Caller::Cancelled {
                assert_eq!(got, Some(VALUE), "a caller ended without the value");
            }
        }
        assert!(lookups.running_is_empty(), "an entry was left");
    });
}

#[test]
fn concurrent_misses_share_the_value_and_leave_nothing_behind() {
    every_caller_ends_with_the_value(&[Caller::Patient, Caller::Patient], |_| {});
}

#[test]
fn a_cancelled_first_caller_hands_the_lookup_on() {
    every_caller_ends_with_the_value(&[Caller::Cancelled, Caller::Patient], |_| {});
}

#[test]
fn waiters_out_of_patience_share_a_new_lookup() {
    every_caller_ends_with_the_value(
        &[Caller::Patient, Caller::Impatient, Caller::Patient],
        |_| {},
    );
}

#[test]
fn an_invalidation_detaching_the_lookup_strands_nobody() {
    every_caller_ends_with_the_value(&[Caller::Patient, Caller::Patient], |lookups| {
        lookups.forget(KEY);
    });
}
