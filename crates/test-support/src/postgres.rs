//! A live PostgreSQL pool in a schema of its own.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::namespace::{clean_up, unique_id};
use crate::requirement::{Requirement, Unavailable};
use crate::service::{Service, database_url};

/// How long connecting may take before PostgreSQL counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections in a test's pool.
const POOL_SIZE: u32 = 5;

/// Connects to the database at [`database_url`] in a fresh schema, or returns
/// `None` after printing why the test is skipped.
///
/// # Panics
///
/// When PostgreSQL does not answer and `PERFKIT_REQUIRE_SERVICES=1`, with a
/// message that says how to start it.
pub async fn postgres() -> Option<TestPostgres> {
    TestPostgres::connect(&database_url(), Requirement::from_env()).await
}

/// A PostgreSQL pool for one test, whose connections all use a schema that no
/// other test uses (`search_path`), so unqualified table names are private.
///
/// The schema and everything in it are dropped when this value is dropped.
#[derive(Debug)]
pub struct TestPostgres {
    url: String,
    schema: String,
    options: PgConnectOptions,
    pool: PgPool,
}

impl TestPostgres {
    /// Connects to `url` in a fresh schema; when PostgreSQL does not answer,
    /// applies `requirement` (skip: `None`, require: panic).
    ///
    /// # Panics
    ///
    /// When PostgreSQL does not answer under [`Requirement::Required`].
    pub async fn connect(url: &str, requirement: Requirement) -> Option<Self> {
        match Self::try_connect(url).await {
            Ok(postgres) => Some(postgres),
            Err(unavailable) => {
                requirement.enforce(&unavailable);
                None
            }
        }
    }

    /// Connects to `url`, creates a fresh schema and a pool that uses it.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when the URL is invalid, PostgreSQL does not answer in
    /// time, or the schema cannot be created.
    pub async fn try_connect(url: &str) -> Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            service: Service::Postgres,
            url: url.to_owned(),
            reason,
        };
        let base = PgConnectOptions::from_str(url)
            .map_err(|e| unavailable(format!("invalid URL: {e}")))?;
        let schema = format!("perfkit_test_{}", unique_id());

        let mut admin = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&base))
            .await
            .map_err(|_| unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        // The name is ours (a prefix and hex digits), so interpolating it is safe.
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut admin)
            .await
            .map_err(|e| unavailable(format!("could not create schema {schema}: {e}")))?;
        let _ = admin.close().await;

        let options = base.options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            schema,
            options,
            pool,
        })
    }

    /// The database URL.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool; every connection's `search_path` is [`TestPostgres::schema`].
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This test's schema name.
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Connect options with this test's `search_path`, for tests that build
    /// pools or connections of their own.
    #[must_use]
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let base = self.options.clone().options([("search_path", "public")]);
        let schema = self.schema.clone();
        clean_up(&format!("schema {}", self.schema), move || async move {
            drop_schema(&base, &schema).await
        });
    }
}

async fn drop_schema(options: &PgConnectOptions, schema: &str) -> Result<(), String> {
    let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    // Never wait forever on a lock a test left behind in an open transaction.
    sqlx::query("SET lock_timeout = '5s'")
        .execute(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut connection)
    .await
    .map_err(|e| e.to_string())?;
    let _ = connection.close().await;
    Ok(())
}
