//! EXPLAIN QUERY PLAN on SQLite.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::advice::{Gates, advise_sqlite};
use super::plan::PlanNode;
use super::{ExplainError, Explained, classify};

pub(crate) struct Sqlite {
    options: SqliteConnectOptions,
    timeout: Duration,
    gates: Gates,
}

impl Sqlite {
    pub(crate) fn new(options: SqliteConnectOptions, timeout: Duration) -> Self {
        Self {
            options,
            timeout,
            gates: Gates::default(),
        }
    }

    pub(crate) async fn explain(&self, statement: &str) -> Result<Explained, ExplainError> {
        classify(statement, false)?;
        // A connection per EXPLAIN (opening a SQLite file is cheap, and an
        // EXPLAIN rare): one kept open was seen planning on a schema from
        // before an index was created.
        let mut connection =
            tokio::time::timeout(self.timeout, SqliteConnection::connect_with(&self.options))
                .await
                .map_err(|_| ExplainError::Timeout(self.timeout))?
                .map_err(ExplainError::Connect)?;
        let outcome =
            tokio::time::timeout(self.timeout, self.explain_on(&mut connection, statement))
                .await
                .unwrap_or(Err(ExplainError::Timeout(self.timeout)));
        let _ = connection.close().await;
        outcome
    }

    async fn explain_on(
        &self,
        connection: &mut SqliteConnection,
        statement: &str,
    ) -> Result<Explained, ExplainError> {
        // EXPLAIN QUERY PLAN prepares the statement and never runs it.
        let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {statement}")))
            .persistent(false)
            .fetch_all(&mut *connection)
            .await
            .map_err(ExplainError::Database)?;
        let mut steps = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(|_| ExplainError::Plan)?;
            let parent: i64 = row.try_get(1).map_err(|_| ExplainError::Plan)?;
            let detail: String = row.try_get(3).map_err(|_| ExplainError::Plan)?;
            steps.push((id, parent, detail));
        }
        let json = serde_json::Value::Array(
            steps
                .iter()
                .map(|(id, parent, detail)| {
                    serde_json::json!({ "id": id, "parent": parent, "detail": detail })
                })
                .collect(),
        );
        let plan = PlanNode::from_query_plan(&steps);
        let mut sizes = Vec::new();
        for table in plan.walk().iter().filter_map(|node| full_scan(node)) {
            // Counted up to the gate only: a large table costs no more than a small one.
            let limit = self.gates.min_table_rows;
            let count: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM (SELECT 1 FROM \"{}\" LIMIT {limit})",
                table.replace('"', "\"\"")
            )))
            .persistent(false)
            .fetch_one(&mut *connection)
            .await
            .map_err(ExplainError::Database)?;
            #[allow(clippy::cast_precision_loss)]
            sizes.push((table.to_owned(), count as f64));
        }
        let advice = advise_sqlite(statement, &plan, self.gates, &sizes);
        Ok(Explained {
            plan,
            json,
            generic: false,
            analyzed: false,
            advice,
        })
    }
}

/// The table a step scans whole (`SCAN t`, no index), if it does.
pub(crate) fn full_scan(node: &PlanNode) -> Option<&str> {
    (node.node_type == "SCAN")
        .then_some(node.relation.as_deref())
        .flatten()
}
