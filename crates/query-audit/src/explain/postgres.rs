//! EXPLAIN on PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::Mutex;

use super::advice::{Advice, Gates, IndexFacts, TableFacts, advise, quote};
use super::plan::PlanNode;
use super::{Analyze, ExplainError, Explained, Kind, classify};

/// The name of the statement prepared for a generic plan (one at a time,
/// on the explainer's own connection).
const PREPARED: &str = "query_audit_generic_plan";

pub(crate) struct Postgres {
    options: PgConnectOptions,
    timeout: Duration,
    analyze: Analyze,
    gates: Gates,
    /// The explainer's connection, opened on first use and again after a
    /// failure that may have left it in an unknown state.
    connection: Mutex<Option<PgConnection>>,
}

impl Postgres {
    pub(crate) fn new(options: PgConnectOptions, timeout: Duration, analyze: Analyze) -> Self {
        Self {
            options,
            timeout,
            analyze,
            gates: Gates::default(),
            connection: Mutex::new(None),
        }
    }

    pub(crate) async fn explain(&self, statement: &str) -> Result<Explained, ExplainError> {
        let (kind, placeholders) = classify(statement, true)?;
        let mut slot = self.connection.lock().await;
        let outcome = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            self.explain_on(&mut slot, statement, kind, placeholders),
        )
        .await;
        match outcome {
            Ok(Ok(explained)) => Ok(explained),
            Ok(Err(error)) => {
                if matches!(error, ExplainError::Database(_)) {
                    // A failed EXPLAIN may leave the prepared statement behind.
                    if let Some(connection) = slot.as_mut()
                        && deallocate(connection).await.is_err()
                    {
                        *slot = None;
                    }
                }
                Err(error)
            }
            Err(_) => {
                // Cut off mid-conversation: the connection's state is unknown.
                *slot = None;
                Err(ExplainError::Timeout(self.timeout))
            }
        }
    }

    async fn explain_on(
        &self,
        slot: &mut Option<PgConnection>,
        statement: &str,
        kind: Kind,
        placeholders: u32,
    ) -> Result<Explained, ExplainError> {
        if slot.is_none() {
            *slot = Some(
                PgConnection::connect_with(&self.options)
                    .await
                    .map_err(ExplainError::Connect)?,
            );
        }
        let Some(connection) = slot.as_mut() else {
            return Err(ExplainError::Plan);
        };
        let generic = placeholders > 0;
        let analyze = !generic
            && match self.analyze {
                Analyze::Never => false,
                Analyze::Select => kind == Kind::Read,
                Analyze::SelectAndDml => true,
            };
        let options = if analyze {
            "VERBOSE, FORMAT JSON, ANALYZE, BUFFERS"
        } else {
            "VERBOSE, FORMAT JSON"
        };
        let json = self
            .plan_once(connection, statement, placeholders, options)
            .await?;
        let root = PlanNode::from_explain(&json).ok_or(ExplainError::Plan)?;
        let facts = facts(connection, &root).await?;
        let mut advice = advise(&root, self.gates, &|schema, table| {
            facts
                .get(&(schema.to_owned(), table.to_owned()))
                .cloned()
                .unwrap_or_default()
        });
        if !advice.is_empty() {
            self.estimate(connection, statement, placeholders, &root, &mut advice)
                .await?;
        }
        Ok(Explained {
            plan: root,
            json,
            generic,
            analyzed: analyze,
            advice,
        })
    }
}

impl Postgres {
    /// One EXPLAIN of `statement` in a transaction that is rolled back: a
    /// generic plan when it has placeholders (prepared, planned with
    /// `force_generic_plan`, executed with `NULL`s, deallocated after).
    async fn plan_once(
        &self,
        connection: &mut PgConnection,
        statement: &str,
        placeholders: u32,
        options: &str,
    ) -> Result<serde_json::Value, ExplainError> {
        let mut transaction = connection.begin().await.map_err(ExplainError::Database)?;
        let timeout_ms = self.timeout.as_millis().max(1);
        run(
            &mut transaction,
            &format!("SET LOCAL statement_timeout = {timeout_ms}"),
        )
        .await?;
        let json = if placeholders > 0 {
            run(
                &mut transaction,
                "SET LOCAL plan_cache_mode = force_generic_plan",
            )
            .await?;
            run(
                &mut transaction,
                &format!("PREPARE {PREPARED} AS {statement}"),
            )
            .await?;
            let nulls = vec!["NULL"; usize::try_from(placeholders).unwrap_or(0)].join(", ");
            plan(
                &mut transaction,
                &format!("EXPLAIN ({options}) EXECUTE {PREPARED}({nulls})"),
            )
            .await?
        } else {
            plan(
                &mut transaction,
                &format!("EXPLAIN ({options}) {statement}"),
            )
            .await?
        };
        // Whatever EXPLAIN ANALYZE changed is undone.
        transaction
            .rollback()
            .await
            .map_err(ExplainError::Database)?;
        if placeholders > 0 {
            deallocate(connection).await?;
        }
        Ok(json)
    }

