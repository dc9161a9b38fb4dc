//! A Redis connection opened on first use: a cache (or a bus) can be built
//! while Redis is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::error::{ConfigError, TierError};

/// A multiplexed, auto-reconnecting connection, opened by the first call.
pub(crate) struct LazyConnection {
    client: redis::Client,
    config: ConnectionManagerConfig,
    cell: OnceCell<ConnectionManager>,
}

impl LazyConnection {
    /// A connection to `url` whose attempts take at most `connect_timeout`.
    pub(crate) fn new(url: &str, connect_timeout: Duration) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url).map_err(|e| ConfigError::RedisUrl(e.to_string()))?;
        // Few, quick retries: the caller's timeout (and the cache's breaker)
        // decide when to give up. No response timeout of redis-rs's own: the
        // caller bounds every call already, and a second timer per request
        // costs as much CPU as the rest of a lookup.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        Ok(Self {
            client,
            config,
            cell: OnceCell::new(),
        })
    }

    /// The connection, opened now if this is the first call.
    pub(crate) async fn get(&self) -> Result<ConnectionManager, TierError> {
        self.cell
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            })
            .await
            .cloned()
            .map_err(TierError::backend)
    }

    /// Runs `op` on the connection. An error that says the command did not
    /// reach a live connection runs it once more, on the connection's fresh
    /// reconnect: a refused or timed-out connect (redis-rs hands out the
    /// error of its last failed reconnect before starting a new one, so
    /// after Redis comes back the first call would fail on a server that
    /// answers), or a dropped connection (one whose driver task died with
    /// the runtime that opened it fails the first call made from another
    /// runtime). Callers only send commands that are safe to repeat.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, TierError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.get().await?;
        match op(connection.clone()).await {
            Err(error)
                if error.is_connection_refusal()
                    || error.is_timeout()
                    || error.is_connection_dropped() =>
            {
                op(connection).await.map_err(TierError::backend)
            }
            outcome => outcome.map_err(TierError::backend),
        }
    }

    /// The client, for connections of another kind (pub/sub).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether the connection has been opened.
    pub(crate) fn is_open(&self) -> bool {
        self.cell.initialized()
    }
}
