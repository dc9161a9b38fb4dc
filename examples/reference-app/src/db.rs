//! The database: SQLite or PostgreSQL through sqlx's `Any` driver, migrated
//! and seeded at start; every query audited at its call site and every
//! connection taken through the instrumented pool.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use perfkit::audit::Auditor;
use perfkit::pool::InstrumentedPool;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row};

use crate::error::{AppError, StartError};

/// Which database the URL named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn of(url: &str) -> Result<Self, StartError> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(StartError::DatabaseUrl(url.to_owned()))
        }
    }
}

/// The app's database: its pool (instrumented) and its auditor.
#[derive(Clone)]
pub(crate) struct Db {
    pub(crate) backend: Backend,
    pub(crate) pool: Arc<InstrumentedPool<Any>>,
    pub(crate) auditor: Auditor,
}

/// A payment, as stored and as returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Payment {
    /// Its id.
    pub id: i64,
    /// The paying account (the caller).
    pub account: String,
    /// Amount in the currency's minor unit.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When it was created (Unix milliseconds).
    pub created_ms: i64,
}

/// An agent record (cached by the tiered cache).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Agent {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// `active` or `retired`.
    pub status: String,
    /// Incremented by every update.
    pub version: i64,
    /// When it was last updated (Unix milliseconds).
    pub updated_ms: i64,
}

pub(crate) fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

fn payment(row: &AnyRow) -> Result<Payment, sqlx::Error> {
    Ok(Payment {
        id: row.try_get("id")?,
        account: row.try_get("account")?,
        amount_cents: row.try_get("amount_cents")?,
        currency: row.try_get("currency")?,
        created_ms: row.try_get("created_ms")?,
    })
}

fn agent(row: &AnyRow) -> Result<Agent, sqlx::Error> {
    Ok(Agent {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        version: row.try_get("version")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

impl Db {
    /// Connects, migrates and seeds an empty database.
    pub(crate) async fn open(
        config: &crate::Config,
        backend: Backend,
        auditor: Auditor,
    ) -> Result<Self, StartError> {
        sqlx::any::install_default_drivers();
        let url = config.database_url.as_str();
        let url = match backend {
            // A file that does not exist yet is created.
            Backend::Sqlite if !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(config.db_max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .map_err(StartError::Database)?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(StartError::Database)?;
        }
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&pool).await.map_err(StartError::Migrate)?;
        seed(&pool, backend, config.seed_agents, config.seed_payments).await?;
        let pool = InstrumentedPool::builder(pool)
            .name("app")
            .leak_threshold(Duration::from_secs(5))
            .build()
            .map_err(|e| StartError::Component(e.to_string()))?;
        Ok(Self {
            backend,
            pool: Arc::new(pool),
            auditor,
        })
    }

    /// The payment recorded for `(key, account)`, creating it if there is
    /// none: a handler that crashed after its insert and is retried finds
    /// its row instead of charging twice.
    pub(crate) async fn create_payment(
        &self,
        account: &str,
        key: &str,
        amount_cents: i64,
        currency: &str,
    ) -> Result<Payment, AppError> {
        let mut connection = self.pool.acquire().await?;
        let inserted = sqlx::query(
            "INSERT INTO payments (account, idempotency_key, amount_cents, currency, created_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key, account) DO NOTHING \
             RETURNING id, account, amount_cents, currency, created_ms",
        )
        .bind(account)
        .bind(key)
        .bind(amount_cents)
        .bind(currency)
        .bind(now_ms())
        .fetch_optional(self.auditor.on(&mut *connection))
        .await?;
        let row = match inserted {
            Some(row) => row,
            None => {
                sqlx::query(
                    "SELECT id, account, amount_cents, currency, created_ms FROM payments \
                     WHERE idempotency_key = $1 AND account = $2",
                )
                .bind(key)
                .bind(account)
                .fetch_one(self.auditor.on(&mut *connection))
                .await?
            }
        };
        Ok(payment(&row)?)
    }

    /// An account's latest payments, newest first, with its count and
    /// total (a whole-table scan without an index on `account`: the
    /// auditor's example).
    pub(crate) async fn payments(
        &self,
        account: &str,
        limit: i64,
    ) -> Result<(Vec<Payment>, i64, i64), AppError> {
        let mut connection = self.pool.acquire().await?;
        let rows = sqlx::query(
            "SELECT id, account, amount_cents, currency, created_ms FROM payments \
             WHERE account = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(self.auditor.on(&mut *connection))
        .await?;
        let payments = rows.iter().map(payment).collect::<Result<_, _>>()?;
        let totals = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(amount_cents), 0) AS total FROM payments \
             WHERE account = $1",
        )
        .bind(account)
        .fetch_one(self.auditor.on(&mut *connection))
        .await?;
        Ok((payments, totals.try_get("n")?, totals.try_get("total")?))
    }

    /// Payments with `(key, account)` (a test's count of charges).
    pub(crate) async fn count_payments(&self, account: &str, key: &str) -> Result<i64, AppError> {
        let mut connection = self.pool.acquire().await?;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM payments WHERE idempotency_key = $1 AND account = $2",
        )
        .bind(key)
        .bind(account)
        .fetch_one(self.auditor.on(&mut *connection))
        .await?;
        Ok(count)
    }

    pub(crate) async fn agent(&self, id: i64) -> Result<Option<Agent>, AppError> {
        let mut connection = self.pool.acquire().await?;
        let row =
            sqlx::query("SELECT id, name, status, version, updated_ms FROM agents WHERE id = $1")
                .bind(id)
                .fetch_optional(self.auditor.on(&mut *connection))
                .await?;
        Ok(row.as_ref().map(agent).transpose()?)
    }

    /// Updates an agent; `None` when there is no such agent.
    pub(crate) async fn update_agent(
        &self,
        id: i64,
        name: &str,
        status: &str,
    ) -> Result<Option<Agent>, AppError> {
        let mut connection = self.pool.acquire().await?;
        let row = sqlx::query(
            "UPDATE agents SET name = $1, status = $2, version = version + 1, updated_ms = $3 \
             WHERE id = $4 RETURNING id, name, status, version, updated_ms",
        )
        .bind(name)
        .bind(status)
        .bind(now_ms())
        .bind(id)
        .fetch_optional(self.auditor.on(&mut *connection))
        .await?;
        Ok(row.as_ref().map(agent).transpose()?)
    }

    /// Whether the database answers, within `timeout`.
    pub(crate) async fn ping(&self, timeout: Duration) -> bool {
        let ping = async {
            let mut connection = self.pool.acquire().await.ok()?;
            sqlx::query("SELECT 1").execute(&mut *connection).await.ok()
        };
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Some(_)))
    }
}

