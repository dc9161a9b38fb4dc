//! `RedisStore`: claims and records in Redis, shared by every instance.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use perfkit_redis::{LazyConnection, run_once_more};
use redis::aio::ConnectionLike;
use redis::{Script, Value};

use crate::error::{ConfigError, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StoreKey;
use crate::record::{Existing, RecordedResponse};
use crate::store::{Claim, ClaimToken, IdempotencyStore, StoreFuture};

/// Default for [`RedisStore::timeout`].
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Default for [`RedisStore::prefix`].
const DEFAULT_PREFIX: &str = "perfkit:idem:";

/// Claims the key if nobody holds it, else returns what is held. One script,
/// so that no other client can come between the check and the claim. A
/// claim retried under the token that holds the key is acquired again, so a
/// claim whose reply was lost can be sent twice.
const CLAIM: &str = r"
local state = redis.call('HGET', KEYS[1], 's')
if not state then
  redis.call('HSET', KEYS[1], 's', 'p', 't', ARGV[1], 'f', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if state == 'p' and redis.call('HGET', KEYS[1], 't') == ARGV[1] then
  return 1
end
return {state, redis.call('HGET', KEYS[1], 'f'), redis.call('HGET', KEYS[1], 'r')}
";

/// Records the response if and only if the caller's claim still holds the
/// key; the token stays, so a completion retried after a lost reply is
/// recognised as done.
const COMPLETE: &str = r"
local state = redis.call('HGET', KEYS[1], 's')
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
if state == 'p' then
  redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if state == 'c' then
  return 1
end
return 0
";

/// Drops the claim if and only if the caller still holds it.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 's') == 'p' and redis.call('HGET', KEYS[1], 't') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Extends the claim if and only if the caller still holds it.
const RENEW: &str = r"
if redis.call('HGET', KEYS[1], 's') == 'p' and redis.call('HGET', KEYS[1], 't') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Claims and recorded responses in Redis: every instance that shares the
/// Redis sees the same claims, so exactly-once execution holds across
/// instances and restarts.
///
/// Each idempotency key is **one** Redis hash, `<prefix><scope and key>`
/// (fields `s` state, `t` owner token, `f` fingerprint, `r` recorded
/// response; the token stays after completion, so a retried completion is
/// recognised), so every operation touches one key and one hash slot: the
/// store works unchanged on a Redis Cluster connection (any
/// [`ConnectionLike`] + `Clone`). Claims, completions and releases are Lua
/// scripts (one atomic step each, `EVALSHA`); a lookup is one `HMGET`.
/// Round trips: a new key costs two (claim, record), a replay or a conflict one.
///
/// Every call is bounded by [`timeout`](RedisStoreBuilder::timeout) (default 250 ms): a
/// Redis that is down or slow never hangs a request; the layer answers it
/// per its [fail mode](crate::FailMode).
///
/// ```no_run
/// use perfkit_idempotency::{IdempotencyLayer, RedisStore};
///
/// // From a URL: no runtime and no reachable Redis needed to build it.
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("payments:idem:")
///     .build()?;
/// let layer = IdempotencyLayer::builder(store).unscoped().build()?;
/// # Ok::<(), perfkit_idempotency::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RedisStore<C = LazyConnection> {
    connection: C,
    prefix: Arc<str>,
    timeout: Duration,
    replicas: Option<ReplicaWait>,
    scripts: Arc<Scripts>,
}

/// `WAIT <replicas> <ms>` after every claim and record.
#[derive(Debug, Clone, Copy)]
struct ReplicaWait {
    replicas: NonZeroU32,
    wait: Duration,
}

struct Scripts {
    claim: Script,
    complete: Script,
    release: Script,
    renew: Script,
}

/// Makes the store's connection at `build`, given the timeout.
type Connect<C> = Box<dyn FnOnce(Duration) -> Result<C, ConfigError> + Send + Sync>;

/// Configures a [`RedisStore`]: [`RedisStore::builder`] from a URL,
/// [`RedisStore::builder_with_connection`] from a connection you have.
#[must_use]
pub struct RedisStoreBuilder<C = LazyConnection> {
    connect: Connect<C>,
    prefix: String,
    timeout: Duration,
    replicas: Option<ReplicaWait>,
}

impl RedisStore {
    /// Configures a store on the Redis at `url` (`redis://host:port/db`),
    /// through a [`LazyConnection`] (multiplexed, auto-reconnecting, opened
    /// on first use): building needs no runtime and no reachable Redis, so an
    /// application starts while Redis is down and its idempotent routes
    /// answer per the fail mode until Redis is back. A bad URL is reported by
    /// `build`.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        let url = url.to_owned();
        RedisStoreBuilder::new(Box::new(move |timeout| {
            LazyConnection::open(&url, timeout)
                .map_err(|error| ConfigError::RedisUrl(error.to_string()))
        }))
    }

    /// Configures a store on the Redis Cluster reached through `urls` (one
    /// node or more, `redis://host:port`; the others are discovered),
    /// through a [`LazyConnection`] opened on first use, like
    /// [`builder`](Self::builder). Every operation touches one key, so one
    /// slot, on the master that owns it.
    ///
    /// ```no_run
    /// use perfkit_idempotency::RedisStore;
    ///
    /// let store = RedisStore::cluster_builder(&["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .prefix("payments:idem:")
    ///     .build()?;
    /// # let _ = store;
    /// # Ok::<(), perfkit_idempotency::ConfigError>(())
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<S: AsRef<str>>(urls: &[S]) -> RedisStoreBuilder {
        let urls: Vec<String> = urls.iter().map(|url| url.as_ref().to_owned()).collect();
        RedisStoreBuilder::new(Box::new(move |timeout| {
            LazyConnection::open_cluster(&urls, timeout)
                .map_err(|error| ConfigError::RedisUrl(error.to_string()))
        }))
    }

    /// Configures a store on an existing multiplexed connection that clones
    /// cheaply: a redis-rs `ConnectionManager`, a `MultiplexedConnection`, or
    /// redis-rs's async cluster connection (every operation touches one key,
    /// so one slot).
    pub fn builder_with_connection<C>(connection: C) -> RedisStoreBuilder<C>
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        RedisStoreBuilder::new(Box::new(move |_| Ok(connection)))
    }
}

