//! Invalidation across instances: the [`InvalidationBus`] trait, its
//! messages, and [`LocalBus`], the in-process bus.
//!
//! A cache built with a bus publishes every invalidation it makes (`set`,
//! `remove`, `invalidate*`, `clear`) and applies the ones other instances
//! publish to its own first tier only. [`RedisBus`](crate::RedisBus) carries
//! them over Redis pub/sub.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::error::TierError;

/// The future [`InvalidationBus::publish`] returns.
pub type BusFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TierError>> + Send + 'a>>;

/// What an invalidation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Target {
    /// One key.
    Key(String),
    /// Every key matching a Redis-style glob (`*`, `?`, `[a-z]`, `\` escapes).
    Pattern(String),
    /// Every entry written with a tag.
    Tag(String),
    /// Everything.
    Clear,
}

/// One invalidation as it travels between instances: what to drop, never
/// the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// The name of the cache it is for: caches sharing a channel ignore each
    /// other's messages.
    pub cache: String,
    /// The sending instance (random, per [`Cache`](crate::Cache) value built).
    pub origin: u64,
    /// The sender's sequence number, from 1.
    pub sequence: u64,
    /// When it was sent, in microseconds since the Unix epoch (the sender's
    /// clock); receivers measure the propagation delay with it.
    pub sent_at_micros: u64,
    /// What to drop.
    pub target: Target,
}

impl Message {
    /// A message sent now.
    #[must_use]
    pub fn new(cache: &str, origin: u64, sequence: u64, target: Target) -> Self {
        Self {
            cache: cache.to_owned(),
            origin,
            sequence,
            sent_at_micros: unix_micros(),
            target,
        }
    }

    /// The message in its wire form (postcard: a few bytes plus the key).
    ///
    /// # Errors
    ///
    /// [`TierError::Codec`] if it cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>, TierError> {
        postcard::to_allocvec(self).map_err(TierError::codec)
    }

    /// Reads a message in its wire form.
    ///
    /// # Errors
    ///
    /// [`TierError::Codec`] for bytes that are not a message.
    pub fn decode(bytes: &[u8]) -> Result<Self, TierError> {
        postcard::from_bytes(bytes).map_err(TierError::codec)
    }
}

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}

/// What a subscription delivers to the cache.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BusEvent {
    /// Subscribed (again): messages published from now on arrive. Anything
    /// published while the subscription was down may have been missed, so
    /// the cache flushes its first tier.
    Up,
    /// The subscription is lost: messages published from now on may be
    /// missed until the next [`BusEvent::Up`]. The cache flushes its first
    /// tier and, in strict mode, stops serving from it after the bound.
    Down {
        /// Why, for the log.
        reason: String,
    },
    /// This many messages were lost while subscribed (a slow receiver): the
    /// cache flushes its first tier.
    Lagged(u64),
    /// The subscription's link was checked (a health check sent at
    /// `checked_at` was answered): every message published before that
    /// instant has been delivered. Strict mode counts from the last one, so
    /// a link that goes silent without breaking (black-holed) stops the
    /// first tier from serving within the bound.
    Alive {
        /// When the check was sent.
        checked_at: std::time::Instant,
    },
    /// An invalidation.
    Message(Message),
}

/// Carries invalidations between the instances of a cache.
///
/// Implementations deliver every published message to every subscriber,
/// including the publisher's own subscription (the cache skips its own
/// messages), and report honestly when they may have lost some
/// ([`BusEvent::Down`], [`BusEvent::Lagged`]): the cache's consistency rests
/// on that.
pub trait InvalidationBus: Send + Sync + 'static {
    /// Publishes `message` to every subscriber.
    fn publish<'a>(&'a self, message: &'a Message) -> BusFuture<'a>;

    /// Starts a subscription. Events arrive on the receiver until it is
    /// dropped; the first is [`BusEvent::Up`] once subscribed. Needs a
    /// tokio runtime.
    fn subscribe(&self) -> mpsc::Receiver<BusEvent>;

    /// [`InvalidationBus::subscribe`] for a cache in strict mode, which
    /// asks that the link be checked at least `every` and each check
    /// answered be reported as [`BusEvent::Alive`]. The default ignores the
    /// request (right for a bus whose link cannot go silent, such as
    /// [`LocalBus`]).
    fn subscribe_with_checks(&self, every: std::time::Duration) -> mpsc::Receiver<BusEvent> {
        let _ = every;
        self.subscribe()
    }
}

/// How many events a subscription buffers before the bus waits for the cache.
pub(crate) const SUBSCRIPTION_BUFFER: usize = 1_024;

/// The in-process bus: caches in one process that share a `LocalBus`
/// (clones share it) invalidate each other. The embedded default, and what
/// tests use in place of a network.
#[derive(Debug, Clone)]
pub struct LocalBus {
    sender: broadcast::Sender<Message>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    /// A bus that buffers up to 4,096 messages per subscriber; a subscriber
    /// that falls further behind gets [`BusEvent::Lagged`].
    #[must_use]
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4_096);
        Self { sender }
    }
}

impl InvalidationBus for LocalBus {
    fn publish<'a>(&'a self, message: &'a Message) -> BusFuture<'a> {
        // No subscriber is not an error: nobody holds anything to invalidate.
        let _ = self.sender.send(message.clone());
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> mpsc::Receiver<BusEvent> {
        let (events, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let mut messages = self.sender.subscribe();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return receiver;
        };
        runtime.spawn(async move {
            if events.send(BusEvent::Up).await.is_err() {
                return;
            }
            loop {
                let event = match messages.recv().await {
                    Ok(message) => BusEvent::Message(message),
                    Err(broadcast::error::RecvError::Lagged(lost)) => BusEvent::Lagged(lost),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
        });
        receiver
    }
}
