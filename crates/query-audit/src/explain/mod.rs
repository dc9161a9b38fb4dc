//! EXPLAIN off the hot path, and index advice from the plans.

mod advice;
mod plan;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

pub use self::advice::Advice;
pub use self::plan::PlanNode;
use crate::fingerprint::{Scanner, Token};

/// Whether EXPLAIN may run the statement (`EXPLAIN ANALYZE`) to measure it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Analyze {
    /// Never: plans are the planner's estimates (the default).
    #[default]
    Never,
    /// Read-only statements (`SELECT`, and `WITH` without a data-modifying
    /// part) are run to measure them.
    Select,
    /// As `Select`, and `INSERT`/`UPDATE`/`DELETE`/`MERGE` too, inside a
    /// transaction that is rolled back (their effects on rows are undone;
    /// sequences, and anything done outside the database, are not).
    SelectAndDml,
}

/// Why a statement was not explained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExplainError {
    /// The statement is not one EXPLAIN takes safely (DDL, several
    /// statements, a transaction command…).
    #[error("not explained: {0}")]
    NotExplainable(&'static str),
    /// The explain connection could not be opened.
    #[error("cannot connect to explain: {0}")]
    Connect(#[source] sqlx::Error),
    /// The database refused the EXPLAIN.
    #[error("EXPLAIN failed: {0}")]
    Database(#[source] sqlx::Error),
    /// The EXPLAIN took longer than its timeout.
    #[error("EXPLAIN took longer than {0:?}")]
    Timeout(Duration),
    /// The plan could not be read.
    #[error("the plan could not be read")]
    Plan,
}

/// A statement's plan and the advice drawn from it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Explained {
    /// The plan's root.
    pub plan: PlanNode,
    /// The plan as the database wrote it: PostgreSQL's `EXPLAIN (VERBOSE,
    /// FORMAT JSON)`, or SQLite's `EXPLAIN QUERY PLAN` rows as
    /// `[{"id", "parent", "detail"}]`.
    pub json: serde_json::Value,
    /// Whether it is a generic plan (the statement had placeholders).
    pub generic: bool,
    /// Whether the statement was run to measure it (`EXPLAIN ANALYZE`).
    pub analyzed: bool,
    /// Index advice; empty when the plan needs none.
    pub advice: Vec<Advice>,
}

/// Runs EXPLAIN on a connection of its own (never one of the service's),
/// one statement at a time, with a `statement_timeout`.
///
/// PostgreSQL: `EXPLAIN (VERBOSE, FORMAT JSON)` inside a transaction that is
/// rolled back. A statement with placeholders (`$1`) gets a generic plan:
/// PostgreSQL 15 has no `EXPLAIN (GENERIC_PLAN)`, so it is prepared, planned
/// with `plan_cache_mode = force_generic_plan` and `EXECUTE` with `NULL`s
/// (safe only under the forced generic plan), then deallocated.
/// Statements sent to EXPLAIN go through the extended protocol, which takes
/// exactly one statement: nothing appended to a statement can run.
///
/// SQLite (feature `sqlite`): `EXPLAIN QUERY PLAN`, whose rows (`SCAN t`,
/// or `SCAN TABLE t` before SQLite 3.36; `USE TEMP B-TREE FOR ORDER BY`)
/// name what is scanned; the columns come from the statement's `WHERE` and
/// `ORDER BY`.
#[derive(Clone)]
pub struct Explainer {
    inner: Arc<Backend>,
}

enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(postgres::Postgres),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::Sqlite),
}

/// Where an [`ExplainerBuilder`] connects.
#[derive(Debug, Clone)]
enum Target {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::postgres::PgConnectOptions),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
}

impl Explainer {
    /// An explainer for the PostgreSQL database `options` points to (the
    /// same database, user and `search_path` as the service's queries).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres(options: sqlx::postgres::PgConnectOptions) -> ExplainerBuilder {
        ExplainerBuilder::new(Target::Postgres(options))
    }

    /// An explainer for the SQLite database `options` points to (the same
    /// file as the service's).
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub fn sqlite(options: sqlx::sqlite::SqliteConnectOptions) -> ExplainerBuilder {
        ExplainerBuilder::new(Target::Sqlite(options))
    }

    /// Explains `statement` and draws index advice from its plan.
    ///
    /// # Errors
    ///
    /// [`ExplainError`]: not explainable, no connection, refused, too slow.
    pub async fn explain(&self, statement: &str) -> Result<Explained, ExplainError> {
        // The explainer's own statements are not the service's: an auditor's
        // layer does not record them.
        crate::audited::Unaudited::new(async {
            match &*self.inner {
                #[cfg(feature = "postgres")]
                Backend::Postgres(postgres) => postgres.explain(statement).await,
                #[cfg(feature = "sqlite")]
                Backend::Sqlite(sqlite) => sqlite.explain(statement).await,
            }
        })
        .await
    }
}

