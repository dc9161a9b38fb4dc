//! Invalidations over Redis pub/sub.

#[cfg(feature = "cluster")]
mod sharded;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream as _;
use redis::aio::PubSubStream;
use tokio::sync::mpsc;

use perfkit_redis::{LazyConnection, run_once_more};

use crate::bus::{BusEvent, BusFuture, InvalidationBus, Message, SUBSCRIPTION_BUFFER};
use crate::error::{ConfigError, TierError};

/// An [`InvalidationBus`] over Redis pub/sub: one `PUBLISH` per
/// invalidation, one subscriber connection per cache instance.
///
/// The subscription runs on its own connection in a background task that
/// reconnects forever (50 ms doubling to 1 s between attempts) and checks the
/// connection with a `PING` every [`RedisBusBuilder::health_check`] (for a
/// cache in strict mode, at least every quarter of its bound), reporting
/// each answered check ([`BusEvent::Alive`]). Every
/// loss is reported ([`BusEvent::Down`]) and every re-subscription too
/// ([`BusEvent::Up`]): pub/sub keeps no backlog, so the cache flushes its
/// first tier on both, never trusting what it may have missed. Publishing
/// uses an auto-reconnecting multiplexed connection, opened on first use.
///
/// ```no_run
/// # fn main() -> Result<(), perfkit_tiered_cache::ConfigError> {
/// use perfkit_tiered_cache::{Cache, MemoryTier, RedisBus, RedisTier};
///
/// let url = "redis://127.0.0.1:6379";
/// // Each instance of the service builds the same cache; an invalidation on one
/// // drops the key from the others' L1.
/// let cache: Cache<Vec<u8>> = Cache::builder()
///     .name("agents")
///     .tier(MemoryTier::with_max_entries(10_000))
///     .tier(RedisTier::builder(url).prefix("svc:agents:").build()?)
///     .invalidation_bus(RedisBus::builder(url).channel("svc:agents:invalidations").build()?)
///     .build()?;
/// # let _ = cache;
/// # Ok(()) }
/// ```
pub struct RedisBus {
    channel: String,
    publisher: LazyConnection,
    /// Where the subscription may run, tried in turn after each loss: the
    /// one server, or every node given of a cluster.
    subscribers: Arc<[redis::Client]>,
    /// Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), on a cluster.
    sharded: bool,
    connect_timeout: Duration,
    health_check: Duration,
}

/// Configures a [`RedisBus`]: [`RedisBus::builder`] from a URL,
/// [`RedisBus::builder_with_client`] from a client you have,
/// `RedisBus::cluster_builder` (feature `cluster`) from a cluster's nodes.
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBusBuilder {
    target: Result<Target, String>,
    channel: String,
    connect_timeout: Duration,
    health_check: Duration,
}

/// Where a bus publishes and subscribes.
#[derive(Debug, Clone)]
enum Target {
    Single(redis::Client),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
}

impl RedisBus {
    /// Configures a bus on the Redis at `url` (a bad URL is reported by
    /// `build`; neither needs a runtime or a reachable Redis).
    pub fn builder(url: &str) -> RedisBusBuilder {
        Self::builder_from(
            redis::Client::open(url)
                .map(Target::Single)
                .map_err(|error| error.to_string()),
        )
    }

    /// Configures a bus through a redis-rs client you already have. A bus
    /// takes a client rather than a connection: subscribing needs a
    /// connection of its own (pub/sub), which it opens again after every
    /// loss; publishes go through a multiplexed connection opened on first use.
    pub fn builder_with_client(client: redis::Client) -> RedisBusBuilder {
        Self::builder_from(Ok(Target::Single(client)))
    }

