//! A live Redis connection in a key prefix of its own.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Commands};

use crate::namespace::unique_id;
use crate::requirement::{Requirement, Unavailable};
use crate::service::{Service, redis_url};

/// How long connecting (or answering PING) may take before Redis counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys deleted per `DEL` during cleanup.
const CLEANUP_BATCH: usize = 500;

/// Connects to the Redis at [`redis_url`] in a fresh key prefix, or returns
/// `None` after printing why the test is skipped.
///
/// # Panics
///
/// When Redis does not answer and `PERFKIT_REQUIRE_SERVICES=1`, with a message
/// that says how to start it.
pub async fn redis() -> Option<TestRedis> {
    TestRedis::connect(&redis_url(), Requirement::from_env()).await
}

/// A Redis connection for one test, with a key prefix no other test uses.
///
/// Every key under [`TestRedis::prefix`] is deleted when this value is dropped.
/// Pass the prefix to the crate under test as its configured key prefix, or
/// build keys with [`TestRedis::key`].
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    client: redis::Client,
    connection: MultiplexedConnection,
    prefix: String,
}

impl TestRedis {
    /// Connects to `url` in a fresh prefix; when Redis does not answer, applies
    /// `requirement` (skip: `None`, require: panic).
    ///
    /// # Panics
    ///
    /// When Redis does not answer under [`Requirement::Required`].
    pub async fn connect(url: &str, requirement: Requirement) -> Option<Self> {
        match Self::try_connect(url).await {
            Ok(redis) => Some(redis),
            Err(unavailable) => {
                requirement.enforce(&unavailable);
                None
            }
        }
    }

    /// Connects to `url` and checks it answers `PING`, within a short timeout.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when the URL is invalid or Redis does not answer.
    pub async fn try_connect(url: &str) -> Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            service: Service::Redis,
            url: url.to_owned(),
            reason,
        };
        let client =
            redis::Client::open(url).map_err(|e| unavailable(format!("invalid URL: {e}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| unavailable(format!("PING failed: {e}")))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            connection,
            prefix: format!("perfkit-test:{}:", unique_id()),
        })
    }

    /// The server URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client, for tests that need connections of their own (pub/sub, a
    /// second cache instance, a connection to kill).
    #[must_use]
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A handle on the shared multiplexed connection.
    #[must_use]
    pub fn connection(&self) -> MultiplexedConnection {
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

    /// Every key currently under this test's prefix, sorted (cursor-based
    /// `SCAN`). Keys are binary in Redis: bytes that are not UTF-8 show as
    /// U+FFFD here ([`TestRedis::raw_keys`] has them as they are).
    ///
    /// # Errors
    ///
    /// When Redis fails the `SCAN`.
    pub async fn keys(&self) -> redis::RedisResult<Vec<String>> {
        let mut keys: Vec<String> = self
            .raw_keys()
            .await?
            .iter()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Every key currently under this test's prefix, as bytes, sorted.
    ///
    /// # Errors
    ///
    /// When Redis fails the `SCAN`.
    pub async fn raw_keys(&self) -> redis::RedisResult<Vec<Vec<u8>>> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Deletes every key under the prefix. Blocking (a `Drop` cannot await), on
    /// a fresh connection so that it works whatever state the test left the
    /// shared one in.
    fn delete_namespace(&self) -> redis::RedisResult<usize> {
        let mut connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        connection.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        connection.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        let keys = connection
            .scan_match::<_, Vec<u8>>(format!("{}*", self.prefix))?
            .collect::<redis::RedisResult<Vec<Vec<u8>>>>()?;
        for chunk in keys.chunks(CLEANUP_BATCH) {
            redis::cmd("DEL").arg(chunk).exec(&mut connection)?;
        }
        Ok(keys.len())
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Err(e) = self.delete_namespace() {
            // A test that stopped Redis on purpose ends up here; nothing to clean then.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!(
                    "perfkit-test-support: could not delete Redis keys under {}: {e}\n",
                    self.prefix
                ),
            );
        }
    }
}
