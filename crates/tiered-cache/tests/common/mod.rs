//! The Redis deployments the suites run on: one node, and a Redis Cluster
//! (3 masters + 3 replicas) when one is available. A test written against
//! [`Backend`] runs unchanged on both.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use perfkit_redis::LazyConnection;
use perfkit_test_support::TestRedis;
#[cfg(feature = "cluster")]
use perfkit_test_support::TestRedisCluster;
use perfkit_test_support::concurrency::within;
use perfkit_tiered_cache::{
    Cache, LoadOptions, RedisBus, RedisBusBuilder, RedisTier, RedisTierBuilder,
};
use redis::AsyncCommands;

/// One Redis deployment, in a key prefix of this test's own.
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    kind: Kind,
    connection: LazyConnection,
}

enum Kind {
    Single(TestRedis),
    #[cfg(feature = "cluster")]
    Cluster(TestRedisCluster),
}

/// Every deployment available: one node (when Redis answers), then the
/// cluster (when one answers and the `cluster` feature is on). Either is
/// skipped, or a failure under `PERFKIT_REQUIRE_SERVICES=1`, when absent.
pub(crate) async fn backends() -> Vec<Backend> {
    let mut backends = Vec::new();
    if let Some(redis) = perfkit_test_support::redis().await {
        let connection = LazyConnection::open(redis.url(), Duration::from_secs(1)).unwrap();
        backends.push(Backend {
            name: "one node",
            kind: Kind::Single(redis),
            connection,
        });
    }
    #[cfg(feature = "cluster")]
    if let Some(cluster) = perfkit_test_support::redis_cluster().await {
        backends.push(Backend::on_cluster(cluster));
    }
    backends
}

impl Backend {
    /// The cluster `cluster` connects to, in its prefix.
    #[cfg(feature = "cluster")]
    pub(crate) fn on_cluster(cluster: TestRedisCluster) -> Self {
        let connection =
            LazyConnection::open_cluster(cluster.urls(), Duration::from_secs(1)).unwrap();
        Backend {
            name: "cluster",
            kind: Kind::Cluster(cluster),
            connection,
        }
    }

    /// This test's key prefix.
    pub(crate) fn prefix(&self) -> &str {
        match &self.kind {
            Kind::Single(redis) => redis.prefix(),
            #[cfg(feature = "cluster")]
            Kind::Cluster(cluster) => cluster.prefix(),
        }
    }

    /// A tier builder on this deployment (no prefix set yet).
    pub(crate) fn tier(&self) -> RedisTierBuilder {
        match &self.kind {
            Kind::Single(redis) => RedisTier::builder(redis.url()),
            #[cfg(feature = "cluster")]
            Kind::Cluster(cluster) => RedisTier::cluster_builder(cluster.urls()),
        }
    }

    /// A bus builder on this deployment.
    pub(crate) fn bus(&self) -> RedisBusBuilder {
        match &self.kind {
            Kind::Single(redis) => RedisBus::builder(redis.url()),
            #[cfg(feature = "cluster")]
            Kind::Cluster(cluster) => RedisBus::cluster_builder(cluster.urls()),
        }
    }

    /// A connection for commands of the test's own (routed by slot on the
    /// cluster).
    pub(crate) fn connection(&self) -> LazyConnection {
        self.connection.clone()
    }

    /// Where a tier under this test's prefix stores cache key `key`.
    pub(crate) fn key(&self, key: &str) -> String {
        self.key_under(self.prefix(), key)
    }

    /// Where a tier under `prefix` stores cache key `key`.
    pub(crate) fn key_under(&self, prefix: &str, key: &str) -> String {
        self.tier()
            .prefix(prefix)
            .build::<String>()
            .unwrap()
            .stored_key(key)
    }

    /// A name under this test's prefix, for what is not a cache key (a
    /// channel, a prefix of a prefix).
    pub(crate) fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }

    /// Every key under this test's prefix, as stored.
    pub(crate) async fn raw_keys(&self) -> Vec<Vec<u8>> {
        match &self.kind {
            Kind::Single(redis) => redis.raw_keys().await.unwrap(),
            #[cfg(feature = "cluster")]
            Kind::Cluster(cluster) => cluster.raw_keys().await.unwrap(),
        }
    }

    /// How many epochs a tier with the default settings keeps: one per
    /// bucket on the cluster (64), one on a single node.
    pub(crate) fn epochs(&self) -> usize {
        match &self.kind {
            Kind::Single(_) => 1,
            #[cfg(feature = "cluster")]
            Kind::Cluster(_) => 64,
        }
    }

    /// The cluster, on the cluster.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(&self) -> Option<&TestRedisCluster> {
        match &self.kind {
            Kind::Single(_) => None,
            Kind::Cluster(cluster) => Some(cluster),
        }
    }
}