    /// Configures a bus on the Redis Cluster reached through `urls` (one
    /// node or more): invalidations go over sharded pub/sub, `SPUBLISH` to
    /// the master that owns the channel's slot and `SSUBSCRIBE` on it,
    /// found through any node in `urls` and found again after every loss,
    /// so a failover of that shard costs a `Down` then an `Up` (each a
    /// flush of the first tier), as a restart of a single Redis does. See
    /// [Redis Cluster](crate::RedisTier#redis-cluster) for why not classic
    /// `PUBLISH`. Give several nodes: the one asked must answer.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<S: AsRef<str>>(urls: &[S]) -> RedisBusBuilder {
        Self::builder_from(Ok(Target::Cluster(
            urls.iter().map(|url| url.as_ref().to_owned()).collect(),
        )))
    }

    fn builder_from(target: Result<Target, String>) -> RedisBusBuilder {
        RedisBusBuilder {
            target,
            channel: "perfkit:cache:invalidations".to_owned(),
            connect_timeout: Duration::from_millis(250),
            health_check: Duration::from_secs(1),
        }
    }

    /// The pub/sub channel.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

impl RedisBusBuilder {
    /// The pub/sub channel. Default: `"perfkit:cache:invalidations"`.
    /// Caches sharing a channel ignore each other's messages (they carry the
    /// cache's name), but each still receives them: give busy caches their own.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How long one connection attempt, or one health-check `PING`, may
    /// take. Default: 250 ms.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the subscriber connection is checked with a `PING`; a
    /// connection that does not answer within the connect timeout counts as
    /// lost. This bounds how long a silently dead connection goes unnoticed.
    /// Default: 1 s.
    pub fn health_check(mut self, every: Duration) -> Self {
        self.health_check = every;
        self
    }

    /// Builds the bus; connections open on first use.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an unparsable URL, an empty channel or a zero duration.
    pub fn build(self) -> Result<RedisBus, ConfigError> {
        if self.channel.is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("connect_timeout"));
        }
        if self.health_check.is_zero() {
            return Err(ConfigError::ZeroDuration("health_check"));
        }
        let (publisher, subscribers, sharded) = match self.target.map_err(ConfigError::RedisUrl)? {
            Target::Single(client) => (
                LazyConnection::from_client(client.clone(), self.connect_timeout),
                vec![client],
                false,
            ),
            #[cfg(feature = "cluster")]
            Target::Cluster(urls) => {
                let redis_url = |error: redis::RedisError| ConfigError::RedisUrl(error.to_string());
                let publisher =
                    LazyConnection::open_cluster(&urls, self.connect_timeout).map_err(redis_url)?;
                let subscribers = urls
                    .iter()
                    .map(|url| redis::Client::open(url.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(redis_url)?;
                (publisher, subscribers, true)
            }
        };
        Ok(RedisBus {
            channel: self.channel,
            publisher,
            subscribers: subscribers.into(),
            sharded,
            connect_timeout: self.connect_timeout,
            health_check: self.health_check,
        })
    }
}

impl InvalidationBus for RedisBus {
    fn publish<'a>(&'a self, message: &'a Message) -> BusFuture<'a> {
        Box::pin(async move {
            let payload = message.encode()?;
            // A repeated PUBLISH only repeats an invalidation.
            let command = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            run_once_more(&self.publisher, |mut connection| {
                let payload = &payload;
                async move {
                    redis::cmd(command)
                        .arg(&self.channel)
                        .arg(payload)
                        .exec_async(&mut connection)
                        .await
                }
            })
            .await
            .map_err(TierError::backend)
        })
    }

    fn subscribe(&self) -> mpsc::Receiver<BusEvent> {
        self.subscribe_with_checks(self.health_check)
    }

