//! # perfkit reference app
//!
//! An axum service that composes every perfkit crate, and runs with no
//! setup: SQLite (a file, migrated and seeded at start), an in-process cache
//! and invalidation bus, an in-memory idempotency store and a built-in
//! embedding model. `REDIS_URL`, `DATABASE_URL=postgres://…` and
//! `OPENAI_BASE_URL` switch each part to its server.
//!
//! | route | what it shows |
//! | --- | --- |
//! | `POST /payments`, `GET /payments` | the idempotency layer, scoped by the caller (`Authorization: Bearer <account>`) |
//! | `GET /agents/{id}`, `PUT /agents/{id}` | the tiered cache over a row, invalidated across instances |
//! | `GET /prices?coins=a,b` | single-flight (`DedupLayer`) and a short-TTL cache in front of a slow upstream |
//! | `POST /v1/embeddings` | OpenAI-shaped embeddings through the LLM batcher and its rate limiter |
//! | `GET /metrics` | Prometheus text, every perfkit metric |
//! | `GET /health` | pool snapshots, cache statistics, bus state; `503` when a dependency is down |
//! | `GET /debug/slow-queries` | the query auditor's report: slowest statements, their advice, N+1 loops |
//! | `GET /` | a status page that refreshes itself |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use perfkit_reference_app::{App, Config};
//!
//! let app = App::build(Config::embedded()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! app.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod config;
mod db;
mod error;
mod routes;
mod services;
mod status;

use std::sync::Arc;
use std::time::Duration;

use perfkit::audit::Auditor;
use perfkit::cache::{Cache, LocalBus, MemoryTier, RedisBus, RedisTier};
use perfkit::idempotency::{IdempotencyLayer, MemoryStore, RedisStore};
use perfkit::pool::PoolMonitor;

pub use crate::config::Config;
pub use crate::db::{Agent, Payment};
pub use crate::error::StartError;
pub use crate::services::Prices;

use crate::db::Db;
use crate::services::{Embeddings, Upstream};

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) db: Db,
    pub(crate) agents: Cache<Agent>,
    pub(crate) prices: Cache<Prices>,
    pub(crate) upstream: Upstream,
    pub(crate) embeddings: Embeddings,
    pub(crate) monitor: PoolMonitor,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub(crate) idempotency: IdempotencyLayer,
    /// For `/health`'s own ping, when Redis is configured.
    pub(crate) redis: Option<perfkit_redis::LazyConnection>,
}

/// A built app: its router and what must be drained when it stops. Cheap
/// to clone: clones share everything.
#[derive(Clone)]
pub struct App {
    shared: Arc<Shared>,
}

impl App {
    /// Builds every component from `config`: connects (and migrates, and
    /// seeds) the database, starts the pool monitor, the auditor's EXPLAIN
    /// worker and the batcher.
    ///
    /// # Errors
    ///
    /// [`StartError`]: a database that does not answer or cannot be
    /// migrated, a configuration a component refuses.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let component = |e: &dyn std::fmt::Display| StartError::Component(e.to_string());
        let metrics = services::prometheus()?;
        let backend = db::Backend::of(&config.database_url)?;
        let auditor = Auditor::builder()
            .name("app")
            .slow_threshold(config.slow_query())
            .explainer(db::explainer(&config.database_url, backend)?)
            .explain_interval(Duration::from_secs(60))
            .build()
            .map_err(|e| component(&e))?;
        let db = Db::open(&config, backend, auditor).await?;

        let mut agents = Cache::builder().name("agents").tier(
            MemoryTier::builder()
                .name("l1")
                .max_entries(50_000)
                .max_ttl(Duration::from_secs(60))
                .build()
                .map_err(|e| component(&e))?,
        );
        let idempotency = match &config.redis_url {
            Some(url) => {
                agents = agents
                    .tier(
                        RedisTier::builder(url)
                            .prefix(format!("{}agents:", config.redis_prefix))
                            .build()
                            .map_err(|e| component(&e))?,
                    )
                    .invalidation_bus(
                        RedisBus::builder(url)
                            .channel(format!("{}agents:invalidations", config.redis_prefix))
                            .build()
                            .map_err(|e| component(&e))?,
                    );
                IdempotencyLayer::builder(
                    RedisStore::builder(url)
                        .prefix(format!("{}idempotency:", config.redis_prefix))
                        .build()
                        .map_err(|e| component(&e))?,
                )
            }
            None => {
                agents = agents.invalidation_bus(LocalBus::new());
                IdempotencyLayer::builder(MemoryStore::new())
            }
        };
        let agents = agents
            .default_ttl(Duration::from_secs(300))
            .negative_ttl(Duration::from_secs(5))
            .build()
            .map_err(|e| component(&e))?;
        let idempotency = idempotency
            .name("payments")
            .scope(|request| routes::account(&request.headers).map(str::to_owned))
            .build()
            .map_err(|e| component(&e))?;
        let prices = Cache::builder()
            .name("prices")
            .default_ttl(config.prices_ttl())
            .build()
            .map_err(|e| component(&e))?;

        let monitor = PoolMonitor::builder()
            .interval(Duration::from_secs(1))
            .build()
            .map_err(|e| component(&e))?;
        monitor
            .watch(
                "app",
                &db.pool,
                vec![
                    perfkit::pool::Alert::new(
                        "exhausted",
                        perfkit::pool::Condition::WaitingAbove(0),
                        Duration::from_secs(5),
                    ),
                    perfkit::pool::Alert::new(
                        "slow acquires",
                        perfkit::pool::Condition::AcquireP99Above(Duration::from_millis(100)),
                        Duration::from_secs(30),
                    ),
                ],
            )
            .map_err(|e| component(&e))?;

        let redis = match &config.redis_url {
            Some(url) => Some(
                perfkit_redis::LazyConnection::open(url, Duration::from_millis(500))
                    .map_err(|e| component(&e))?,
            ),
            None => None,
        };
        let shared = Shared {
            redis,
            upstream: Upstream::new(config.upstream_latency()),
            embeddings: Embeddings::new(&config)?,
            config,
            db,
            agents,
            prices,
            monitor,
            metrics,
            idempotency,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// The routes, for serving or for calling in-process.
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.shared))
    }

    /// The auditor, whose `layer()` a binary installs in its subscriber to
    /// find N+1 loops (it needs the requests' spans).
    #[must_use]
    pub fn auditor(&self) -> &Auditor {
        &self.shared.db.auditor
    }

    /// Calls of the simulated price upstream so far.
    #[must_use]
    pub fn upstream_calls(&self) -> u64 {
        self.shared.upstream.calls()
    }

    /// Payments recorded for `(account, idempotency key)`.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn count_payments(&self, account: &str, key: &str) -> Result<i64, String> {
        self.shared
            .db
            .count_payments(account, key)
            .await
            .map_err(|e| e.to_string())
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes the
    /// requests in flight, sends what the batcher holds and stops the
    /// monitor.
    ///
    /// # Errors
    ///
    /// The server's I/O errors.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.shared.embeddings.shutdown().await;
        tracing::info!("requests finished, batcher drained");
        Ok(())
    }
}
