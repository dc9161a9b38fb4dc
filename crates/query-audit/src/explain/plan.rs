//! A PostgreSQL plan (`EXPLAIN (FORMAT JSON)`), read into a tree of nodes.

#[cfg(feature = "postgres")]
use serde_json::Value;

/// One node of a plan, with the fields the advice rules read.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct PlanNode {
    /// `Seq Scan`, `Index Scan`, `Sort`, `Nested Loop`…
    pub node_type: String,
    /// The table scanned, if any.
    pub relation: Option<String>,
    /// Its schema (`EXPLAIN (VERBOSE)` or always for scans in JSON).
    pub schema: Option<String>,
    /// The name the statement gives the table (`FROM orders o`: `o`).
    pub alias: Option<String>,
    /// The filter applied to each row, as PostgreSQL prints it.
    pub filter: Option<String>,
    /// A join's condition: `Join Filter` (nested loop) or `Hash Cond`.
    pub join_condition: Option<String>,
    /// The index an index scan reads.
    pub index_name: Option<String>,
    /// The columns or expressions the node outputs (`EXPLAIN (VERBOSE)`).
    pub output: Vec<String>,
    /// The sort key, for `Sort` nodes.
    pub sort_key: Vec<String>,
    /// The planner's total cost.
    pub total_cost: f64,
    /// Rows the planner expects out of the node.
    pub plan_rows: f64,
    /// Rows actually returned (ANALYZE only).
    pub actual_rows: Option<f64>,
    /// Rows the filter removed (ANALYZE only).
    pub rows_removed_by_filter: Option<f64>,
    /// Milliseconds the node took, per loop (ANALYZE only).
    pub actual_time_ms: Option<f64>,
    /// Shared buffers found in cache and read (ANALYZE with BUFFERS only).
    pub shared_buffers: Option<(f64, f64)>,
    /// How the node feeds its parent (`Outer`, `Inner`…).
    pub parent_relationship: Option<String>,
    /// The node's children.
    pub children: Vec<PlanNode>,
}

impl PlanNode {
    /// Reads the output of `EXPLAIN (FORMAT JSON)`: `[{"Plan": {...}}]`.
    #[cfg(feature = "postgres")]
    pub(crate) fn from_explain(json: &Value) -> Option<Self> {
        let plan = json.get(0)?.get("Plan")?;
        Some(Self::from_node(plan, 0))
    }

    #[cfg(feature = "postgres")]
    fn from_node(node: &Value, depth: usize) -> Self {
        let text = |key: &str| node.get(key).and_then(Value::as_str).map(str::to_owned);
        let number = |key: &str| node.get(key).and_then(Value::as_f64);
        // Plans nest a few levels; a hostile depth is cut rather than followed.
        let children = if depth < 64 {
            node.get("Plans")
                .and_then(Value::as_array)
                .map(|plans| {
                    plans
                        .iter()
                        .map(|plan| Self::from_node(plan, depth + 1))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Self {
            node_type: text("Node Type").unwrap_or_default(),
            relation: text("Relation Name"),
            schema: text("Schema"),
            alias: text("Alias"),
            filter: text("Filter"),
            join_condition: text("Hash Cond").or_else(|| text("Join Filter")),
            index_name: text("Index Name"),
            output: node
                .get("Output")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            sort_key: node
                .get("Sort Key")
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            total_cost: number("Total Cost").unwrap_or_default(),
            plan_rows: number("Plan Rows").unwrap_or_default(),
            actual_rows: number("Actual Rows"),
            rows_removed_by_filter: number("Rows Removed by Filter"),
            actual_time_ms: number("Actual Total Time"),
            shared_buffers: number("Shared Hit Blocks").zip(number("Shared Read Blocks")),
            parent_relationship: text("Parent Relationship"),
            children,
        }
    }

    /// Reads SQLite's `EXPLAIN QUERY PLAN` rows (`id`, `parent`, `detail`)
    /// into a tree under a root of type `QUERY PLAN`. A step's type is
    /// `SCAN` (a whole table), `SCAN USING INDEX` (through an index),
    /// `SEARCH`, `TEMP B-TREE FOR ORDER BY`…, its relation the table named.
    #[cfg(feature = "sqlite")]
    pub(crate) fn from_query_plan(steps: &[(i64, i64, String)]) -> Self {
        fn children(steps: &[(i64, i64, String)], parent: i64, depth: usize) -> Vec<PlanNode> {
            if depth > 64 {
                return Vec::new();
            }
            steps
                .iter()
                .filter(|(id, of, _)| *of == parent && *id != parent)
                .map(|(id, _, detail)| {
                    let mut node = PlanNode::from_step(detail);
                    node.children = children(steps, *id, depth + 1);
                    node
                })
                .collect()
        }
        Self {
            node_type: "QUERY PLAN".to_owned(),
            children: children(steps, 0, 0),
            ..Self::default()
        }
    }

    /// One step's `detail`: `SCAN t`, `SCAN TABLE t` (before SQLite 3.36),
    /// `SCAN t USING COVERING INDEX i`, `SEARCH t USING INDEX i (a=?)`,
    /// `USE TEMP B-TREE FOR ORDER BY`.
    #[cfg(feature = "sqlite")]
    pub(crate) fn from_step(detail: &str) -> Self {
        let words: Vec<&str> = detail.split_whitespace().collect();
        let (verb, rest) = words
            .split_first()
            .map_or(("", &[][..]), |(verb, rest)| (*verb, rest));
        let rest = match rest {
            ["TABLE", rest @ ..] => rest,
            rest => rest,
        };
        let (node_type, relation) = match verb {
            "SCAN" if rest.contains(&"USING") => ("SCAN USING INDEX".to_owned(), rest.first()),
            "SCAN" => ("SCAN".to_owned(), rest.first()),
            "SEARCH" => ("SEARCH".to_owned(), rest.first()),
            "USE" => (words.get(1..).unwrap_or_default().join(" "), None),
            _ => (detail.to_owned(), None),
        };
        Self {
            node_type,
            relation: relation.map(|table| table.trim_matches('"').to_owned()),
            ..Self::default()
        }
    }

    /// This node and every node under it, depth first.
    pub fn walk(&self) -> Vec<&PlanNode> {
        let mut nodes = vec![self];
        let mut index = 0;
        while let Some(node) = nodes.get(index).copied() {
            nodes.extend(node.children.iter());
            index += 1;
        }
        nodes
    }

    /// Whether any node of the plan reads `table` through an index.
    pub fn uses_index_on(&self, table: &str) -> bool {
        // A bitmap scan names its table on the heap node, the index under it.
        self.walk().iter().any(|node| {
            (node.node_type.contains("Index")
                || node.node_type == "Bitmap Heap Scan"
                || node.node_type == "SEARCH"
                || node.node_type == "SCAN USING INDEX")
                && node.relation.as_deref() == Some(table)
        })
    }
}