    /// dexter's before → after: the plan's cost with each advised index
    /// made hypothetical by `HypoPG` (nothing is built); without the
    /// extension, the advice says it has no estimate.
    async fn estimate(
        &self,
        connection: &mut PgConnection,
        statement: &str,
        placeholders: u32,
        root: &PlanNode,
        advice: &mut [Advice],
    ) -> Result<(), ExplainError> {
        let schema: Option<String> = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'hypopg'",
        )
        .fetch_optional(&mut *connection)
        .await
        .map_err(ExplainError::Database)?;
        let Some(schema) = schema else {
            for piece in advice.iter_mut() {
                piece
                    .evidence
                    .push_str("; no estimate of the index's effect: HypoPG is not installed");
            }
            return Ok(());
        };
        let schema = quote(&schema);
        for piece in advice.iter_mut() {
            let hypothetical =
                piece
                    .statement
                    .replacen("CREATE INDEX CONCURRENTLY", "CREATE INDEX", 1);
            sqlx::query(AssertSqlSafe(format!(
                "SELECT * FROM {schema}.hypopg_create_index($1)"
            )))
            .bind(&hypothetical)
            .persistent(false)
            .execute(&mut *connection)
            .await
            .map_err(ExplainError::Database)?;
            let after = self
                .plan_once(connection, statement, placeholders, "FORMAT JSON")
                .await;
            // The hypothetical index is dropped whatever the EXPLAIN did.
            sqlx::query(AssertSqlSafe(format!("SELECT {schema}.hypopg_reset()")))
                .persistent(false)
                .execute(&mut *connection)
                .await
                .map_err(ExplainError::Database)?;
            let after = PlanNode::from_explain(&after?).ok_or(ExplainError::Plan)?;
            piece.estimate = Some((root.total_cost, after.total_cost));
            piece.evidence.push_str(&format!(
                "; HypoPG: cost {:.0} → {:.0} with the index",
                root.total_cost, after.total_cost
            ));
        }
        Ok(())
    }
}

/// Runs one statement of ours (no rows expected).
async fn run(connection: &mut PgConnection, sql: &str) -> Result<(), ExplainError> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .persistent(false)
        .execute(connection)
        .await
        .map(drop)
        .map_err(ExplainError::Database)
}

/// The JSON plan EXPLAIN returns.
async fn plan(connection: &mut PgConnection, sql: &str) -> Result<serde_json::Value, ExplainError> {
    let row = sqlx::query(AssertSqlSafe(sql.to_owned()))
        .persistent(false)
        .fetch_one(connection)
        .await
        .map_err(ExplainError::Database)?;
    let Json(json) = row
        .try_get::<Json<serde_json::Value>, _>(0)
        .map_err(|_| ExplainError::Plan)?;
    Ok(json)
}

async fn deallocate(connection: &mut PgConnection) -> Result<(), ExplainError> {
    // Outside the transaction (a prepared statement outlives a rollback);
    // absent is fine (the PREPARE may have failed).
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_prepared_statements WHERE name = $1)")
            .bind(PREPARED)
            .fetch_one(&mut *connection)
            .await
            .map_err(ExplainError::Database)?;
    if exists {
        run(connection, &format!("DEALLOCATE {PREPARED}")).await?;
    }
    Ok(())
}

/// Rows and low-cardinality columns of every table a sequential scan reads.
async fn facts(
    connection: &mut PgConnection,
    plan: &PlanNode,
) -> Result<HashMap<(String, String), TableFacts>, ExplainError> {
    let mut facts = HashMap::new();
    for node in plan.walk() {
        let (Some(schema), Some(table)) = (&node.schema, &node.relation) else {
            continue;
        };
        let key = (schema.clone(), table.clone());
        let scans = matches!(
            node.node_type.as_str(),
            "Seq Scan" | "Index Scan" | "Bitmap Heap Scan"
        );
        if !scans || facts.contains_key(&key) {
            continue;
        }
        let rows: Option<f32> = sqlx::query_scalar(
            "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(&mut *connection)
        .await
        .map_err(ExplainError::Database)?;
        // A positive n_distinct is a count of values; few of them make a
        // column a partial-index predicate rather than a key.
        let low_cardinality: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_stats WHERE schemaname = $1 AND tablename = $2 \
             AND n_distinct > 0 AND n_distinct <= 100",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(&mut *connection)
        .await
        .map_err(ExplainError::Database)?;
        // Each index's columns in order (key columns, then included ones),
        // how many are keys, and its predicate if it is partial.
        let found: Vec<(String, Vec<String>, i32, Option<String>)> = sqlx::query_as(
            "SELECT ic.relname::text, array_agg(a.attname::text ORDER BY k.ord), \
             i.indnkeyatts::int4, pg_get_expr(i.indpred, i.indrelid) \
             FROM pg_index i \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_class t ON t.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
             WHERE n.nspname = $1 AND t.relname = $2 \
             GROUP BY ic.relname, i.indnkeyatts, i.indpred, i.indrelid",
        )
        .bind(schema)
        .bind(table)
        .fetch_all(&mut *connection)
        .await
        .map_err(ExplainError::Database)?;
        let indexes = found
            .into_iter()
            .map(|(name, columns, keys, predicate)| {
                let keys = usize::try_from(keys).unwrap_or(0);
                IndexFacts::new(name, columns, keys, predicate.as_deref())
            })
            .collect();
        facts.insert(
            key,
            TableFacts {
                rows: f64::from(rows.unwrap_or(0.0)),
                low_cardinality,
                indexes,
            },
        );
    }
    Ok(facts)
}
