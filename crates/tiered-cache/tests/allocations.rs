//! A warm L1 hit allocates nothing: counted with a global allocator that
//! counts, in a test binary of its own. Only the measuring thread's
//! allocations count: libtest's main thread keeps its books while the test
//! runs (on a loaded machine its table of running tests grew inside the
//! measured loop and failed the test with 4 allocations that were not ours).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use perfkit_tiered_cache::{Cache, MemoryTier};

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
            .tier(MemoryTier::with_max_entries(1_000))
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
