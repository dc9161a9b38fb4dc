//! The Redis Cluster side of [`LazyConnection`] (feature `cluster`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisError, RedisResult, Value};
use tokio::sync::{Mutex, oneshot};

use crate::{Inner, LazyConnection};

/// A cluster connection opened by its first command, and opened again when
/// its driver task is gone: when the runtime it ran on has shut down (a
/// task parked there says so), or when a command finds it gone (the next
/// command, and `run_once_more`'s resend, then open a new one).
pub(crate) struct LazyCluster {
    /// `None` for a connection given already open: it cannot be reopened.
    client: Option<ClusterClient>,
    connect_timeout: Duration,
    current: RwLock<Option<Opened>>,
    opening: Mutex<()>,
    /// Numbers the connections opened, so that a failure seen on an old one
    /// never drops a newer one.
    generations: AtomicU64,
}

struct Opened {
    connection: ClusterConnection,
    generation: u64,
    /// Closed once the runtime the connection was opened on shuts down: a
    /// task parked on that runtime holds the receiver.
    runtime: Option<oneshot::Sender<()>>,
}

impl Opened {
    fn new(connection: ClusterConnection, generation: u64) -> Self {
        let runtime = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (alive, parked) = oneshot::channel::<()>();
            runtime.spawn(async move {
                // Never sent: ends when the sender (the connection) goes, or
                // is dropped with the runtime.
                let _ = parked.await;
            });
            alive
        });
        Self {
            connection,
            generation,
            runtime,
        }
    }

    fn is_usable(&self) -> bool {
        self.runtime.as_ref().is_none_or(|alive| !alive.is_closed())
    }
}

/// A cluster node, as the cluster reports it (`CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its host, as the cluster announces it.
    pub host: String,
    /// Its client port.
    pub port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl LazyCluster {
    fn new(client: Option<ClusterClient>, connect_timeout: Duration) -> Self {
        Self {
            client,
            connect_timeout,
            current: RwLock::new(None),
            opening: Mutex::new(()),
            generations: AtomicU64::new(0),
        }
    }

    fn usable(&self) -> Option<(ClusterConnection, u64)> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|opened| opened.is_usable())
            .map(|opened| (opened.connection.clone(), opened.generation))
    }

    pub(crate) fn is_open(&self) -> bool {
        self.usable().is_some()
    }

    /// Makes `connection` the current one.
    fn install(&self, connection: ClusterConnection) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Opened::new(connection, generation));
        generation
    }

    /// Drops connection `generation` if it is still the current one and
    /// `error` says its driver task is gone: redis-rs's cluster connection
    /// then fails every command, and only a new one helps.
    pub(crate) fn forget_if_gone(&self, generation: u64, error: &RedisError) {
        if self.client.is_none() || !driver_gone(error) {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|opened| opened.generation == generation)
        {
            *current = None;
        }
    }

    /// The connection and its generation, opened now if there is none (or
    /// its driver is gone).
    pub(crate) async fn connection(&self) -> RedisResult<(ClusterConnection, u64)> {
        if let Some(usable) = self.usable() {
            return Ok(usable);
        }
        let _opening = self.opening.lock().await;
        if let Some(usable) = self.usable() {
            return Ok(usable);
        }
        let Some(client) = &self.client else {
            // Given open, on a runtime that is gone: nothing to reopen it with.
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "the cluster connection's runtime has shut down",
            )));
        };
        let connection =
            match tokio::time::timeout(self.connect_timeout, client.get_async_connection()).await {
                Ok(connection) => connection?,
                Err(_) => {
                    return Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting to the cluster timed out",
                    )));
                }
            };
        let generation = self.install(connection.clone());
        Ok((connection, generation))
    }
}

/// Whether `error` comes from a cluster connection whose driver task is
/// gone: redis-rs then fails a command with `redis_cluster: Unable to send
/// command` (or receive), and a pipeline with a bare broken pipe.
fn driver_gone(error: &RedisError) -> bool {
    let message = error.to_string();
    // A broken pipe made by redis-rs itself carries no OS error number;
    // one from a node's socket does.
    message.contains("redis_cluster: Unable to")
        || (error.is_connection_dropped()
            && message.to_lowercase().contains("broken pipe")
            && !message.contains("os error"))
}

