//! # perfkit-redis
//!
//! The Redis plumbing the perfkit crates share, usable alone:
//!
//! - [`LazyConnection`]: a multiplexed, auto-reconnecting connection (a
//!   redis-rs [`ConnectionManager`]) that is built from a URL without a
//!   runtime and opens on its first command. A service can therefore build
//!   its cache and its idempotency store in a plain `fn`, and start while
//!   Redis is down. It implements [`ConnectionLike`], so it goes wherever a
//!   redis-rs connection goes.
//! - [`run_once_more`]: runs a command, and once more when the first attempt
//!   never reached a live server (refused, connect timeout, dropped
//!   connection). redis-rs hands out the error of its last failed reconnect
//!   before it starts a new one, so without this the first call after Redis
//!   comes back fails on a server that answers.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use perfkit_redis::{LazyConnection, run_once_more};
//!
//! // No runtime and no server needed to build it.
//! let connection = LazyConnection::open("redis://127.0.0.1:6379", Duration::from_millis(250))?;
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! // The first command connects. GET is safe to send twice.
//! let value: Option<String> = run_once_more(&connection, |mut connection| async move {
//!     redis::cmd("GET").arg("greeting").query_async(&mut connection).await
//! })
//! .await?;
//! # Ok::<_, redis::RedisError>(()) })?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "cluster")]
mod redirect;

#[cfg(feature = "cluster")]
pub use self::cluster::Node;

/// A redis-rs [`ConnectionManager`] opened by the first command, not when it
/// is built: building needs neither a runtime nor a reachable server.
///
/// Clones share one connection. Commands sent before Redis answers fail
/// (each after at most the connect timeout); the first one after it answers
/// opens the connection, which then reconnects by itself.
///
/// With the feature `cluster`, the same type holds a Redis Cluster
/// connection ([`LazyConnection::open_cluster`]): a redis-rs
/// `cluster_async::ClusterConnection`, which routes each command by its
/// key's slot and follows `MOVED`/`ASK` redirections. Code written against
/// `LazyConnection` then runs on either, unchanged.
pub struct LazyConnection {
    inner: Arc<Inner>,
    /// This handle's own clone of the opened manager (single node): its
    /// commands go straight to it, without a future of ours around the
    /// manager's (one allocation less per command).
    opened: Option<ConnectionManager>,
}

impl Clone for LazyConnection {
    fn clone(&self) -> Self {
        let opened = self.opened.clone().or_else(|| match &*self.inner {
            Inner::Single { cell, .. } => cell.get().cloned(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => None,
        });
        Self {
            inner: Arc::clone(&self.inner),
            opened,
        }
    }
}

enum Inner {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
        cell: OnceCell<ConnectionManager>,
    },
    #[cfg(feature = "cluster")]
    Cluster(cluster::LazyCluster),
}

impl LazyConnection {
    /// A connection to `url` (`redis://host:port/db`, `rediss://…`,
    /// `redis+unix://…`) whose connection attempts take at most
    /// `connect_timeout`.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL.
    pub fn open(url: &str, connect_timeout: Duration) -> RedisResult<Self> {
        Ok(Self::from_client(
            redis::Client::open(url)?,
            connect_timeout,
        ))
    }

    /// A connection through `client`, whose connection attempts take at most
    /// `connect_timeout`.
    #[must_use]
    pub fn from_client(client: redis::Client, connect_timeout: Duration) -> Self {
        // Few, quick retries: the caller's own timeout (and breaker) decide
        // when to give up. No response timeout of redis-rs's: callers bound
        // every call already, and a second timer per command costs as much
        // CPU as the rest of a cache lookup.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        Self {
            inner: Arc::new(Inner::Single {
                client,
                config,
                cell: OnceCell::new(),
            }),
            opened: None,
        }
    }

    /// The connection manager of a single-node connection, opened now if
    /// this is the first call.
    ///
    /// # Errors
    ///
    /// When the connection cannot be opened (the next call tries again), or
    /// when this is a cluster connection (it has no `ConnectionManager`).
    pub async fn manager(&self) -> RedisResult<ConnectionManager> {
        match &*self.inner {
            Inner::Single {
                client,
                config,
                cell,
            } => cell
                .get_or_try_init(|| {
                    ConnectionManager::new_with_config(client.clone(), config.clone())
                })
                .await
                .cloned(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster connection has no ConnectionManager",
            ))),
        }
    }

    /// The client of a single-node connection, for connections of another
    /// kind (pub/sub); `None` for a cluster connection.
    #[must_use]
    pub fn client(&self) -> Option<&redis::Client> {
        match &*self.inner {
            Inner::Single { client, .. } => Some(client),
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => None,
        }
    }

    /// Whether the connection has been opened.
    #[must_use]
    pub fn is_open(&self) -> bool {
        match &*self.inner {
            Inner::Single { cell, .. } => cell.initialized(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(cluster) => cluster.is_open(),
        }
    }

    /// Whether this is a Redis Cluster connection.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        match &*self.inner {
            Inner::Single { .. } => false,
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => true,
        }
    }
}

impl ConnectionLike for LazyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let this = match self.opened {
            Some(ref mut manager) => return manager.req_packed_command(cmd),
            None => self,
        };
        Box::pin(async move {
            match &*this.inner {
                Inner::Single { .. } => {
                    let manager = this.manager().await?;
                    this.opened.insert(manager).req_packed_command(cmd).await
                }
                #[cfg(feature = "cluster")]
                Inner::Cluster(cluster) => cluster.command(cmd).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let this = match self.opened {
            Some(ref mut manager) => return manager.req_packed_commands(pipeline, offset, count),
            None => self,
        };
        Box::pin(async move {
            match &*this.inner {
                Inner::Single { .. } => {
                    let manager = this.manager().await?;
                    this.opened
                        .insert(manager)
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                #[cfg(feature = "cluster")]
                Inner::Cluster(cluster) => cluster.pipeline(pipeline, offset, count).await,
            }
        })
    }

    fn get_db(&self) -> i64 {
        match &*self.inner {
            Inner::Single { client, .. } => client.get_connection_info().redis_settings().db(),
            #[cfg(feature = "cluster")]
            Inner::Cluster(_) => 0,
        }
    }
}

impl std::fmt::Debug for LazyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyConnection")
            .field("cluster", &self.is_cluster())
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

/// Whether `error` says the command never reached a live server, or the
/// connection went away around it: refused, a connect timeout (with no
/// response timeout set, redis-rs times out only connecting), or dropped.
#[must_use]
pub fn never_reached_server(error: &RedisError) -> bool {
    error.is_connection_refusal() || error.is_timeout() || error.is_connection_dropped()
}

/// Runs `op` on a clone of `connection`, and once more on another clone when
/// the first attempt [never reached a live server](never_reached_server):
/// the connection's reconnect then serves the second attempt. Only for
/// commands that are safe to send twice (a read, a conditional or
/// idempotent write), since a dropped connection may have delivered the
/// first.
///
/// # Errors
///
/// The second attempt's error, or the first's when it is of another kind.
pub async fn run_once_more<C, T, F, Fut>(connection: &C, op: F) -> RedisResult<T>
where
    C: Clone,
    F: Fn(C) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    match op(connection.clone()).await {
        Err(error) if never_reached_server(&error) => op(connection.clone()).await,
        outcome => outcome,
    }
}

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