/// One service instance on `tier` and `bus`: L1, the Redis tier under
/// `prefix`, the bus on `channel`, strict when `strict` is given.
pub(crate) fn instance_with(
    tier: RedisTierBuilder,
    bus: RedisBusBuilder,
    prefix: &str,
    channel: &str,
    strict: Option<Duration>,
) -> Cache<String> {
    let builder = Cache::builder()
        .name("invalidation")
        .tier(crate::first_tier::l1(10_000))
        .tier(tier.prefix(prefix).build().unwrap())
        // Generous: these tests run in parallel on a small machine, and a
        // timed-out lookup would read as a miss.
        .remote_timeout(Duration::from_secs(2))
        .invalidation_bus(
            bus.channel(channel)
                .health_check(Duration::from_millis(200))
                .build()
                .unwrap(),
        );
    match strict {
        Some(bound) => builder.strict_invalidation(bound).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

/// Two instances of one service on `redis`, in its prefix, on one bus.
pub(crate) fn pair(redis: &Backend) -> (Cache<String>, Cache<String>) {
    let channel = format!("{}bus", redis.prefix());
    let one = || instance_with(redis.tier(), redis.bus(), redis.prefix(), &channel, None);
    (one(), one())
}

/// Waits until every cache has subscribed (its first subscription flushes L1 once).
pub(crate) async fn subscribed(caches: &[&Cache<String>]) {
    within("the bus subscriptions", async {
        while caches.iter().any(|cache| cache.stats().l1_flushes == 0) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// What invalidates in [`stale_set_race`].
#[derive(Clone, Copy)]
pub(crate) enum Invalidation {
    /// `invalidate` of the round's key.
    Key,
    /// `invalidate_tag` of the round's tag, one of `t0`…`t<n-1>` in turn,
    /// which the loads tag their value with.
    Tag(usize),
}

/// The stale-set race, round after round on `keys` (in turn) until
/// `done(round)`: loads on A and B read the "database" and finish, after a
/// random delay, around an update of it and the invalidation that follows
/// (through A or B). Once the invalidation has returned and reached the
/// other instance, neither may serve, and Redis may not hold, a value older
/// than the update. Returns the number of rounds.
pub(crate) async fn stale_set_race(
    redis: &Backend,
    (a, b): (&Cache<String>, &Cache<String>),
    keys: &[String],
    invalidation: Invalidation,
    done: impl Fn(usize) -> bool,
) -> usize {
    let database = Arc::new(AtomicU64::new(0));
    let mut seed: u64 = match invalidation {
        Invalidation::Key => 0x5EED,
        Invalidation::Tag(_) => 0x7A6,
    };
    let mut random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let mut round = 0;
    while !done(round) {
        let key = &keys[round % keys.len()];
        let tag = match invalidation {
            Invalidation::Key => None,
            Invalidation::Tag(tags) => Some(format!("t{}", round % tags)),
        };
        let loader = |delay: u64| {
            let database = Arc::clone(&database);
            move || async move {
                // The read happens when the loader starts; the answer comes later.
                let read = database.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_micros(delay)).await;
                Ok::<_, std::io::Error>(format!("{read}"))
            }
        };
        let (da, db, dw) = (random(1_500), random(1_500), random(1_000));
        let load_on = |cache: &Cache<String>, delay| {
            let (cache, key, load) = (cache.clone(), key.clone(), loader(delay));
            let options = LoadOptions::default().tags(tag.clone());
            tokio::spawn(async move { cache.get_or_load_with(&key, options, load).await })
        };
        let (on_a, on_b) = (load_on(a, da), load_on(b, db));
        tokio::time::sleep(Duration::from_micros(dw)).await;
        // The write: update the database, then invalidate (through A or B).
        let now = database.fetch_add(1, Ordering::SeqCst) + 1;
        let (writer, other) = if random(2) == 0 { (a, b) } else { (b, a) };
        let other_before = other.stats().invalidations_received;
        match &tag {
            None => writer.invalidate(key).await,
            Some(tag) => {
                writer.invalidate_tag(tag).await;
            }
        }
        let _ = within("the loads", on_a).await.unwrap();
        let _ = within("the loads", on_b).await.unwrap();
        // Let the other instance apply the message.
        within("the invalidation reaching the other instance", async {
            while other.stats().invalidations_received == other_before {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        })
        .await;

        for (name, cache) in [("A", a), ("B", b)] {
            if let Some(value) = cache.get(key).await {
                let seen: u64 = value.parse().unwrap();
                assert!(
                    seen >= now,
                    "round {round}: {name} serves {seen}, loaded before the update to {now}"
                );
            }
        }
        let raw: Option<Vec<u8>> = redis.connection().get(redis.key(key)).await.unwrap();
        if let Some(raw) = raw
            && &raw[..4] == b"pk\x01v"
        {
            let text = String::from_utf8_lossy(&raw);
            assert!(
                !text.ends_with(&format!("{}", now - 1)) || now == 0,
                "round {round}: Redis holds the value from before the update: {text:?}"
            );
        }
        round += 1;
    }
    round
}
