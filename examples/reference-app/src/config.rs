//! The app's configuration: flags, each with an environment variable.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// The reference app's configuration. Every flag has an environment variable;
/// with none set it runs on SQLite, an in-process cache and in-memory
/// idempotency, with a built-in embedding model: no server needed.
#[derive(Debug, Clone, Parser)]
#[command(name = "perfkit-reference-app", version, about)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://…` (created if missing) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://perfkit-reference-app.db"
    )]
    pub database_url: String,

    /// Redis URL: the cache's L2 and invalidation bus, and the idempotency
    /// store. Without it: an in-process cache and an in-memory store.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel the app uses (instances that
    /// share data must share it).
    #[arg(long, env = "REDIS_PREFIX", default_value = "perfkit-app:")]
    pub redis_prefix: String,

    /// An OpenAI-compatible provider's base URL for `/v1/embeddings`
    /// (`https://api.openai.com/v1`). Without it: a built-in deterministic
    /// model.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,

    /// The provider's API key (never printed).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,

    /// The embedding model.
    #[arg(
        long,
        env = "EMBEDDING_MODEL",
        default_value = "text-embedding-3-small"
    )]
    pub embedding_model: String,

    /// Latency of the simulated price upstream, in milliseconds.
    #[arg(long, env = "UPSTREAM_LATENCY_MS", default_value_t = 200)]
    pub upstream_latency_ms: u64,

    /// How long price quotes are cached, in milliseconds.
    #[arg(long, env = "PRICES_TTL_MS", default_value_t = 2_000)]
    pub prices_ttl_ms: u64,

    /// Statements slower than this are logged and explained, in milliseconds.
    #[arg(long, env = "SLOW_QUERY_MS", default_value_t = 5)]
    pub slow_query_ms: u64,

    /// Agents seeded into an empty database.
    #[arg(long, env = "SEED_AGENTS", default_value_t = 10_000)]
    pub seed_agents: u32,

    /// Payments seeded into an empty database.
    #[arg(long, env = "SEED_PAYMENTS", default_value_t = 100_000)]
    pub seed_payments: u32,

    /// Connections in the database pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,

    /// Serve `/payments`, `/agents/{id}` and `/prices` without the perfkit
    /// layers (no idempotency layer, no cache, no single-flight), to measure
    /// what each costs or saves under load.
    #[arg(
        long,
        env = "BARE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub bare: bool,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
}

impl Config {
    /// The defaults, as with no flag and no environment variable (the
    /// environment is not read).
    #[must_use]
    pub fn embedded() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command().mut_args(|arg| arg.env(None::<&str>));
        command
            .try_get_matches_from(["perfkit-reference-app"])
            .ok()
            .and_then(|matches| Self::from_arg_matches(&matches).ok())
            // Unreachable: every flag has a default.
            .unwrap_or_else(|| Self::parse_from(["perfkit-reference-app"]))
    }

    pub(crate) fn upstream_latency(&self) -> Duration {
        Duration::from_millis(self.upstream_latency_ms)
    }

    pub(crate) fn prices_ttl(&self) -> Duration {
        Duration::from_millis(self.prices_ttl_ms.max(1))
    }

    pub(crate) fn slow_query(&self) -> Duration {
        Duration::from_millis(self.slow_query_ms)
    }
}

/// A URL with its password replaced by `***`.
pub(crate) fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  listen          {}", self.listen)?;
        writeln!(f, "  database        {}", masked(&self.database_url))?;
        match &self.redis_url {
            Some(url) => writeln!(
                f,
                "  redis           {} (cache L2 + invalidation bus, idempotency store)",
                masked(url)
            )?,
            None => writeln!(
                f,
                "  redis           none (in-process cache and bus, in-memory idempotency store)"
            )?,
        }
        match &self.openai_base_url {
            Some(url) => writeln!(
                f,
                "  embeddings      {} at {} (key {})",
                self.embedding_model,
                masked(url),
                if self.openai_api_key.is_some() {
                    "set, hidden"
                } else {
                    "not set"
                }
            )?,
            None => writeln!(
                f,
                "  embeddings      built-in deterministic model ({})",
                self.embedding_model
            )?,
        }
        writeln!(
            f,
            "  price upstream  simulated, {} ms per call; quotes cached {} ms",
            self.upstream_latency_ms, self.prices_ttl_ms
        )?;
        write!(
            f,
            "  slow queries    over {} ms are logged and explained",
            self.slow_query_ms
        )?;
        if self.bare {
            write!(
                f,
                "\n  BARE            /payments, /agents, /prices served without the perfkit layers"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        assert_eq!(
            masked("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(masked("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(masked("sqlite://app.db"), "sqlite://app.db");
        let config = Config::parse_from([
            "app",
            "--redis-url",
            "redis://:pw@127.0.0.1:6379",
            "--openai-base-url",
            "https://api.example/v1",
            "--openai-api-key",
            "sk-secret",
        ]);
        let printed = config.to_string();
        assert!(
            !printed.contains("pw@") && !printed.contains("sk-secret"),
            "{printed}"
        );
        assert!(printed.contains("key set, hidden"), "{printed}");
        assert!(Config::parse_from(["app", "--bare"]).bare);
        // The embedded defaults ignore the environment (CI exports REDIS_URL).
        // SAFETY-free: no other test of this binary reads these variables.
        let embedded = Config::embedded();
        assert_eq!(embedded.redis_url, None);
        assert_eq!(embedded.database_url, "sqlite://perfkit-reference-app.db");
        assert!(!Config::parse_from(["app"]).bare);
    }
}
