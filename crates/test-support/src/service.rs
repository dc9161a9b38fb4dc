//! The services tests talk to, where to find them and how to start them.

use std::fmt;

/// `REDIS_URL` when it is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `DATABASE_URL` when it is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `REDIS_CLUSTER_URLS` when it is not set: the local cluster `.ci/run`
/// starts (3 masters, 3 replicas).
pub const DEFAULT_REDIS_CLUSTER_URLS: &str = "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003,redis://127.0.0.1:7004,redis://127.0.0.1:7005";

/// `MYSQL_URL` when it is not set (MariaDB or MySQL).
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// Set this variable to `1` to turn every skipped service test into a failure.
pub const REQUIRE_SERVICES_VAR: &str = "PERFKIT_REQUIRE_SERVICES";

/// The Redis server tests use: `REDIS_URL`, or [`DEFAULT_REDIS_URL`].
#[must_use]
pub fn redis_url() -> String {
    env_or("REDIS_URL", DEFAULT_REDIS_URL)
}

/// The PostgreSQL database tests use: `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
#[must_use]
pub fn database_url() -> String {
    env_or("DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// The Redis Cluster tests use: `REDIS_CLUSTER_URLS` (comma-separated node
/// URLs), or [`DEFAULT_REDIS_CLUSTER_URLS`].
#[must_use]
pub fn redis_cluster_urls() -> Vec<String> {
    env_or("REDIS_CLUSTER_URLS", DEFAULT_REDIS_CLUSTER_URLS)
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The MySQL (MariaDB) server tests use: `MYSQL_URL`, or [`DEFAULT_MYSQL_URL`].
#[must_use]
pub fn mysql_url() -> String {
    env_or("MYSQL_URL", DEFAULT_MYSQL_URL)
}

fn env_or(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => default.to_owned(),
    }
}

/// A service that some tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Service {
    /// Redis, found through `REDIS_URL`.
    Redis,
    /// PostgreSQL, found through `DATABASE_URL`.
    Postgres,
    /// MySQL or MariaDB, found through `MYSQL_URL`.
    Mysql,
    /// A Redis Cluster, found through `REDIS_CLUSTER_URLS`.
    RedisCluster,
}

impl Service {
    /// The environment variable that points at this service.
    #[must_use]
    pub fn url_var(self) -> &'static str {
        match self {
            Self::Redis => "REDIS_URL",
            Self::Postgres => "DATABASE_URL",
            Self::Mysql => "MYSQL_URL",
            Self::RedisCluster => "REDIS_CLUSTER_URLS",
        }
    }

    /// How to get this service running on a developer machine or CI runner.
    #[must_use]
    pub fn start_hint(self) -> &'static str {
        match self {
            Self::Redis => {
                "start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` \
                 (Debian/Ubuntu: `apt install redis-server`; container: `docker run -d -p 6379:6379 redis:7`)"
            }
            Self::Postgres => {
                "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` and make sure \
                 database `test` exists with trust auth for `postgres` on 127.0.0.1 \
                 (Debian/Ubuntu: `apt install postgresql`; container: \
                 `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:16`)"
            }
            Self::RedisCluster => {
                "start one as `.ci/run` does: six `redis-server --port 700N --cluster-enabled yes \
                 --cluster-config-file nodes-700N.conf --save \"\" --appendonly no --daemonize yes` (N = 0..5), then \
                 `redis-cli --cluster create 127.0.0.1:7000 … 127.0.0.1:7005 --cluster-replicas 1 --cluster-yes`"
            }
            Self::Mysql => {
                "start it with `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` and make sure \
                 `root` connects without a password on 127.0.0.1 \
                 (Debian/Ubuntu: `apt install mariadb-server`; container: \
                 `docker run -d -p 3306:3306 -e MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1 -e MARIADB_DATABASE=test mariadb:10.11`)"
            }
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis => "Redis",
            Self::Postgres => "PostgreSQL",
            Self::Mysql => "MySQL",
            Self::RedisCluster => "Redis Cluster",
        })
    }
}
