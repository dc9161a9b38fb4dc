//! A live Redis Cluster connection in a key prefix of its own, and the
//! commands that start a local cluster (3 masters, 3 replicas).

use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::namespace::{clean_up, unique_id};
use crate::requirement::{Requirement, Unavailable};
use crate::service::{Service, redis_cluster_urls};

/// How long connecting (or answering `CLUSTER INFO`) may take before the
/// cluster counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the cluster at [`redis_cluster_urls`] in a fresh key prefix,
/// or returns `None` after printing why the test is skipped.
///
/// # Panics
///
/// When the cluster does not answer (or is not `cluster_state:ok`) and
/// `PERFKIT_REQUIRE_SERVICES=1`, with a message that says how to start one.
pub async fn redis_cluster() -> Option<TestRedisCluster> {
    let urls = redis_cluster_urls();
    match TestRedisCluster::try_connect(&urls).await {
        Ok(cluster) => Some(cluster),
        Err(unavailable) => {
            Requirement::from_env().enforce(&unavailable);
            None
        }
    }
}

/// A cluster connection for one test, with a key prefix no other test uses.
/// Keys under the prefix spread over every master (no hash tag): tests see
/// the cluster as a service would.
pub struct TestRedisCluster {
    urls: Vec<String>,
    client: ClusterClient,
    connection: ClusterConnection,
    prefix: String,
}

impl std::fmt::Debug for TestRedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedisCluster")
            .field("urls", &self.urls)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl TestRedisCluster {
    /// Connects to the cluster through `urls` and checks it is
    /// `cluster_state:ok`, within a short timeout.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when no URL is given, the cluster does not answer, or
    /// its state is not `ok`.
    pub async fn try_connect(urls: &[String]) -> Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            service: Service::RedisCluster,
            url: urls.join(","),
            reason,
        };
        if urls.is_empty() {
            return Err(unavailable("REDIS_CLUSTER_URLS is empty".to_owned()));
        }
        let client = ClusterClient::builder(urls.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| unavailable(format!("invalid URLs: {e}")))?;
        let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut connection)
            .await
            .map_err(|e| unavailable(format!("CLUSTER INFO failed: {e}")))?;
        if !info.contains("cluster_state:ok") {
            return Err(unavailable(format!(
                "the cluster is not ok: {}",
                info.lines().next().unwrap_or_default()
            )));
        }
        Ok(Self {
            urls: urls.to_vec(),
            client,
            connection,
            prefix: format!("perfkit-test:{}:", unique_id()),
        })
    }

    /// The nodes' URLs, as given.
    #[must_use]
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The client, for connections of one's own.
    #[must_use]
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// A handle on the shared cluster connection (it routes each command by
    /// its key's slot).
    #[must_use]
    pub fn connection(&self) -> ClusterConnection {
        self.connection.clone()
    }

    /// This test's key prefix, ending in `:`.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix` + `name`.
    #[must_use]
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Keys under this test's prefix on each master, by master URL:
    /// `SCAN MATCH prefix*` on every master (`DBSIZE` would count other
    /// tests' keys).
    ///
    /// # Errors
    ///
    /// When a master cannot be reached.
    pub async fn keys_per_master(&self) -> redis::RedisResult<Vec<(String, usize)>> {
        Ok(self
            .keys_by_master()
            .await?
            .into_iter()
            .map(|(url, keys)| (url, keys.len()))
            .collect())
    }

    /// Every key under this test's prefix, on every master, as bytes, sorted.
    ///
    /// # Errors
    ///
    /// When a master cannot be reached.
    pub async fn raw_keys(&self) -> redis::RedisResult<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = self
            .keys_by_master()
            .await?
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// The commands each master ran since the last call, by master URL
    /// (see [`command_calls`](crate::commandstats::command_calls)); the
    /// cluster client's own topology and health commands (`CLUSTER`,
    /// `PING`, `READONLY`, `ROLE`, `HELLO`, `CLIENT`) and the replicas' own
    /// (`REPLCONF ACK`, once a second on the replication link) left out.
    /// Masters that ran nothing are listed with an empty map.
    ///
    /// # Errors
    ///
    /// When a master cannot be reached.
    pub async fn command_calls_per_master(
        &self,
    ) -> redis::RedisResult<Vec<(String, std::collections::BTreeMap<String, u64>)>> {
        let mut found = Vec::new();
        for url in &self.urls {
            let Some(mut node) = master(url).await? else {
                continue;
            };
            let mut calls = crate::commandstats::command_calls(&mut node).await?;
            calls.retain(|name, _| {
                ![
                    "cluster", "ping", "readonly", "role", "hello", "client", "replconf",
                ]
                .iter()
                .any(|own| name.starts_with(own))
            });
            found.push((url.clone(), calls));
        }
        Ok(found)
    }

    /// The keys under this test's prefix on each master.
    async fn keys_by_master(&self) -> redis::RedisResult<Vec<(String, Vec<Vec<u8>>)>> {
        let mut found = Vec::new();
        for url in &self.urls {
            let Some(mut node) = master(url).await? else {
                continue;
            };
            let keys = keys_matching(&mut node, &format!("{}*", self.prefix)).await?;
            found.push((url.clone(), keys));
        }
        Ok(found)
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        // Delete this test's keys on every master (replicas refuse writes:
        // their keys fail to delete and are gone with their master's).
        let urls = self.urls.clone();
        let pattern = format!("{}*", self.prefix);
        clean_up("a cluster key prefix", move || async move {
            for url in urls {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    continue;
                };
                let Ok(Ok(mut node)) = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    client.get_multiplexed_async_connection(),
                )
                .await
                else {
                    continue;
                };
                for key in keys_matching(&mut node, &pattern).await.unwrap_or_default() {
                    let _ = redis::cmd("DEL")
                        .arg(key)
                        .query_async::<i64>(&mut node)
                        .await;
                }
            }
            Ok(())
        });
    }
}

