//! # perfkit-test-support
//!
//! The test harness every perfkit crate uses to talk to real services. It is
//! published only so that the perfkit crates' packaged test suites build: a
//! dev-dependency of theirs, not a general-purpose testing library.
//!
//! - [`redis_url`] / [`database_url`]: `REDIS_URL` and `DATABASE_URL`, with the
//!   workspace defaults (`redis://127.0.0.1:6379`,
//!   `postgres://postgres@127.0.0.1:5432/test`).
//! - [`redis`] / [`postgres`] (and with feature `mysql`, `mysql` on
//!   `MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`, in a database
//!   of its own): a live connection in a namespace of its own, or
//!   `None` after printing why the test is skipped. With
//!   `PERFKIT_REQUIRE_SERVICES=1` (set by `.ci/run`) an absent service fails the
//!   test instead, with a message that says how to start it ([`Requirement`]).
//! - Namespaces: [`TestRedis`] hands out a random key prefix and deletes every
//!   key under it when dropped; [`TestPostgres`] creates a fresh schema, points
//!   its pool's `search_path` at it and drops it (cascade) when dropped. Tests
//!   therefore run in parallel and leave nothing behind.
//!
//! ```no_run
//! # async fn example() {
//! use redis::AsyncCommands;
//!
//! let Some(redis) = perfkit_test_support::redis().await else {
//!     return; // skipped, and the reason was printed
//! };
//! let mut conn = redis.connection();
//! let key = redis.key("answer");
//! let () = conn.set(&key, 42).await.unwrap();
//! # }
//! ```
//!
//! [`RedisServer`] starts a private `redis-server` for tests that stop,
//! restart or kill connections of Redis.
//!
//! [`commandstats`] counts the commands Redis ran, for round-trip tests.
//!
//! [`concurrency`] has the hang guards and first-poll counter that concurrency
//! tests share.
//!
//! [`metrics::Counters`] is a `metrics` recorder that keeps every counter, for
//! tests that assert what a crate reports.
//!
//! Skip messages are written straight to the process's standard error, so
//! `cargo test` shows them even though it captures test output.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod commandstats;
pub mod concurrency;
pub mod metrics;
#[cfg(feature = "mysql")]
mod mysql;
mod namespace;
mod postgres;
mod redis;
#[cfg(feature = "cluster")]
mod redis_cluster;
mod redis_server;
mod requirement;
mod service;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use crate::mysql::{TestMysql, mysql};
pub use crate::postgres::{TestPostgres, postgres};
pub use crate::redis::{TestRedis, redis};
#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub use crate::redis_cluster::{
    Migration, PrivateCluster, SlotMigration, TestRedisCluster, redis_cluster,
};
pub use crate::redis_server::RedisServer;
pub use crate::requirement::{Decision, Requirement, Unavailable};
pub use crate::service::{
    DEFAULT_DATABASE_URL, DEFAULT_MYSQL_URL, DEFAULT_REDIS_CLUSTER_URLS, DEFAULT_REDIS_URL,
    REQUIRE_SERVICES_VAR, Service, database_url, mysql_url, redis_cluster_urls, redis_url,
};

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