impl LazyConnection {
    /// A Redis Cluster connection through any of `urls` (`redis://host:port`
    /// of one node or more: the others are discovered), opened by its first
    /// command. Each connection attempt, to the cluster or to a node, takes
    /// at most `connect_timeout`; a command redirected (`MOVED`, `ASK`) or
    /// sent while a node is unreachable is retried a few times (10 ms
    /// doubling to 100 ms), within the caller's own timeout.
    ///
    /// # A slot that moves
    ///
    /// Whatever the constructor, a command, pipeline or transaction that
    /// redis-rs gives back redirected (`ASK` while its slot moves, `MOVED`
    /// once moved) is sent again to the node named, with `ASKING` in the
    /// same write. A pipeline moves as a unit: while its slot moves, one on
    /// two keys of the slot may be sent where only one of them is, and read
    /// the other as missing; read several keys with one command (`MGET`) or
    /// a script, which Redis answers with `TRYAGAIN` while they are split.
    ///
    /// # Errors
    ///
    /// When no URL is given or one is not a Redis URL.
    pub fn open_cluster<S: AsRef<str>>(urls: &[S], connect_timeout: Duration) -> RedisResult<Self> {
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let client = ClusterClient::builder(urls)
            .connection_timeout(connect_timeout)
            .retries(4)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()?;
        Ok(Self::from_cluster_client(client, connect_timeout))
    }

    /// A Redis Cluster connection through `client` (its own settings kept),
    /// opened by its first command within `connect_timeout`.
    #[must_use]
    pub fn from_cluster_client(client: ClusterClient, connect_timeout: Duration) -> Self {
        Self {
            inner: std::sync::Arc::new(Inner::Cluster(LazyCluster::new(
                Some(client),
                connect_timeout,
            ))),
            opened: None,
        }
    }

    /// A Redis Cluster connection the application has opened already.
    #[must_use]
    pub fn from_cluster_connection(connection: ClusterConnection) -> Self {
        let cluster = LazyCluster::new(None, Duration::MAX);
        cluster.install(connection);
        Self {
            inner: std::sync::Arc::new(Inner::Cluster(cluster)),
            opened: None,
        }
    }

    fn cluster(&self) -> RedisResult<&LazyCluster> {
        match &*self.inner {
            Inner::Cluster(cluster) => Ok(cluster),
            Inner::Single { .. } => Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a cluster connection",
            ))),
        }
    }

    /// The cluster's masters that serve slots, as the cluster reports them
    /// now (`CLUSTER NODES` from any node).
    ///
    /// # Errors
    ///
    /// When no node answers, or this is not a cluster connection.
    pub async fn primaries(&self) -> RedisResult<Vec<Node>> {
        let (mut connection, _) = self.cluster()?.connection().await?;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut connection)
            .await?;
        Ok(parse_primaries(&nodes))
    }

    /// Runs `cmd` on one node (a cursor `SCAN`, which the cluster cannot
    /// route by key), through the cluster connection's own link to it.
    ///
    /// # Errors
    ///
    /// The node's, or when this is not a cluster connection.
    pub async fn on_node(&self, node: &Node, cmd: &Cmd) -> RedisResult<Value> {
        let (mut connection, _) = self.cluster()?.connection().await?;
        connection
            .route_command(
                cmd.clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                }),
            )
            .await
    }
}

/// The masters that serve slots, from `CLUSTER NODES`
/// (`<id> <host:port@cport[,hostname]> <flags> <master> <ping> <pong>
/// <epoch> <link> <slot>...`).
fn parse_primaries(nodes: &str) -> Vec<Node> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, flags) = (fields.get(1)?, fields.get(2)?);
            let flags: Vec<&str> = flags.split(',').collect();
            let serves = fields.len() > 8;
            // A failed master that still serves slots is kept: what is
            // asked of it fails, rather than skipping its keys unseen.
            if !flags.contains(&"master") || !serves {
                return None;
            }
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some(Node {
                host: host.to_owned(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_the_masters_that_serve_slots() {
        let nodes = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master - 0 0 4 connected
f 127.0.0.1:7005@17005,node-f.local master,fail? - 0 0 5 connected 10923-16383
";
        let ports: Vec<u16> = parse_primaries(nodes).iter().map(|n| n.port).collect();
        assert_eq!(ports, [7000, 7001, 7005]);
    }
}
