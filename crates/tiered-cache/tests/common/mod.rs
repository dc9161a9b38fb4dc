//! The Redis deployments the suites run on: one node, and a Redis Cluster
//! (3 masters + 3 replicas) when one is available. A test written against
//! [`Backend`] runs unchanged on both.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use perfkit_redis::LazyConnection;
use perfkit_test_support::TestRedis;
#[cfg(feature = "cluster")]
use perfkit_test_support::TestRedisCluster;
use perfkit_tiered_cache::{RedisBus, RedisBusBuilder, RedisTier, RedisTierBuilder};

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
        let connection =
            LazyConnection::open_cluster(cluster.urls(), Duration::from_secs(1)).unwrap();
        backends.push(Backend {
            name: "cluster",
            kind: Kind::Cluster(cluster),
            connection,
        });
    }
    backends
}

impl Backend {
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