/// A connection to the node at `url` when it is a master (`ROLE`).
async fn master(url: &str) -> redis::RedisResult<Option<redis::aio::MultiplexedConnection>> {
    let client = redis::Client::open(url)?;
    let mut node = client.get_multiplexed_async_connection().await?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut node).await?;
    let is_master = matches!(
        role.first(),
        Some(redis::Value::BulkString(role)) if role.as_slice() == b"master"
    );
    Ok(is_master.then_some(node))
}

/// Every key of one node matching `pattern` (cursor-based `SCAN`).
async fn keys_matching(
    node: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(node)
            .await?;
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            return Ok(found);
        }
    }
}

/// A Redis Cluster of this test's own: six private `redis-server`s (3
/// masters, 3 replicas) on free ports, for tests that kill, pause or fail
/// over nodes without disturbing the shared cluster. Nodes detect a dead
/// peer after 1 s (`cluster-node-timeout 1000`), so a replica takes over a
/// killed master within a few seconds. Every node is killed on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    nodes: Vec<crate::RedisServer>,
}

/// How long a private cluster may take to form, or to recover.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

impl PrivateCluster {
    /// Starts the nodes, joins them (`redis-cli --cluster create …
    /// --cluster-replicas 1`) and waits for `cluster_state:ok`, or returns
    /// `None` after printing why the test is skipped.
    ///
    /// # Panics
    ///
    /// When it cannot start and `PERFKIT_REQUIRE_SERVICES=1`.
    pub fn start() -> Option<Self> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            // A replica takes over however long its link was down (the
            // default refuses when the master went silent "too long" ago,
            // as measured against a 1 s node timeout).
            "--cluster-replica-validity-factor",
            "0",
            // Replicas sync at once (the default waits 5 s for more).
            "--repl-diskless-sync-delay",
            "0",
        ];
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(crate::RedisServer::start_with(&args)?);
        }
        let cluster = Self { nodes };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output();
        let failure = match created {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(String::from_utf8_lossy(&output.stderr).into_owned()),
            Err(error) => Some(format!("cannot run redis-cli: {error}")),
        };
        let failure = failure.or_else(|| {
            (!cluster.wait_until_ok(FORM_TIMEOUT))
                .then(|| format!("not cluster_state:ok within {FORM_TIMEOUT:?}"))
        });
        let failure = failure.or_else(|| {
            (!cluster.wait_until_replicated(FORM_TIMEOUT))
                .then(|| format!("replicas not in sync within {FORM_TIMEOUT:?}"))
        });
        match failure {
            None => Some(cluster),
            Some(reason) => {
                Requirement::from_env().enforce(&Unavailable {
                    service: Service::RedisCluster,
                    url: "a private cluster".to_owned(),
                    reason,
                });
                None
            }
        }
    }

    /// Every node's URL.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(crate::RedisServer::url).collect()
    }

    /// A connection to this cluster in a fresh key prefix.
    ///
    /// # Panics
    ///
    /// When the cluster does not answer.
    pub async fn connect(&self) -> TestRedisCluster {
        match TestRedisCluster::try_connect(&self.urls()).await {
            Ok(cluster) => cluster,
            #[allow(clippy::panic)]
            // ok: test harness only; a cluster that cannot answer fails the test
            Err(unavailable) => panic!("the private cluster does not answer: {unavailable}"),
        }
    }

    /// The index (into [`urls`](Self::urls)) of the node that serves `key`'s
    /// slot now, as the first live node that answers reports it.
    ///
    /// # Panics
    ///
    /// When no live node answers, or none serves the slot.
    #[must_use]
    pub fn master_of(&self, key: &str) -> usize {
        let found = self.ask(|connection, nodes| {
            let slot = key_slot(connection, key)?;
            let master = nodes
                .iter()
                .find(|node| node.master && node.slots.iter().any(|r| r.contains(&slot)))?;
            self.index_of(master.port)
        });
        #[allow(clippy::panic)]
        // ok: test harness only; a cluster that cannot answer fails the test
        found.unwrap_or_else(|| panic!("no live node says who serves {key:?}"))
    }

    /// The index of the replica of node `index` (a master), as the first
    /// live node that answers reports it.
    ///
    /// # Panics
    ///
    /// When no live node answers, or `index` has no replica.
    #[must_use]
    pub fn replica_of(&self, index: usize) -> usize {
        let port = self.nodes.get(index).map(crate::RedisServer::port);
        let found = self.ask(|_, nodes| {
            let master = nodes.iter().find(|node| Some(node.port) == port)?;
            let replica = nodes
                .iter()
                .find(|node| node.master_id.as_deref() == Some(master.id.as_str()))?;
            self.index_of(replica.port)
        });
        #[allow(clippy::panic)]
        // ok: test harness only; a cluster that cannot answer fails the test
        found.unwrap_or_else(|| panic!("no live node names a replica of node {index}"))
    }

    /// The first answer of `question` from a live node, given its
    /// connection and its `CLUSTER NODES` table.
    fn ask<T>(
        &self,
        question: impl Fn(&mut redis::Connection, &[NodeLine]) -> Option<T>,
    ) -> Option<T> {
        self.live().find_map(|node| {
            let mut connection = sync_connection(&node.url())?;
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut connection)
                .ok()?;
            let nodes: Vec<NodeLine> = nodes.lines().filter_map(NodeLine::parse).collect();
            question(&mut connection, &nodes)
        })
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|node| node.port() == port)
    }

    /// Kills node `index` (SIGKILL): its clients see their connections
    /// drop, and its replica takes over once the others notice.
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.stop();
        }
    }

    /// Freezes node `index` (SIGSTOP) until [`resume`](Self::resume).
    pub fn pause(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            node.pause();
        }
    }

    /// Thaws node `index` (SIGCONT).
    pub fn resume(&self, index: usize) {
        if let Some(node) = self.nodes.get(index) {
            node.resume();
        }
    }

    /// Starts node `index` again: it rejoins the cluster (a replica of
    /// whoever took its slots).
    ///
    /// # Errors
    ///
    /// Why it did not answer in time.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        match self.nodes.get_mut(index) {
            Some(node) => node.restart(),
            None => Err(format!("no node {index}")),
        }
    }

    /// Moves the slot that holds `key` to another master the way `redis-cli
    /// --cluster reshard` does (see [`SlotMigration`]), `batch` keys at a
    /// time, `pause` apart, so traffic meets the slot half moved. Blocking:
    /// call it from a thread of its own (`spawn_blocking`) while the test's
    /// traffic runs.
    ///
    /// # Errors
    ///
    /// Which step failed, and why. The slot may be left half moved.
    pub fn migrate_slot_of(
        &self,
        key: &str,
        batch: usize,
        pause: Duration,
    ) -> Result<Migration, String> {
        let mut migration = self.begin_migration(key)?;
        while migration.move_keys(batch)? > 0 {
            std::thread::sleep(pause);
        }
        migration.finish()
    }

    /// Starts moving the slot that holds `key` to the next master after the
    /// one that serves it (in node order): the new owner marks it
    /// `IMPORTING`, the old one `MIGRATING`. From then on the old owner
    /// answers a command on a key it no longer holds with `ASK` (the new
    /// owner serves it after `ASKING`), and a command on several keys split
    /// between the two with `TRYAGAIN`. Blocking.
    ///
    /// # Errors
    ///
    /// Which step failed, and why.
    pub fn begin_migration(&self, key: &str) -> Result<SlotMigration, String> {
        let (slot, nodes) = self
            .ask(|connection, nodes| Some((key_slot(connection, key)?, nodes.to_vec())))
            .ok_or("no live node answers")?;
        let masters: Vec<NodeLine> = nodes
            .into_iter()
            .filter(|node| node.master && !node.slots.is_empty())
            .collect();
        let from = masters
            .iter()
            .position(|node| node.slots.iter().any(|r| r.contains(&slot)))
            .ok_or_else(|| format!("no master serves slot {slot}"))?;
        let (source, target) = (&masters[from], &masters[(from + 1) % masters.len()]);
        if source.id == target.id {
            return Err("one master only: nowhere to move the slot".to_owned());
        }
        let index = |node: &NodeLine| {
            self.index_of(node.port)
                .ok_or_else(|| format!("node {} is not ours", node.port))
        };
        let (mut old, mut new) = (node_connection(source)?, node_connection(target)?);
        setslot(&mut new, slot, "IMPORTING", &source.id)?;
        setslot(&mut old, slot, "MIGRATING", &target.id)?;
        Ok(SlotMigration {
            old,
            new,
            others: masters
                .iter()
                .filter(|m| m.id != source.id && m.id != target.id)
                .cloned()
                .collect(),
            target: target.clone(),
            done: Migration {
                slot,
                from: index(source)?,
                to: index(target)?,
                keys: 0,
                batches: 0,
            },
        })
    }

    fn live(&self) -> impl Iterator<Item = &crate::RedisServer> {
        self.nodes.iter().filter(|node| node.is_running())
    }

    /// Waits until every live node reports `cluster_state:ok`; whether it
    /// did within `timeout`.
    #[must_use]
    pub fn wait_until_ok(&self, timeout: Duration) -> bool {
        self.until_every_node(timeout, &["CLUSTER", "INFO"], |info| {
            info.contains("cluster_state:ok")
        })
    }

    /// Waits until every live master has a replica in sync (`INFO
    /// replication`: a replica `online`); whether it did within `timeout`.
    #[must_use]
    pub fn wait_until_replicated(&self, timeout: Duration) -> bool {
        self.until_every_node(timeout, &["INFO", "replication"], |info| {
            info.contains("role:slave")
                || info
                    .lines()
                    .any(|line| line.starts_with("slave") && line.contains("state=online"))
        })
    }

    /// Polls every live node with `command` until each reply passes `check`;
    /// whether that happened within `timeout`.
    fn until_every_node(
        &self,
        timeout: Duration,
        command: &[&str],
        check: impl Fn(&str) -> bool,
    ) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            let passed = self.live().all(|node| {
                sync_connection(&node.url()).is_some_and(|mut connection| {
                    redis::cmd(command[0])
                        .arg(&command[1..])
                        .query::<String>(&mut connection)
                        .is_ok_and(|reply| check(&reply))
                })
            });
            if passed {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// A slot being moved from one master to another, step by step: made by
/// [`PrivateCluster::begin_migration`], its keys moved by
/// [`move_keys`](Self::move_keys), ended by [`finish`](Self::finish).
/// Dropped unfinished, it leaves the slot half moved.
pub struct SlotMigration {
    old: redis::Connection,
    new: redis::Connection,
    others: Vec<NodeLine>,
    target: NodeLine,
    done: Migration,
}

impl std::fmt::Debug for SlotMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotMigration")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl SlotMigration {
    /// The slot, where it comes from and goes to, and what has moved so far.
    #[must_use]
    pub fn progress(&self) -> Migration {
        self.done
    }

    /// Moves up to `batch` of the keys the old owner still holds (`CLUSTER
    /// GETKEYSINSLOT`, then `MIGRATE … KEYS`, atomic per batch); how many
    /// moved (0 once none is left).
    ///
    /// # Errors
    ///
    /// The old owner's.
    pub fn move_keys(&mut self, batch: usize) -> Result<usize, String> {
        let moving: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(self.done.slot)
            .arg(batch)
            .query(&mut self.old)
            .map_err(|e| format!("CLUSTER GETKEYSINSLOT: {e}"))?;
        if moving.is_empty() {
            return Ok(0);
        }
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(self.target.port)
            .arg("")
            .arg(0)
            .arg(5_000)
            .arg("KEYS")
            .arg(&moving)
            .exec(&mut self.old)
            .map_err(|e| format!("MIGRATE: {e}"))?;
        self.done.keys += moving.len();
        self.done.batches += 1;
        Ok(moving.len())
    }

    /// Moves the keys left, then tells every master the slot's new owner
    /// (`CLUSTER SETSLOT … NODE`: the new owner first, then the old one,
    /// then the others), as `redis-cli` does.
    ///
    /// # Errors
    ///
    /// Which step failed, and why.
    pub fn finish(mut self) -> Result<Migration, String> {
        while self.move_keys(1_000)? > 0 {}
        let (slot, target) = (self.done.slot, &self.target.id);
        setslot(&mut self.new, slot, "NODE", target)?;
        setslot(&mut self.old, slot, "NODE", target)?;
        for other in &self.others {
            setslot(&mut node_connection(other)?, slot, "NODE", target)?;
        }
        Ok(self.done)
    }
}

