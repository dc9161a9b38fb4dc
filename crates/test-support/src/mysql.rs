//! A live MySQL (MariaDB) pool in a database of its own.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

use crate::namespace::{clean_up, unique_id};
use crate::requirement::{Requirement, Unavailable};
use crate::service::{Service, mysql_url};

/// How long connecting may take before MySQL counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections in a test's pool.
const POOL_SIZE: u32 = 5;

/// Connects to the server at [`mysql_url`] in a fresh database, or returns
/// `None` after printing why the test is skipped.
///
/// # Panics
///
/// When MySQL does not answer and `PERFKIT_REQUIRE_SERVICES=1`, with a
/// message that says how to start it.
pub async fn mysql() -> Option<TestMysql> {
    TestMysql::connect(&mysql_url(), Requirement::from_env()).await
}

/// A MySQL pool for one test, on a database that no other test uses, so
/// table names are private. The database is dropped when this value is.
#[derive(Debug)]
pub struct TestMysql {
    database: String,
    base: MySqlConnectOptions,
    options: MySqlConnectOptions,
    pool: MySqlPool,
}

impl TestMysql {
    /// Connects to `url` in a fresh database; when MySQL does not answer,
    /// applies `requirement` (skip: `None`, require: panic).
    ///
    /// # Panics
    ///
    /// When MySQL does not answer under [`Requirement::Required`].
    pub async fn connect(url: &str, requirement: Requirement) -> Option<Self> {
        match Self::try_connect(url).await {
            Ok(mysql) => Some(mysql),
            Err(unavailable) => {
                requirement.enforce(&unavailable);
                None
            }
        }
    }

    /// Connects to `url`, creates a fresh database and a pool on it.
    ///
    /// # Errors
    ///
    /// [`Unavailable`] when the URL is invalid, MySQL does not answer in
    /// time, or the database cannot be created.
    pub async fn try_connect(url: &str) -> Result<Self, Unavailable> {
        let unavailable = |reason: String| Unavailable {
            service: Service::Mysql,
            url: url.to_owned(),
            reason,
        };
        let base = MySqlConnectOptions::from_str(url)
            .map_err(|e| unavailable(format!("invalid URL: {e}")))?;
        let database = format!("perfkit_test_{}", unique_id());
        let mut admin = tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&base))
            .await
            .map_err(|_| unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        // The name is ours (a prefix and hex digits), so interpolating it is safe.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
            .execute(&mut admin)
            .await
            .map_err(|e| unavailable(format!("could not create database {database}: {e}")))?;
        let _ = admin.close().await;
        let options = base.clone().database(&database);
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Self {
            database,
            base,
            options,
            pool,
        })
    }

    /// The pool, on this test's database.
    #[must_use]
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Connect options on this test's database, for tests that build pools
    /// of their own.
    #[must_use]
    pub fn connect_options(&self) -> MySqlConnectOptions {
        self.options.clone()
    }
}

impl Drop for TestMysql {
    fn drop(&mut self) {
        let base = self.base.clone();
        let database = self.database.clone();
        clean_up(&format!("database {}", self.database), move || async move {
            drop_database(&base, &database).await
        });
    }
}

async fn drop_database(options: &MySqlConnectOptions, database: &str) -> Result<(), String> {
    let mut connection =
        tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(options))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{database}`"
    )))
    .execute(&mut connection)
    .await
    .map_err(|e| e.to_string())?;
    let _ = connection.close().await;
    Ok(())
}
