//! A warm L1 hit allocates nothing, and an L2 hit little more than a raw
//! `GET`: counted with a global allocator that counts, in a test binary of
//! its own. Only the measuring thread's
//! allocations count: libtest's main thread keeps its books while the test
//! runs (on a loaded machine its table of running tests grew inside the
//! measured loop and failed the test with 4 allocations that were not ours).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

mod first_tier;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use perfkit_tiered_cache::Cache;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is an atomic touched only when this thread counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_warm_l1_hit_allocates_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache: Cache<String> = Cache::builder()
            .tier(first_tier::l1(1_000))
            .build()
            .unwrap();
        cache.set("agent:42", "Ada".to_owned()).await;
        for _ in 0..1_000 {
            assert!(cache.get("agent:42").await.is_some()); // warm up moka's internals
        }
        COUNTING.with(|on| on.set(true));
        for _ in 0..10_000 {
            let hit = cache.get("agent:42").await;
            assert!(hit.is_some());
        }
        COUNTING.with(|on| on.set(false));
        let allocations = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(
            allocations, 0,
            "{allocations} allocations in 10,000 warm L1 hits"
        );
    });
}

/// Allocations per operation, counted on this thread over `n` calls of `op`.
#[cfg(feature = "redis")]
async fn per_op<F: std::future::Future<Output = ()>>(n: u64, mut op: impl FnMut(u64) -> F) -> f64 {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.with(|on| on.set(true));
    for i in 0..n {
        op(i).await;
    }
    COUNTING.with(|on| on.set(false));
    #[allow(clippy::cast_precision_loss)]
    let per = (ALLOCATIONS.load(Ordering::SeqCst) - before) as f64 / n as f64;
    per
}

#[cfg(feature = "redis")]
#[test]
fn an_l2_hit_allocates_little_more_than_a_raw_get() {
    use perfkit_tiered_cache::RedisTier;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Some(redis) = perfkit_test_support::redis().await else {
            return;
        };
        const KEYS: u64 = 2_000;
        let tier = || {
            RedisTier::builder(redis.url())
                .prefix(redis.prefix())
                .build()
                .unwrap()
        };
        let writer: Cache<String> = Cache::builder().tier(tier()).build().unwrap();
        for i in 0..KEYS {
            writer
                .set(&format!("k{i}"), "Ada Lovelace, analyst".to_owned())
                .await;
        }
        // A raw GET on the connection type the tier uses.
        let client = redis::Client::open(redis.url()).unwrap();
        let raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let stored: Vec<String> = (0..KEYS).map(|i| redis.key(&format!("k{i}"))).collect();
        // A cache with an empty L1: every get is an L2 hit, promoted into L1.
        let reader: Cache<String> = Cache::builder()
            .tier(first_tier::l1(10_000))
            .tier(tier())
            .build()
            .unwrap();
        assert!(reader.get("k0").await.is_some()); // connects
        let raw_get = per_op(KEYS - 1, |i| {
            let mut raw = raw.clone();
            let key = &stored[usize::try_from(i + 1).unwrap()];
            async move {
                let found: Option<Vec<u8>> =
                    redis::AsyncCommands::get(&mut raw, key).await.unwrap();
                assert!(found.is_some());
            }
        })
        .await;
        let names: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
        let l2_hit = per_op(KEYS - 1, |i| {
            let (reader, name) = (&reader, &names[usize::try_from(i + 1).unwrap()]);
            async move {
                assert!(reader.get(name).await.is_some());
            }
        })
        .await;
        eprintln!(
            "allocations per operation: raw GET {raw_get:.1}, L2 hit with promotion {l2_hit:.1}"
        );
        // Measured 9.0, and 15.1 on the default first tier (22.1 on moka's).
        // Of the 6 more: the promoted entry's key (1; moka's insert makes 7
        // more), the shared-lookup entry's key (1), the boxed lookup below
        // the first tier (1), the tier's boxed future (1), the decoded
        // value's Arc (1), one in the decode (the String it copies out of
        // the reply). The bound only stops the count from rising; the
        // target is + 3.
        let bound = match first_tier::backend() {
            perfkit_tiered_cache::MemoryBackend::Moka => 14.0,
            _ => 7.0,
        };
        assert!(
            l2_hit <= raw_get + bound,
            "an L2 hit allocates {l2_hit:.1} times, a raw GET {raw_get:.1}"
        );
    });
}