    fn subscribe_with_checks(&self, every: Duration) -> mpsc::Receiver<BusEvent> {
        let (events, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let subscriber = Subscriber {
            clients: Arc::clone(&self.subscribers),
            sharded: self.sharded,
            channel: self.channel.clone(),
            connect_timeout: self.connect_timeout,
            health_check: self.health_check.min(every),
            events,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(subscriber.run());
        }
        receiver
    }
}

/// The subscription task.
struct Subscriber {
    /// Tried in turn: the next one after each failure or loss.
    clients: Arc<[redis::Client]>,
    /// Sharded: the clients are nodes to ask where the channel's shard is.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    sharded: bool,
    channel: String,
    connect_timeout: Duration,
    health_check: Duration,
    events: mpsc::Sender<BusEvent>,
}

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(1);

impl Subscriber {
    /// Subscribes, forwards messages, reports losses, reconnects; returns
    /// once the cache has dropped its receiver.
    async fn run(self) {
        let mut retry = FIRST_RETRY;
        let mut turn = 0_usize;
        loop {
            let subscribing = std::time::Instant::now();
            let Some(client) = self.clients.get(turn % self.clients.len().max(1)) else {
                return;
            };
            turn = turn.wrapping_add(1);
            let (mut sink, mut stream) = match self.connect(client).await {
                Ok(halves) => halves,
                Err(error) => {
                    tracing::debug!(bus.channel = %self.channel, %error, "cannot subscribe yet");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = self.events.closed() => return,
                    }
                    retry = (retry * 2).min(LAST_RETRY);
                    continue;
                }
            };
            retry = FIRST_RETRY;
            // The subscription's confirmation is the first check: everything
            // published after it was sent is delivered.
            let up = [
                BusEvent::Up,
                BusEvent::Alive {
                    checked_at: subscribing,
                },
            ];
            for event in up {
                if self.events.send(event).await.is_err() {
                    return;
                }
            }
            let mut health = tokio::time::interval(self.health_check);
            health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            health.tick().await;
            let reason = loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else {
                            break "the connection closed".to_owned();
                        };
                        match Message::decode(&message) {
                            Ok(message) => {
                                if self.events.send(BusEvent::Message(message)).await.is_err() {
                                    return;
                                }
                            }
                            Err(error) => {
                                tracing::warn!(bus.channel = %self.channel, %error, "ignored a message that is not an invalidation");
                            }
                        }
                    }
                    _ = health.tick() => {
                        let checked_at = std::time::Instant::now();
                        match tokio::time::timeout(self.connect_timeout, sink.ping()).await {
                            // Redis answers in order: the messages before the PONG are in.
                            Ok(Ok(_)) => {
                                if self.events.send(BusEvent::Alive { checked_at }).await.is_err() {
                                    return;
                                }
                            }
                            Ok(Err(error)) => break format!("PING failed: {error}"),
                            Err(_) => break format!("no PING answer within {:?}", self.connect_timeout),
                        }
                    }
                    () = self.events.closed() => return,
                }
            };
            tracing::warn!(bus.channel = %self.channel, %reason, "invalidation subscription lost; reconnecting");
            if self.events.send(BusEvent::Down { reason }).await.is_err() {
                return;
            }
        }
    }

    async fn connect(&self, client: &redis::Client) -> Result<(Sink, Messages), TierError> {
        let attempt = async {
            #[cfg(feature = "cluster")]
            if self.sharded {
                let sharded =
                    sharded::subscribe(client, &self.channel, self.connect_timeout).await?;
                return Ok((
                    Sink::Sharded(sharded.connection.clone()),
                    Messages::Sharded(sharded),
                ));
            }
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            let (sink, stream) = pubsub.split();
            Ok::<_, redis::RedisError>((Sink::Classic(sink), Messages::Classic(stream)))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(halves)) => Ok(halves),
            Ok(Err(error)) => Err(TierError::backend(error)),
            Err(_) => Err(TierError::Timeout(self.connect_timeout)),
        }
    }
}

/// Where the subscription's health checks go.
enum Sink {
    Classic(redis::aio::PubSubSink),
    #[cfg(feature = "cluster")]
    Sharded(redis::aio::MultiplexedConnection),
}

impl Sink {
    /// A `PING` on the subscription's connection: Redis answers in order,
    /// so the messages published before it are in when it returns.
    async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            Self::Classic(sink) => sink.ping::<redis::Value>().await.map(drop),
            #[cfg(feature = "cluster")]
            Self::Sharded(connection) => redis::cmd("PING").exec_async(connection).await,
        }
    }
}

/// Where the subscription's messages arrive.
enum Messages {
    Classic(PubSubStream),
    #[cfg(feature = "cluster")]
    Sharded(sharded::Sharded),
}

impl Messages {
    /// The next message's payload; `None` once the subscription is gone.
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Self::Classic(stream) => {
                std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx))
                    .await
                    .map(|message| message.get_payload_bytes().to_vec())
            }
            #[cfg(feature = "cluster")]
            Self::Sharded(sharded) => sharded.next().await,
        }
    }
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .field("health_check", &self.health_check)
            .finish_non_exhaustive()
    }
}