/// Seeds an empty database: agents, and payments spread over 1,000 accounts.
async fn seed(
    pool: &AnyPool,
    backend: Backend,
    agents: u32,
    payments: u32,
) -> Result<(), StartError> {
    let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents")
        .fetch_one(pool)
        .await
        .map_err(StartError::Database)?;
    if existing > 0 {
        return Ok(());
    }
    let now = now_ms();
    let (agents_sql, payments_sql) = match backend {
        Backend::Sqlite => (
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {agents}) \
                 INSERT INTO agents (id, name, status, version, updated_ms) \
                 SELECT i, 'agent ' || i, CASE WHEN i % 10 = 0 THEN 'retired' ELSE 'active' END, 1, {now} FROM n"
            ),
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {payments}) \
                 INSERT INTO payments (account, idempotency_key, amount_cents, currency, created_ms) \
                 SELECT 'acct-' || (i % 1000), 'seed-' || i, 100 + i % 9900, 'EUR', {now} FROM n"
            ),
        ),
        Backend::Postgres => (
            format!(
                "INSERT INTO agents (id, name, status, version, updated_ms) \
                 SELECT i, 'agent ' || i, CASE WHEN i % 10 = 0 THEN 'retired' ELSE 'active' END, 1, {now} \
                 FROM generate_series(1, {agents}) AS i"
            ),
            format!(
                "INSERT INTO payments (account, idempotency_key, amount_cents, currency, created_ms) \
                 SELECT 'acct-' || (i % 1000), 'seed-' || i, 100 + i % 9900, 'EUR', {now} \
                 FROM generate_series(1, {payments}) AS i"
            ),
        ),
    };
    for sql in [agents_sql, payments_sql] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .map_err(StartError::Database)?;
    }
    if backend == Backend::Postgres {
        sqlx::query("ANALYZE")
            .execute(pool)
            .await
            .map_err(StartError::Database)?;
    }
    Ok(())
}

/// Connect options for the auditor's EXPLAIN connection.
pub(crate) fn explainer(
    url: &str,
    backend: Backend,
) -> Result<perfkit::audit::explain::Explainer, StartError> {
    Ok(match backend {
        Backend::Postgres => perfkit::audit::explain::Explainer::postgres(
            sqlx::postgres::PgConnectOptions::from_str(url).map_err(StartError::Database)?,
        )
        .build(),
        Backend::Sqlite => perfkit::audit::explain::Explainer::sqlite(
            sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(StartError::Database)?,
        )
        .build(),
    })
}