impl std::fmt::Debug for Explainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Explainer").finish_non_exhaustive()
    }
}

/// Configures an [`Explainer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ExplainerBuilder {
    target: Target,
    timeout: Duration,
    analyze: Analyze,
}

impl ExplainerBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            timeout: Duration::from_secs(5),
            analyze: Analyze::Never,
        }
    }

    /// The longest an EXPLAIN may take (`statement_timeout` on its
    /// session, and a client-side limit). Default: 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether statements may be run to measure them (PostgreSQL; SQLite's
    /// query plans have no measured form). Default: [`Analyze::Never`].
    pub fn analyze(mut self, analyze: Analyze) -> Self {
        self.analyze = analyze;
        self
    }

    /// The explainer; it connects on its first EXPLAIN.
    #[must_use]
    pub fn build(self) -> Explainer {
        let backend = match self.target {
            #[cfg(feature = "postgres")]
            Target::Postgres(options) => {
                Backend::Postgres(postgres::Postgres::new(options, self.timeout, self.analyze))
            }
            #[cfg(feature = "sqlite")]
            Target::Sqlite(options) => Backend::Sqlite(sqlite::Sqlite::new(options, self.timeout)),
        };
        Explainer {
            inner: Arc::new(backend),
        }
    }
}

/// What a statement is, for EXPLAIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads only.
    Read,
    /// Changes rows (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, or a `WITH`
    /// holding one).
    Write,
}

/// The statement's kind and its highest placeholder number; an error for
/// what EXPLAIN must not see.
/// `dollar_only`: placeholders must be `$n` (PostgreSQL); otherwise any
/// form is taken (SQLite binds `NULL` to what is left unbound).
pub(crate) fn classify(statement: &str, dollar_only: bool) -> Result<(Kind, u32), ExplainError> {
    let tokens: Vec<Token<'_>> = Scanner::new(statement.as_bytes()).collect();
    let mut tokens = tokens.as_slice();
    while let [rest @ .., Token::Symbol(b";")] = tokens {
        tokens = rest;
    }
    if tokens
        .iter()
        .any(|token| matches!(token, Token::Symbol(b";")))
    {
        return Err(ExplainError::NotExplainable("several statements"));
    }
    let word = |token: &Token<'_>| match token {
        Token::Word(word) => Some(String::from_utf8_lossy(word).to_ascii_lowercase()),
        _ => None,
    };
    let first = tokens
        .first()
        .and_then(word)
        .ok_or(ExplainError::NotExplainable("not a statement"))?;
    let writes = |tokens: &[Token<'_>]| {
        tokens
            .iter()
            .filter_map(word)
            .any(|word| matches!(word.as_str(), "insert" | "update" | "delete" | "merge"))
    };
    let kind = match first.as_str() {
        "select" | "values" | "table" => Kind::Read,
        "with" if writes(tokens) => Kind::Write,
        "with" => Kind::Read,
        "insert" | "update" | "delete" | "merge" => Kind::Write,
        _ => {
            return Err(ExplainError::NotExplainable(
                "only queries and row changes are explained",
            ));
        }
    };
    let mut highest = 0;
    for token in tokens {
        let Token::Placeholder(text) = token else {
            continue;
        };
        let number = text
            .strip_prefix(b"$")
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| digits.parse::<u32>().ok());
        match number {
            Some(number) => highest = highest.max(number),
            None if !dollar_only => highest = highest.max(1),
            None => return Err(ExplainError::NotExplainable("placeholders other than $n")),
        }
    }
    Ok((kind, highest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_and_the_unsafe_refused() {
        assert_eq!(
            classify("SELECT * FROM t WHERE a = $1 AND b = $3", true).unwrap(),
            (Kind::Read, 3)
        );
        assert_eq!(
            classify("update t set a = 1;", true).unwrap(),
            (Kind::Write, 0)
        );
        assert_eq!(
            classify(
                "with x as (delete from t returning *) select * from x",
                true
            )
            .unwrap(),
            (Kind::Write, 0)
        );
        assert_eq!(
            classify("with x as (select 1) select * from x", true)
                .unwrap()
                .0,
            Kind::Read
        );
        for refused in [
            "drop table t",
            "select 1; drop table t",
            "commit",
            "",
            "-- nothing",
            "select * from t where a = ?",
            "select * from t where a = :name",
        ] {
            assert!(classify(refused, true).is_err(), "{refused}");
        }
        // A `$` inside a string or a dollar quote is not a placeholder.
        assert_eq!(
            classify("select '$1', $$ $2 $$ from t", true).unwrap(),
            (Kind::Read, 0)
        );
    }
}