impl<C> RedisStoreBuilder<C> {
    fn new(connect: Connect<C>) -> Self {
        Self {
            connect,
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            replicas: None,
        }
    }

    /// Prefix of every key this store writes. Default: `"perfkit:idem:"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bound on every call (one round trip, plus a reconnect if one is
    /// needed; for a store built from a URL, also each connection attempt).
    /// Default: 250 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Waits, after every claim and every record, until `replicas`
    /// replicas have acknowledged it (`WAIT`, pipelined behind the write:
    /// the same round trip, on the node that holds the key), at most
    /// `wait`. Default: off.
    ///
    /// Redis replicates asynchronously. Without this, a claim or a record
    /// the master acknowledged but had not yet sent to a replica is lost if
    /// the master fails and that replica takes over, and a retry of the key
    /// runs the handler again. With it, a claim short of acknowledgements
    /// is given up before the handler runs (the request gets `503`, or runs
    /// unprotected under `FailMode::Open`), and a record short of them is
    /// retried like any failed record; a key whose claim and record were
    /// acknowledged survives its master's failure. The price: every new key
    /// waits for its replicas' acknowledgements (on a LAN, well under a
    /// millisecond), and while a replica is down, new keys on its shard get
    /// `503` (lower `replicas`, or turn this off, to trade the guarantee
    /// back for availability). `WAIT` does not make Redis strongly
    /// consistent: a failover can still promote a replica that did not
    /// acknowledge when one that did is lost too.
    pub fn wait_for_replicas(mut self, replicas: NonZeroU32, wait: Duration) -> Self {
        self.replicas = Some(ReplicaWait { replicas, wait });
        self
    }

