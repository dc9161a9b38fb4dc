//! Models of the memory store's claims table (`stores/claims.rs`): claims
//! of one key by several requests, and an owner's late complete, release or
//! renew racing a new claim after its lock expired, under every
//! interleaving. Each thread reads its clock before it takes the key's lock,
//! as the store does, so a thread may act with an older instant after
//! another's newer one.
//!
//! The promises: among concurrent claims exactly one owner wins (its own
//! retry wins again, the others see its claim); only the token that holds a
//! claim can complete, release or renew it, and never once it has expired
//! and another claim took the key.
//!
//! Mutations of `claims.rs` each was seen to catch: `held_by` not comparing
//! the token (concurrent claims, every stale-owner model); `held_by` ignoring
//! expiry (the expired owner); a claim of a live key replacing it
//! (concurrent claims, the late completion and renewal); `complete` not
//! checking the holder (the late completion, the expired owner).

// A model's setup that fails should fail the model.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use loom::thread;

use crate::stores::claims::{Claimed, Claims, Held};
use crate::sync::Instant;

type Table = Claims<&'static str, u32, u32, &'static str>;

const KEY: &str = "k";
const LOCK_TTL: Duration = Duration::from_secs(10);
const KEY_TTL: Duration = Duration::from_secs(3600);
const RESPONSE: &str = "201 Created";

fn model(scenario: impl Fn() + Send + Sync + 'static) {
    loom::model::Builder::new().check(scenario);
}

/// The fingerprint the request with `token` sends (distinct per token).
fn fingerprint(token: u32) -> u32 {
    token * 100
}

fn at(seconds: u64) -> Instant {
    Instant::at(Duration::from_secs(seconds))
}

/// Three claims of one key at once, two of them the same owner's (a retry
/// whose first reply was lost): one owner holds the key, every claim of its
/// token is `Acquired`, every other sees the winner's claim in progress.
#[test]
fn concurrent_claims_one_owner_wins() {
    model(|| {
        let table = Arc::new(Table::default());
        let claims: Vec<_> = [1, 2, 1]
            .into_iter()
            .map(|token| {
                let table = Arc::clone(&table);
                thread::spawn(move || {
                    let claimed = table.claim(&KEY, &token, fingerprint(token), at(0), LOCK_TTL);
                    (token, claimed)
                })
            })
            .collect();
        let answers: Vec<(u32, Claimed<u32, &str>)> = claims
            .into_iter()
            .map(|claim| claim.join().expect("a claim"))
            .collect();
        let winners: Vec<u32> = answers
            .iter()
            .filter(|(_, claimed)| *claimed == Claimed::Acquired)
            .map(|(token, _)| *token)
            .collect();
        let owner = *winners.first().expect("nobody acquired the key");
        assert!(
            winners.iter().all(|&token| token == owner),
            "two owners: {winners:?}"
        );
        for (token, claimed) in &answers {
            if *token != owner {
                assert_eq!(
                    *claimed,
                    Claimed::Existing(Held::InProgress {
                        fingerprint: fingerprint(owner)
                    })
                );
            }
        }
        assert_eq!(
            table.lookup(&KEY, at(1)),
            Some(Held::InProgress {
                fingerprint: fingerprint(owner)
            })
        );
    });
}

/// What the first owner does late: just before its lock expires, as its
/// clock says (its thread may still run after the second claim).
#[derive(Clone, Copy, Debug)]
enum Late {
    Complete,
    Release,
    Renew,
}

/// Owner 1 claims at 0 (lock until 10 s); then, in either order, owner 1
/// acts at `acts_at` seconds and owner 2 claims at 11 s. Before its lock
/// expires, owner 1's act counts only if it came first, and owner 2 gets the
/// key exactly when owner 1 did not keep it (a completion or a renewal keeps
/// it; a release or the expiry frees it). Once expired, owner 1's act never
/// counts.
fn a_stale_owner_races_a_new_claim(late: Late, acts_at: u64) {
    let expired = at(acts_at) >= at(0) + LOCK_TTL;
    model(move || {
        let table = Arc::new(Table::default());
        assert_eq!(
            table.claim(&KEY, &1, fingerprint(1), at(0), LOCK_TTL),
            Claimed::Acquired
        );
        let first = {
            let table = Arc::clone(&table);
            thread::spawn(move || match late {
                Late::Complete => table.complete(&KEY, &1, &RESPONSE, at(acts_at), KEY_TTL),
                Late::Release => table.release(&KEY, &1, at(acts_at)),
                Late::Renew => table.renew(&KEY, &1, at(acts_at), LOCK_TTL),
            })
        };
        let second = {
            let table = Arc::clone(&table);
            thread::spawn(move || table.claim(&KEY, &2, fingerprint(2), at(11), LOCK_TTL))
        };
        let acted = first.join().expect("owner 1");
        let claimed = second.join().expect("owner 2");

        let second_owns = claimed == Claimed::Acquired;
        let now = table.lookup(&KEY, at(12));
        if expired {
            assert!(
                !acted,
                "{late:?} by an owner whose lock had expired counted"
            );
        }
        match late {
            Late::Release => {
                assert!(second_owns, "a released or expired claim kept the key");
            }
            Late::Complete | Late::Renew => {
                assert!(
                    acted != second_owns,
                    "{late:?}: owner 1's act counted {acted}, owner 2 acquired {second_owns}"
                );
            }
        }
        let expected = if second_owns {
            Held::InProgress {
                fingerprint: fingerprint(2),
            }
        } else if let Late::Complete = late {
            Held::Completed {
                fingerprint: fingerprint(1),
                response: RESPONSE,
            }
        } else {
            Held::InProgress {
                fingerprint: fingerprint(1),
            }
        };
        assert_eq!(now, Some(expected.clone()), "after {late:?}");
        if !second_owns {
            assert_eq!(claimed, Claimed::Existing(expected));
        }
    });
}

#[test]
fn a_late_completion_never_records_over_a_new_claim() {
    a_stale_owner_races_a_new_claim(Late::Complete, 9);
}

#[test]
fn a_late_release_never_frees_a_new_claim() {
    a_stale_owner_races_a_new_claim(Late::Release, 9);
}

#[test]
fn a_late_renewal_never_takes_back_a_new_claim() {
    a_stale_owner_races_a_new_claim(Late::Renew, 9);
}

/// At its expiry instant the lock is gone (`now < expires_at` holds a key).
#[test]
fn an_expired_owner_can_neither_complete_release_nor_renew() {
    for late in [Late::Complete, Late::Release, Late::Renew] {
        a_stale_owner_races_a_new_claim(late, 10);
    }
}
