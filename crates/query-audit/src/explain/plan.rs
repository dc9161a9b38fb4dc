//! A PostgreSQL plan (`EXPLAIN (FORMAT JSON)`), read into a tree of nodes.

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
    /// The filter applied to each row, as PostgreSQL prints it.
    pub filter: Option<String>,
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
    /// How the node feeds its parent (`Outer`, `Inner`…).
    pub parent_relationship: Option<String>,
    /// The node's children.
    pub children: Vec<PlanNode>,
}

impl PlanNode {
    /// Reads the output of `EXPLAIN (FORMAT JSON)`: `[{"Plan": {...}}]`.
    pub(crate) fn from_explain(json: &Value) -> Option<Self> {
        let plan = json.get(0)?.get("Plan")?;
        Some(Self::from_node(plan, 0))
    }

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
            filter: text("Filter"),
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
            parent_relationship: text("Parent Relationship"),
            children,
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
            (node.node_type.contains("Index") || node.node_type == "Bitmap Heap Scan")
                && node.relation.as_deref() == Some(table)
        })
    }
}