    /// Builds the store; a connection made from a URL opens on first use.
    ///
    /// # Errors
    ///
    /// [`ConfigError::RedisUrl`] for an unparsable URL,
    /// [`ConfigError::ZeroStoreTimeout`] for a zero timeout,
    /// [`ConfigError::ReplicaWait`] for a wait for replicas that is zero or
    /// not shorter than the timeout.
    pub fn build(self) -> Result<RedisStore<C>, ConfigError> {
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroStoreTimeout);
        }
        if let Some(ReplicaWait { wait, .. }) = self.replicas
            && (wait.is_zero() || wait >= self.timeout)
        {
            return Err(ConfigError::ReplicaWait {
                wait,
                timeout: self.timeout,
            });
        }
        Ok(RedisStore {
            connection: (self.connect)(self.timeout)?,
            prefix: Arc::from(self.prefix),
            timeout: self.timeout,
            replicas: self.replicas,
            scripts: Arc::new(Scripts {
                claim: Script::new(CLAIM),
                complete: Script::new(COMPLETE),
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
            }),
        })
    }
}

impl<C> std::fmt::Debug for RedisStoreBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{}", self.prefix, key.encoded())
    }

    /// Runs `op` on a clone of the connection, bounded by the timeout. A
    /// refused or dropped connection runs it once more, on the connection's
    /// fresh reconnect: redis-rs hands out the error of its last failed
    /// reconnect first (after Redis comes back), and a connection whose
    /// driver task died with its runtime fails the first call made from
    /// another runtime.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        // Never sent, or the connection went away around it: every operation
        // is safe to repeat (a claim or completion under the same token is
        // recognised; a release or renewal repeats as a no-op).
        let attempts = run_once_more(&self.connection, op);
        match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError::Backend(Box::new(error))),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Runs `script` on `key` with the arguments `args` adds and, with
    /// [`wait_for_replicas`](RedisStoreBuilder::wait_for_replicas), `WAIT`
    /// behind it in the same pipeline (a pipeline goes to its first key's
    /// node, so the wait is for this write's node; a lone `WAIT` would go to
    /// every master of a cluster). Returns the script's reply, and how many
    /// replicas acknowledged when fewer than required.
    async fn write(
        &self,
        script: &Script,
        key: &str,
        args: impl FnOnce(&mut redis::Cmd),
    ) -> Result<(Value, Option<u32>), StoreError> {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(script.get_hash()).arg(1).arg(key);
        args(&mut eval);
        let mut pipe = redis::pipe();
        pipe.add_command(eval);
        if let Some(wait) = self.replicas {
            pipe.cmd("WAIT")
                .arg(wait.replicas.get())
                .arg(millis(wait.wait));
        }
        let replies: Vec<Value> = self
            .run(|mut connection| {
                let pipe = &pipe;
                async move {
                    match pipe.query_async(&mut connection).await {
                        Err(error)
                            if error.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                        {
                            // A restarted or promoted node: load the script
                            // (on every master of a cluster), send again.
                            script.load_async(&mut connection).await?;
                            pipe.query_async(&mut connection).await
                        }
                        outcome => outcome,
                    }
                }
            })
            .await?;
        let mut replies = replies.into_iter();
        let reply = replies.next().unwrap_or(Value::Nil);
        let short = match (self.replicas, replies.next()) {
            (None, _) => None,
            (Some(wait), Some(Value::Int(acknowledged))) => {
                let acknowledged = u32::try_from(acknowledged).unwrap_or(0);
                (acknowledged < wait.replicas.get()).then_some(acknowledged)
            }
            (Some(_), other) => {
                return Err(StoreError::Corrupt(format!(
                    "unexpected WAIT reply {other:?}"
                )));
            }
        };
        Ok((reply, short))
    }

    fn not_replicated(&self, acknowledged: u32) -> StoreError {
        StoreError::NotReplicated {
            acknowledged,
            wanted: self.replicas.map_or(0, |wait| wait.replicas.get()),
        }
    }
}