/// `CLUSTER KEYSLOT <key>` on `connection`.
fn key_slot(connection: &mut redis::Connection, key: &str) -> Option<u16> {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(connection)
        .ok()
}

/// `CLUSTER SETSLOT <slot> <state> <id>` on `connection`.
fn setslot(
    connection: &mut redis::Connection,
    slot: u16,
    state: &str,
    id: &str,
) -> Result<(), String> {
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .exec(connection)
        .map_err(|e| format!("CLUSTER SETSLOT {slot} {state}: {e}"))
}

/// A blocking connection to the node of `line`, for the steps of a slot's
/// move: it waits up to 10 s for a reply, since `CLUSTER SETSLOT … NODE`
/// writes and fsyncs the node's config file and `MIGRATE` moves a batch of
/// keys, either of which can take longer than [`sync_connection`]'s 500 ms
/// on a loaded machine (seen in CI: a `SETSLOT` timed out).
fn node_connection(line: &NodeLine) -> Result<redis::Connection, String> {
    let connection = sync_connection(&format!("redis://127.0.0.1:{}", line.port))
        .ok_or_else(|| format!("node {} does not answer", line.port))?;
    connection
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("node {}: {e}", line.port))?;
    Ok(connection)
}

/// A slot moved by [`PrivateCluster::migrate_slot_of`] (or being moved by a
/// [`SlotMigration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The slot.
    pub slot: u16,
    /// The node that served it (an index into [`PrivateCluster::urls`]).
    pub from: usize,
    /// The node that serves it now.
    pub to: usize,
    /// How many keys moved.
    pub keys: usize,
    /// In how many `MIGRATE` batches.
    pub batches: usize,
}

/// One line of `CLUSTER NODES`: `<id> <host:port@cport> <flags> <master
/// id or -> <ping> <pong> <epoch> <link> <slot ranges>…`.
#[derive(Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    master_id: Option<String>,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields
            .get(1)?
            .split(['@', ','])
            .next()?
            .rsplit_once(':')?
            .1
            .parse()
            .ok()?;
        let master_id = fields.get(3).filter(|id| **id != "-");
        let slots = fields
            .iter()
            .skip(8)
            .filter_map(|range| {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                Some(first.parse().ok()?..=last.parse().ok()?)
            })
            .collect();
        Some(Self {
            id: (*fields.first()?).to_owned(),
            port,
            master: fields.get(2)?.contains("master"),
            master_id: master_id.map(|id| (*id).to_owned()),
            slots,
        })
    }
}

/// A blocking connection to one node, with short timeouts.
fn sync_connection(url: &str) -> Option<redis::Connection> {
    let client = redis::Client::open(url).ok()?;
    let connection = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    connection
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    Some(connection)
}