/// Reads an `HMGET s f r` reply (a claim that found the key held, or a lookup).
fn existing(reply: &[Value]) -> Result<Option<Existing>, StoreError> {
    let bytes = |index: usize| match reply.get(index) {
        Some(Value::BulkString(bytes)) => Some(bytes.as_slice()),
        _ => None,
    };
    let Some(state) = bytes(0) else {
        return Ok(None);
    };
    let fingerprint = bytes(1)
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(Fingerprint::from_bytes)
        .ok_or_else(|| {
            StoreError::Corrupt("the fingerprint field is missing or not 32 bytes".to_owned())
        })?;
    match state {
        b"p" => Ok(Some(Existing::InProgress { fingerprint })),
        b"c" => {
            let recorded = bytes(2).ok_or_else(|| {
                StoreError::Corrupt("a completed key has no recorded response".to_owned())
            })?;
            let response = RecordedResponse::decode(recorded).map_err(|error| {
                StoreError::Corrupt(format!("the recorded response does not decode: {error}"))
            })?;
            Ok(Some(Existing::Completed {
                fingerprint,
                response: Arc::new(response),
            }))
        }
        other => Err(StoreError::Corrupt(format!(
            "unknown state {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl<C> IdempotencyStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn lookup<'a>(&'a self, key: &'a StoreKey) -> StoreFuture<'a, Option<Existing>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let reply: Vec<Value> = self
                .run(|mut connection| {
                    let redis_key = &redis_key;
                    async move {
                        redis::cmd("HMGET")
                            .arg(redis_key)
                            .arg(&["s", "f", "r"])
                            .query_async(&mut connection)
                            .await
                    }
                })
                .await?;
            existing(&reply)
        })
    }

    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let (reply, short) = self
                .write(&self.scripts.claim, &self.redis_key(key), |eval| {
                    eval.arg(token.as_bytes().as_slice())
                        .arg(fingerprint.as_bytes().as_slice())
                        .arg(millis(lock_ttl));
                })
                .await?;
            match reply {
                Value::Int(1) => {
                    if let Some(acknowledged) = short {
                        // Not safe to run on: give the claim back, so that a
                        // retry finds the key free rather than in progress.
                        let _ = self.release(key, token).await;
                        return Err(self.not_replicated(acknowledged));
                    }
                    Ok(Claim::Acquired)
                }
                Value::Array(held) => match existing(&held)? {
                    Some(existing) => Ok(Claim::Existing(existing)),
                    None => Err(StoreError::Corrupt(
                        "the claim script found the key held but read no state".to_owned(),
                    )),
                },
                other => Err(StoreError::Corrupt(format!(
                    "unexpected claim reply {other:?}"
                ))),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        response: &'a Arc<RecordedResponse>,
        key_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let encoded = response.encode().map_err(|error| {
                StoreError::Corrupt(format!("the response does not encode: {error}"))
            })?;
            let (reply, short) = self
                .write(&self.scripts.complete, &self.redis_key(key), |eval| {
                    eval.arg(token.as_bytes().as_slice())
                        .arg(encoded)
                        .arg(millis(key_ttl));
                })
                .await?;
            let completed = matches!(reply, Value::Int(1));
            match short {
                // Recorded on the master only: an error, so that the layer
                // records again (a no-op under the same token) and waits again.
                Some(acknowledged) if completed => Err(self.not_replicated(acknowledged)),
                _ => Ok(completed),
            }
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: &'a ClaimToken) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut invocation = self.scripts.release.key(self.redis_key(key));
            invocation.arg(token.as_bytes().as_slice());
            let released: i64 = self
                .run(|mut connection| {
                    let invocation = &invocation;
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(released == 1)
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a ClaimToken,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut invocation = self.scripts.renew.key(self.redis_key(key));
            invocation
                .arg(token.as_bytes().as_slice())
                .arg(millis(lock_ttl));
            let renewed: i64 = self
                .run(|mut connection| {
                    let invocation = &invocation;
                    async move { invocation.invoke_async(&mut connection).await }
                })
                .await?;
            Ok(renewed == 1)
        })
    }
}

impl<C> std::fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}
