//! Index advice from a plan: each rule named, each piece of advice a concrete
//! `CREATE INDEX` with the evidence behind it.

use std::fmt;

use crate::explain::plan::PlanNode;
use crate::fingerprint::{Scanner, Token};

/// One piece of index advice.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Advice {
    /// The rule that gave it (`seq_scan_filter`, `partial_index`).
    pub rule: &'static str,
    /// The table, schema-qualified.
    pub table: String,
    /// The index's columns, in order: equality columns, then one range column.
    pub columns: Vec<String>,
    /// The partial index's predicate, if any (`status = 'active'::text`).
    pub predicate: Option<String>,
    /// The statement to run (the library never runs it). A partial index's
    /// predicate holds the statement's constant.
    pub statement: String,
    /// The same with the predicate's constant as `?`: what logs and
    /// reports show unless literals are revealed.
    pub redacted: String,
    /// What in the plan led to it.
    pub evidence: String,
    /// The plan's estimated cost without and with the index (PostgreSQL
    /// with the `HypoPG` extension, which makes the index hypothetical for
    /// the planner; `None` without it).
    pub estimate: Option<(f64, f64)>,
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -- {} ({})", self.statement, self.evidence, self.rule)
    }
}

/// What the rules know about a table beyond the plan.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, Default)]
pub(crate) struct TableFacts {
    /// Estimated rows (`pg_class.reltuples`).
    pub(crate) rows: f64,
    /// Columns with few distinct values (`pg_stats.n_distinct`), which make
    /// a better partial-index predicate than a key.
    pub(crate) low_cardinality: Vec<String>,
    /// The table's indexes.
    pub(crate) indexes: Vec<IndexFacts>,
}

/// One index of a table, from the catalog.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexFacts {
    pub(crate) name: String,
    /// Every column it holds, in order: its keys, then its included columns.
    pub(crate) columns: Vec<String>,
    /// How many of `columns` are keys.
    keys: usize,
    /// A partial index's predicate's equality columns.
    predicate: Option<Vec<String>>,
}

#[cfg(feature = "postgres")]
impl IndexFacts {
    /// An index named `name` of `columns`, the first `keys` of them keys,
    /// with a predicate as PostgreSQL prints it (`pg_get_expr(indpred,
    /// indrelid)`), if any.
    pub(crate) fn new(
        name: String,
        columns: Vec<String>,
        keys: usize,
        predicate: Option<&str>,
    ) -> Self {
        let predicate = predicate.map(|predicate| {
            conditions(predicate)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|condition| match condition {
                    Condition::Equal { column, .. } => Some(column),
                    Condition::Range { .. } => None,
                })
                .collect()
        });
        Self {
            name,
            keys: keys.min(columns.len()),
            columns,
            predicate,
        }
    }

    /// Whether its keys begin with `leading`, in order.
    fn leads_with<'c>(&self, leading: impl ExactSizeIterator<Item = &'c String>) -> bool {
        let keys = self.columns.get(..self.keys).unwrap_or_default();
        leading.len() <= keys.len() && leading.zip(keys).all(|(column, key)| column == key)
    }
}

#[cfg(feature = "postgres")]
impl TableFacts {
    /// Whether an index of the table already serves an index on
    /// `columns` (`partial`: with a constant predicate): advising it again
    /// would change nothing. The planner chose not to use it for this plan:
    /// on skewed data a generic plan (planned for an average value) keeps a
    /// Seq Scan or a Sort that the custom plans, for the actual values,
    /// avoid with that index; and a generic plan never uses a partial
    /// index for `status = $1`, which the custom plans for its constant do.
    ///
    /// A full index serves `columns` when it leads with them, in order. A
    /// partial index serves them when it leads with the rest of them once
    /// its predicate's columns are taken out (it answers `status = 'open'
    /// AND org = $2` for `(org) WHERE status = 'open'`), or with all of
    /// them for advice that is partial itself.
    fn served(&self, columns: &[String], partial: bool) -> bool {
        self.indexes.iter().any(|index| match &index.predicate {
            None => !partial && index.leads_with(columns.iter()),
            Some(_) if partial => !columns.is_empty() && index.leads_with(columns.iter()),
            Some(fixed) => {
                let rest: Vec<&String> = columns
                    .iter()
                    .filter(|column| !fixed.contains(column))
                    .collect();
                !rest.is_empty() && index.leads_with(rest.into_iter())
            }
        })
    }
}

/// Thresholds of the rules.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct Gates {
    /// Tables smaller than this are scanned happily.
    pub(crate) min_table_rows: f64,
    /// A filter keeping more than this share of the rows is not selective.
    pub(crate) max_selectivity: f64,
    /// Plans cheaper than this are left alone.
    pub(crate) min_cost: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            min_table_rows: 10_000.0,
            max_selectivity: 0.05,
            min_cost: 100.0,
        }
    }
}

/// A node's table, schema-qualified and quoted as SQL needs it.
#[cfg(feature = "postgres")]
fn qualified_table(node: &PlanNode, table: &str) -> (String, String) {
    let schema = node.schema.clone().unwrap_or_else(|| "public".to_owned());
    let qualified = format!("{}.{}", quote(&schema), quote(table));
    (schema, qualified)
}

/// `CREATE INDEX CONCURRENTLY ON table (keys)` and whatever follows the key
/// list (`INCLUDE (…)`), as one piece of advice with no predicate.
#[cfg(feature = "postgres")]
fn concurrent_index(
    rule: &'static str,
    table: String,
    columns: Vec<String>,
    keys: &[String],
    tail: &str,
    evidence: String,
) -> Advice {
    let statement = format!(
        "CREATE INDEX CONCURRENTLY ON {table} ({}){tail}",
        keys.join(", ")
    );
    Advice {
        rule,
        table,
        columns,
        predicate: None,
        redacted: statement.clone(),
        estimate: None,
        statement,
        evidence,
    }
}

/// Identifiers quoted as SQL needs them.
#[cfg(feature = "postgres")]
fn quoted(columns: &[String]) -> Vec<String> {
    columns.iter().map(|column| quote(column)).collect()
}

/// What `EXPLAIN ANALYZE` measured of a node, for the evidence: the cost
/// is an estimate, time and buffers are what the scan did.
#[cfg(feature = "postgres")]
fn measured(node: &PlanNode) -> String {
    match (node.actual_time_ms, node.shared_buffers) {
        (Some(ms), Some((hit, read))) => {
            format!("; measured {ms:.1} ms, {hit:.0} buffers from cache and {read:.0} read")
        }
        (Some(ms), None) => format!("; measured {ms:.1} ms"),
        _ => String::new(),
    }
}

/// One condition of a filter's top-level `AND`.
#[derive(Debug, Clone, PartialEq)]
enum Condition {
    /// `column = constant`: the constant as written, when it is a literal.
    Equal {
        column: String,
        literal: Option<String>,
    },
    /// `column < constant` and the like.
    Range { column: String },
}

/// The advice for a plan; `facts(schema, table)` answers for every table a
/// rule looks at.
#[cfg(feature = "postgres")]
pub(crate) fn advise(
    plan: &PlanNode,
    gates: Gates,
    facts: &dyn Fn(&str, &str) -> TableFacts,
) -> Vec<Advice> {
    let mut advice = Vec::new();
    for node in plan.walk() {
        if node.node_type != "Seq Scan" {
            continue;
        }
        let (Some(table), Some(filter)) = (&node.relation, &node.filter) else {
            continue;
        };
        let (schema, qualified) = qualified_table(node, table);
        let facts = facts(&schema, table);
        let kept = node.actual_rows.unwrap_or(node.plan_rows).max(1.0);
        let seen = match (node.actual_rows, node.rows_removed_by_filter) {
            (Some(actual), Some(removed)) => actual + removed,
            _ => facts.rows,
        };
        if seen < gates.min_table_rows
            || kept / seen > gates.max_selectivity
            || node.total_cost < gates.min_cost
        {
            continue;
        }
        let Some(conditions) = conditions(filter) else {
            continue;
        };
        let mut predicate = None;
        let mut predicate_column = None;
        let mut equal = Vec::new();
        for condition in &conditions {
            if let Condition::Equal { column, literal } = condition {
                match literal {
                    Some(literal)
                        if predicate.is_none() && facts.low_cardinality.contains(column) =>
                    {
                        predicate = Some(format!("{} = {literal}", quote(column)));
                        predicate_column = Some(column.clone());
                    }
                    _ => equal.push(column.clone()),
                }
            }
        }
        let range = conditions.iter().find_map(|condition| match condition {
            Condition::Range { column } if !equal.contains(column) => Some(column.clone()),
            _ => None,
        });
        let mut columns = equal;
        columns.extend(range);
        if columns.is_empty() {
            // Only the predicate: index its column, partially.
            match conditions.first() {
                Some(Condition::Equal { column, .. }) => columns.push(column.clone()),
                _ => continue,
            }
        }
        if facts.served(&columns, predicate.is_some()) {
            continue;
        }
        let list = quoted(&columns).join(", ");
        let mut statement = format!("CREATE INDEX CONCURRENTLY ON {qualified} ({list})");
        let mut redacted = statement.clone();
        if let Some((predicate, column)) = predicate.as_ref().zip(predicate_column.as_ref()) {
            statement.push_str(" WHERE ");
            statement.push_str(predicate);
            redacted.push_str(&format!(" WHERE {} = ?", quote(column)));
        }
        advice.push(Advice {
            rule: if predicate.is_some() {
                "partial_index"
            } else {
                "seq_scan_filter"
            },
            table: qualified,
            columns,
            predicate,
            statement,
            redacted,
            estimate: None,
            evidence: format!(
                "Seq Scan on {table} (cost {:.0}) keeps about {kept:.0} of {seen:.0} rows through its filter{}",
                node.total_cost,
                measured(node)
            ),
        });
    }
    advice.extend(advise_sorts(plan, gates, facts));
    advice.extend(advise_joins(plan, gates, facts));
    advice.extend(advise_covering(plan, facts));
    advice
}

/// Rule `covering`: an index scan that fetches many rows from the table
/// for a few columns its index lacks → the same index with those columns
/// included (`INCLUDE`), which an index-only scan answers.
#[cfg(feature = "postgres")]
fn advise_covering(plan: &PlanNode, facts: &dyn Fn(&str, &str) -> TableFacts) -> Vec<Advice> {
    /// Fewer rows than this are cheap to fetch from the table.
    const MIN_ROWS: f64 = 100.0;
    /// More missing columns than this make an index too wide to advise.
    const MAX_INCLUDED: usize = 3;
    // Rows a scan really fetches: a `LIMIT` above it stops it early.
    fn capped<'p>(node: &'p PlanNode, cap: f64, out: &mut Vec<(&'p PlanNode, f64)>) {
        let cap = if node.node_type == "Limit" {
            cap.min(node.plan_rows)
        } else {
            cap
        };
        out.push((node, cap.min(node.plan_rows)));
        for child in &node.children {
            capped(child, cap, out);
        }
    }
    let mut nodes = Vec::new();
    capped(plan, f64::INFINITY, &mut nodes);
    let mut advice = Vec::new();
    for (node, fetched) in nodes {
        let index = match node.node_type.as_str() {
            "Index Scan" => node.index_name.clone(),
            "Bitmap Heap Scan" => node
                .children
                .iter()
                .find(|child| child.node_type == "Bitmap Index Scan")
                .and_then(|child| child.index_name.clone()),
            _ => None,
        };
        let (Some(index), Some(table)) = (index, &node.relation) else {
            continue;
        };
        if fetched < MIN_ROWS || node.filter.is_some() || node.output.is_empty() {
            continue;
        }
        let mut needed = Vec::new();
        for output in &node.output {
            let tokens: Vec<Token<'_>> = Scanner::new(output.as_bytes()).collect();
            match column(&tokens) {
                Some((name, [])) => needed.push(name),
                // An expression over columns: not advised.
                _ => {
                    needed.clear();
                    break;
                }
            }
        }
        let (schema, qualified) = qualified_table(node, table);
        let facts = facts(&schema, table);
        let Some(held) = facts
            .indexes
            .iter()
            .find(|held| held.name == index)
            .map(|held| &held.columns)
        else {
            continue;
        };
        let mut missing: Vec<String> = needed
            .into_iter()
            .filter(|column| !held.contains(column))
            .collect();
        missing.dedup();
        if missing.is_empty() || missing.len() > MAX_INCLUDED {
            continue;
        }
        let mut columns = held.clone();
        columns.extend(missing.iter().cloned());
        advice.push(concurrent_index(
            "covering",
            qualified,
            columns,
            &quoted(held),
            &format!(" INCLUDE ({})", quoted(&missing).join(", ")),
            format!(
                "{} on {table} fetches about {fetched:.0} rows from the table for {} that index {index} lacks",
                node.node_type,
                missing.join(", ")
            ),
        ));
    }
    advice
}

/// Rule `join`: a join that reads a large table whole to match few rows
/// (a nested loop whose inner side is a whole-table scan, or a hash join
/// probing a whole-table scan with a hash of at most 1 % of its rows) → an
/// index on that table's join column, so that each of the few rows is
/// looked up instead.
#[cfg(feature = "postgres")]
fn advise_joins(
    plan: &PlanNode,
    gates: Gates,
    facts: &dyn Fn(&str, &str) -> TableFacts,
) -> Vec<Advice> {
    let mut advice = Vec::new();
    for node in plan.walk() {
        let (Some(condition), true) = (
            &node.join_condition,
            matches!(node.node_type.as_str(), "Nested Loop" | "Hash Join"),
        ) else {
            continue;
        };
        // The side read whole and the side that drives the lookups.
        let (scan, driver) = match node.node_type.as_str() {
            "Nested Loop" => {
                let inner = node
                    .children
                    .iter()
                    .find(|child| child.parent_relationship.as_deref() == Some("Inner"));
                let outer = node
                    .children
                    .iter()
                    .find(|child| child.parent_relationship.as_deref() == Some("Outer"));
                (inner.map(through_materialize), outer)
            }
            _ => {
                let probe = node.children.iter().find(|child| child.node_type != "Hash");
                let hash = node.children.iter().find(|child| child.node_type == "Hash");
                (probe, hash)
            }
        };
        let (Some(scan), Some(driver)) = (scan, driver) else {
            continue;
        };
        if scan.node_type != "Seq Scan" || scan.filter.is_some() {
            continue;
        }
        let Some(table) = &scan.relation else {
            continue;
        };
        let (schema, qualified) = qualified_table(scan, table);
        let facts = facts(&schema, table);
        let rows = facts.rows;
        if rows < gates.min_table_rows
            || driver.plan_rows > rows * 0.01
            || node.total_cost < gates.min_cost
        {
            continue;
        }
        let alias = scan.alias.as_deref().unwrap_or(table);
        let Some(column) = join_column(condition, alias) else {
            continue;
        };
        if facts.served(std::slice::from_ref(&column), false) {
            continue;
        }
        let keys = [quote(&column)];
        advice.push(concurrent_index(
            "join",
            qualified,
            vec![column],
            &keys,
            "",
            format!(
                "{} on {condition} reads all {rows:.0} rows of {table} for about {:.0} rows from the other side",
                node.node_type, driver.plan_rows
            ),
        ));
    }
    advice
}

/// The scan under a `Materialize` (a nested loop's rescanned inner side).
#[cfg(feature = "postgres")]
fn through_materialize(node: &PlanNode) -> &PlanNode {
    match node.children.first() {
        Some(child) if node.node_type == "Materialize" => child,
        _ => node,
    }
}

/// In `(a.x = b.y)`, the column of the side named `alias`.
#[cfg(feature = "postgres")]
fn join_column(condition: &str, alias: &str) -> Option<String> {
    let tokens: Vec<Token<'_>> = Scanner::new(condition.as_bytes()).collect();
    let tokens = unwrap_parens(&tokens);
    let at = tokens
        .iter()
        .position(|token| matches!(token, Token::Symbol(b"=")))?;
    let side = |part: &[Token<'_>]| -> Option<(String, String)> {
        match part {
            [
                Token::Word(qualifier),
                Token::Symbol(b"."),
                Token::Word(column),
            ] => Some((
                String::from_utf8_lossy(qualifier).into_owned(),
                String::from_utf8_lossy(column).into_owned(),
            )),
            _ => None,
        }
    };
    let left = side(unwrap_parens(tokens.get(..at)?))?;
    let right = side(unwrap_parens(tokens.get(at + 1..)?))?;
    [left, right]
        .into_iter()
        .find(|(qualifier, _)| qualifier == alias)
        .map(|(_, column)| column)
}

/// Rule `sort`: a costly `Sort` of a whole-table scan (no selective filter:
/// that is `seq_scan_filter`'s) → an index in the sort key's order, which a
/// `LIMIT` or an ordered read then walks instead of sorting.
#[cfg(feature = "postgres")]
fn advise_sorts(
    plan: &PlanNode,
    gates: Gates,
    facts: &dyn Fn(&str, &str) -> TableFacts,
) -> Vec<Advice> {
    let mut advice = Vec::new();
    for node in plan.walk() {
        if node.node_type != "Sort" || node.sort_key.is_empty() {
            continue;
        }
        let Some(scan) = node
            .children
            .first()
            .filter(|child| child.node_type == "Seq Scan")
        else {
            continue;
        };
        let Some(table) = &scan.relation else {
            continue;
        };
        let (schema, qualified) = qualified_table(scan, table);
        let facts = facts(&schema, table);
        let rows = facts.rows;
        let sort_cost = node.total_cost - scan.total_cost;
        if rows < gates.min_table_rows || sort_cost < gates.min_cost {
            continue;
        }
        // A filter on the scan: its equality columns lead the index.
        let mut columns: Vec<String> = scan
            .filter
            .as_deref()
            .and_then(conditions)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|condition| match condition {
                Condition::Equal { column, .. } => Some(quote(&column)),
                Condition::Range { .. } => None,
            })
            .collect();
        let mut names: Vec<String> = columns.clone();
        let mut plain = true;
        for key in &node.sort_key {
            let tokens: Vec<Token<'_>> = Scanner::new(key.as_bytes()).collect();
            let (column, direction) = match column(&tokens) {
                Some((column, [])) => (column, ""),
                Some((column, [Token::Word(word)])) if word.eq_ignore_ascii_case(b"desc") => {
                    (column, " DESC")
                }
                // An expression, or NULLS FIRST/LAST: not a plain column.
                _ => {
                    plain = false;
                    break;
                }
            };
            names.push(column.clone());
            columns.push(format!("{}{direction}", quote(&column)));
        }
        if !plain || facts.served(&names, false) {
            continue;
        }
        advice.push(concurrent_index(
            "sort",
            qualified,
            names,
            &columns,
            "",
            format!(
                "Sort by {} of a Seq Scan on {table} ({rows:.0} rows) costs {sort_cost:.0} over the scan",
                node.sort_key.join(", ")
            ),
        ));
    }
    advice
}

/// The conditions of a filter joined by `AND` at its top level; `None` when
/// it has an `OR` there (one index cannot serve it) or nothing indexable.
#[cfg(feature = "postgres")]
fn conditions(filter: &str) -> Option<Vec<Condition>> {
    let tokens: Vec<Token<'_>> = Scanner::new(filter.as_bytes()).collect();
    conditions_in(&tokens)
}

/// [`conditions`] of tokens already scanned.
fn conditions_in(tokens: &[Token<'_>]) -> Option<Vec<Condition>> {
    let mut conditions = Vec::new();
    let mut depth = 0_usize;
    let mut start = 0;
    let strip = |part: &[Token<'_>]| -> Option<Condition> { condition(unwrap_parens(part)) };
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Symbol(b"(") => depth += 1,
            Token::Symbol(b")") => depth = depth.saturating_sub(1),
            Token::Word(word) if depth <= 1 && word.eq_ignore_ascii_case(b"or") => return None,
            Token::Word(word) if depth <= 1 && word.eq_ignore_ascii_case(b"and") => {
                if let Some(condition) = strip(tokens.get(start..index)?) {
                    conditions.push(condition);
                }
                start = index + 1;
            }
            _ => {}
        }
    }
    if let Some(condition) = strip(tokens.get(start..)?) {
        conditions.push(condition);
    }
    (!conditions.is_empty()).then_some(conditions)
}

/// SQLite: advice for the tables `plan` scans whole (`SCAN t`), from the
/// statement itself (`EXPLAIN QUERY PLAN` names tables, not columns):
/// its `WHERE` conditions (equality columns, then one range column), or
/// its `ORDER BY` columns when the plan sorts in a temporary B-tree.
/// Single-table statements only; `sizes` are the scanned tables' rows
/// (counted up to the gate).
#[cfg(feature = "sqlite")]
pub(crate) fn advise_sqlite(
    statement: &str,
    plan: &PlanNode,
    gates: Gates,
    sizes: &[(String, f64)],
) -> Vec<Advice> {
    let tokens: Vec<Token<'_>> = Scanner::new(statement.as_bytes()).collect();
    let Some(table) = single_table(&tokens) else {
        return Vec::new();
    };
    let nodes = plan.walk();
    let scanned = nodes
        .iter()
        .any(|node| node.node_type == "SCAN" && node.relation.as_deref() == Some(table.as_str()));
    let rows = sizes
        .iter()
        .find(|(name, _)| *name == table)
        .map_or(0.0, |(_, rows)| *rows);
    if !scanned || rows < gates.min_table_rows {
        return Vec::new();
    }
    let sorts = nodes
        .iter()
        .any(|node| node.node_type == "TEMP B-TREE FOR ORDER BY");
    let conditions = clause(&tokens, &["where"])
        .and_then(conditions_in)
        .unwrap_or_default();
    let mut columns: Vec<String> = conditions
        .iter()
        .filter_map(|condition| match condition {
            Condition::Equal { column, .. } => Some(column.clone()),
            Condition::Range { .. } => None,
        })
        .collect();
    let (rule, evidence) = if let Some(range) =
        conditions.iter().find_map(|condition| match condition {
            Condition::Range { column } if !columns.contains(column) => Some(column.clone()),
            _ => None,
        }) {
        columns.push(range);
        (
            "seq_scan_filter",
            format!("SCAN {table} reads every row of a table of {rows:.0}+ to filter them"),
        )
    } else if !columns.is_empty() {
        (
            "seq_scan_filter",
            format!("SCAN {table} reads every row of a table of {rows:.0}+ to filter them"),
        )
    } else if sorts {
        columns = clause(&tokens, &["order", "by"])
            .map(order_columns)
            .unwrap_or_default();
        (
            "sort",
            format!("SCAN {table} and a temporary B-tree for ORDER BY, {rows:.0}+ rows"),
        )
    } else {
        return Vec::new();
    };
    if columns.is_empty() {
        return Vec::new();
    }
    let name = format!("perfkit_{}_{}", table, columns.join("_"))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect::<String>();
    let list = columns
        .iter()
        .map(|column| quote(column))
        .collect::<Vec<_>>()
        .join(", ");
    let statement = format!("CREATE INDEX {name} ON {} ({list})", quote(&table));
    vec![Advice {
        rule,
        table: table.clone(),
        columns,
        predicate: None,
        redacted: statement.clone(),
        statement,
        evidence,
        estimate: None,
    }]
}

/// The one table a statement reads (`FROM t`, `FROM t AS x`, `UPDATE t`,
/// `DELETE FROM t`); `None` with a join, a list of tables or a subquery.
#[cfg(feature = "sqlite")]
fn single_table(tokens: &[Token<'_>]) -> Option<String> {
    let is = |token: &Token<'_>, word: &str| matches!(token, Token::Word(w) if w.eq_ignore_ascii_case(word.as_bytes()));
    if tokens
        .iter()
        .any(|token| is(token, "join") || matches!(token, Token::Symbol(b"(")))
    {
        return None;
    }
    let at = tokens
        .iter()
        .position(|token| is(token, "from") || is(token, "update"))?;
    let table = match tokens.get(at + 1)? {
        Token::Word(word) => String::from_utf8_lossy(word).into_owned(),
        Token::Quoted(quoted) => {
            String::from_utf8_lossy(quoted.get(1..quoted.len().saturating_sub(1))?).into_owned()
        }
        _ => return None,
    };
    // A comma before the next clause is a list of tables.
    let listed = tokens
        .get(at + 2..)?
        .iter()
        .take_while(|token| !matches!(token, Token::Word(w) if [&b"where"[..], b"order", b"group", b"limit", b"set"].iter().any(|k| k.eq_ignore_ascii_case(w))))
        .any(|token| matches!(token, Token::Symbol(b",")));
    (!listed).then_some(table)
}

/// The tokens of a clause (`WHERE …`, `ORDER BY …`) up to the next one.
#[cfg(feature = "sqlite")]
fn clause<'t, 'a>(tokens: &'t [Token<'a>], keyword: &[&str]) -> Option<&'t [Token<'a>]> {
    let is = |token: &Token<'_>, word: &str| matches!(token, Token::Word(w) if w.eq_ignore_ascii_case(word.as_bytes()));
    let start = (0..tokens.len()).find(|&at| {
        keyword
            .iter()
            .enumerate()
            .all(|(offset, word)| tokens.get(at + offset).is_some_and(|token| is(token, word)))
    })? + keyword.len();
    let rest = tokens.get(start..)?;
    let end = rest
        .iter()
        .position(|token| {
            [
                "group",
                "order",
                "limit",
                "offset",
                "having",
                "returning",
                "window",
                "union",
            ]
            .iter()
            .any(|word| is(token, word))
                || matches!(token, Token::Symbol(b";"))
        })
        .unwrap_or(rest.len());
    rest.get(..end)
}

/// The columns of an `ORDER BY` list (`a, t.b DESC`); none if an item is
/// an expression.
#[cfg(feature = "sqlite")]
fn order_columns(tokens: &[Token<'_>]) -> Vec<String> {
    let mut columns = Vec::new();
    for item in tokens.split(|token| matches!(token, Token::Symbol(b","))) {
        let item = match item {
            [rest @ .., Token::Word(direction)]
                if direction.eq_ignore_ascii_case(b"asc")
                    || direction.eq_ignore_ascii_case(b"desc") =>
            {
                rest
            }
            item => item,
        };
        match column(item) {
            Some((name, [])) => columns.push(name),
            _ => return Vec::new(),
        }
    }
    columns
}

/// `(((x)))` → `x`, for balanced outer parentheses (and a leading `(` left
/// by the split of a top-level `(a AND b)`).
fn unwrap_parens<'t, 'a>(mut part: &'t [Token<'a>]) -> &'t [Token<'a>] {
    loop {
        match part {
            [Token::Symbol(b"("), inner @ .., Token::Symbol(b")")] if balanced(inner) => {
                part = inner;
            }
            [Token::Symbol(b"("), inner @ ..] if balanced(inner) => part = inner,
            [inner @ .., Token::Symbol(b")")] if balanced(inner) => part = inner,
            _ => return part,
        }
    }
}

fn balanced(tokens: &[Token<'_>]) -> bool {
    let mut depth = 0_i64;
    for token in tokens {
        match token {
            Token::Symbol(b"(") => depth += 1,
            Token::Symbol(b")") => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// `column op constant` (or the other way round), as PostgreSQL prints a
/// filter's condition: `(org = 7)`, `(status = 'active'::text)`,
/// `(created > $1)`, `(t.name ~~ 'ab%'::text)`.
fn condition(tokens: &[Token<'_>]) -> Option<Condition> {
    let (column, rest) = column(tokens)?;
    let (op, rest) = rest.split_first()?;
    let Token::Symbol(op) = op else {
        return None;
    };
    let (constant, rest) = rest.split_first()?;
    // A cast after the constant (`'active'::text`, `'…'::timestamp with time zone`).
    if !rest.is_empty() && !matches!(rest.first(), Some(Token::Symbol(b"::"))) {
        return None;
    }
    let literal = match constant {
        Token::String(text) | Token::Number(text) => {
            let mut written = String::from_utf8_lossy(text).into_owned();
            for token in rest {
                match token {
                    Token::Symbol(symbol) => written.push_str(&String::from_utf8_lossy(symbol)),
                    Token::Word(word) => {
                        if !written.ends_with("::") {
                            written.push(' ');
                        }
                        written.push_str(&String::from_utf8_lossy(word));
                    }
                    _ => return None,
                }
            }
            Some(written)
        }
        Token::Placeholder(_) => None,
        _ => return None,
    };
    match *op {
        b"=" => Some(Condition::Equal { column, literal }),
        b"<" | b">" | b"<=" | b">=" => Some(Condition::Range { column }),
        // LIKE with a constant prefix: a range for a btree (text_pattern_ops aside).
        b"~~" => Some(Condition::Range { column }),
        _ => None,
    }
}

/// A column reference at the start of `tokens`, qualified or not
/// (`org`, `t.org`, `"Org"`): its name, and what follows it.
fn column<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<(String, &'t [Token<'a>])> {
    let name = |token: &Token<'_>| match token {
        Token::Word(word) => Some(String::from_utf8_lossy(word).into_owned()),
        Token::Quoted(quoted) => {
            let inner = quoted.get(1..quoted.len().saturating_sub(1))?;
            Some(String::from_utf8_lossy(inner).replace("\"\"", "\""))
        }
        _ => None,
    };
    match tokens {
        [first, Token::Symbol(b"."), second, rest @ ..] => {
            Some((name(second).or_else(|| name(first))?, rest))
        }
        [first, rest @ ..] => Some((name(first)?, rest)),
        [] => None,
    }
}

/// An identifier as SQL needs it: bare when it is lower-case letters,
/// digits and underscores, quoted otherwise.
pub(crate) fn quote(identifier: &str) -> String {
    let plain = identifier
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && identifier
            .bytes()
            .next()
            .is_some_and(|b| !b.is_ascii_digit());
    if plain {
        identifier.to_owned()
    } else {
        format!("\"{}\"", identifier.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "postgres")]
    fn scan(table: &str, filter: &str, cost: f64, rows: f64) -> PlanNode {
        PlanNode {
            node_type: "Seq Scan".to_owned(),
            relation: Some(table.to_owned()),
            schema: Some("app".to_owned()),
            filter: Some(filter.to_owned()),
            total_cost: cost,
            plan_rows: rows,
            ..PlanNode::default()
        }
    }

    #[cfg(feature = "postgres")]
    fn facts(rows: f64, low: &[&str]) -> impl Fn(&str, &str) -> TableFacts {
        let low: Vec<String> = low.iter().map(|c| (*c).to_owned()).collect();
        move |_, _| TableFacts {
            rows,
            low_cardinality: low.clone(),
            indexes: vec![IndexFacts::new(
                "t_org_idx".to_owned(),
                vec!["org".to_owned()],
                1,
                None,
            )],
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_selective_filter_on_a_large_table_gets_equality_columns_before_the_range() {
        let plan = scan(
            "orders",
            "((created > '2024-01-01 00:00:00+00'::timestamp with time zone) AND (org = 7) AND (t.customer = $1))",
            2_486.0,
            3.0,
        );
        let advice = advise(&plan, Gates::default(), &facts(100_000.0, &[]));
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].rule, "seq_scan_filter");
        assert_eq!(advice[0].columns, ["org", "customer", "created"]);
        assert_eq!(
            advice[0].statement,
            "CREATE INDEX CONCURRENTLY ON app.orders (org, customer, created)"
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_constant_on_a_low_cardinality_column_becomes_a_partial_index() {
        let plan = scan(
            "tasks",
            "((status = 'active'::text) AND (org = 7))",
            2_000.0,
            5.0,
        );
        let advice = advise(&plan, Gates::default(), &facts(100_000.0, &["status"]));
        assert_eq!(advice[0].rule, "partial_index");
        assert_eq!(
            advice[0].statement,
            "CREATE INDEX CONCURRENTLY ON app.tasks (org) WHERE status = 'active'::text"
        );
        assert_eq!(
            advice[0].redacted,
            "CREATE INDEX CONCURRENTLY ON app.tasks (org) WHERE status = ?"
        );
        // With a placeholder there is no constant to put in a predicate.
        let plan = scan("tasks", "((status = $1) AND (org = 7))", 2_000.0, 5.0);
        let advice = advise(&plan, Gates::default(), &facts(100_000.0, &["status"]));
        assert_eq!(advice[0].columns, ["status", "org"]);
        assert_eq!(advice[0].predicate, None);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn an_index_that_exists_is_not_advised_again_partial_ones_included() {
        let with = |indexes: Vec<IndexFacts>| {
            move |_: &str, _: &str| TableFacts {
                rows: 100_000.0,
                low_cardinality: vec!["status".to_owned()],
                indexes: indexes.clone(),
            }
        };
        let owned = |columns: &[&str]| columns.iter().map(|c| (*c).to_owned()).collect();
        // A generic plan (placeholders) cannot use `(total) WHERE status = 'open'`.
        let generic = scan("orders", "((status = $1) AND (total > $2))", 2_000.0, 5.0);
        let advice = advise(&generic, Gates::default(), &with(Vec::new()));
        assert_eq!(advice[0].columns, ["status", "total"]);
        let index = |columns: &[&str], predicate| {
            IndexFacts::new("i".to_owned(), owned(columns), columns.len(), predicate)
        };
        let partial = index(&["total"], Some("(status = 'open'::text)"));
        assert!(advise(&generic, Gates::default(), &with(vec![partial.clone()])).is_empty());
        // A full index leading with the advised columns serves them too ...
        let full = index(&["status", "total", "id"], None);
        assert!(advise(&generic, Gates::default(), &with(vec![full.clone()])).is_empty());
        // ... but not in another order, and a full index is no partial one.
        let other = index(&["total", "status"], None);
        assert_eq!(
            advise(&generic, Gates::default(), &with(vec![other])).len(),
            1
        );
        let literal = scan(
            "orders",
            "((status = 'open'::text) AND (total > 7))",
            2_000.0,
            5.0,
        );
        let advice = advise(
            &literal,
            Gates::default(),
            &with(vec![index(&["total"], None)]),
        );
        assert_eq!(advice[0].rule, "partial_index");
        assert!(advise(&literal, Gates::default(), &with(vec![partial])).is_empty());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_costly_sort_of_a_whole_scan_gets_an_index_in_the_sort_order() {
        let sort = PlanNode {
            node_type: "Sort".to_owned(),
            sort_key: vec!["t.created DESC".to_owned(), "t.id".to_owned()],
            total_cost: 12_000.0,
            children: vec![PlanNode {
                node_type: "Seq Scan".to_owned(),
                relation: Some("t".to_owned()),
                schema: Some("app".to_owned()),
                total_cost: 1_800.0,
                plan_rows: 100_000.0,
                ..PlanNode::default()
            }],
            ..PlanNode::default()
        };
        let advice = advise(&sort, Gates::default(), &facts(100_000.0, &[]));
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].rule, "sort");
        assert_eq!(
            advice[0].statement,
            "CREATE INDEX CONCURRENTLY ON app.t (created DESC, id)"
        );
        let mut by_expression = sort.clone();
        by_expression.sort_key = vec!["lower(t.name)".to_owned()];
        assert!(advise(&by_expression, Gates::default(), &facts(100_000.0, &[])).is_empty());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_join_reading_a_large_table_whole_for_few_rows_gets_an_index_on_its_key() {
        let whole = |table: &str, alias: &str, relationship: &str| PlanNode {
            node_type: "Seq Scan".to_owned(),
            relation: Some(table.to_owned()),
            alias: Some(alias.to_owned()),
            schema: Some("app".to_owned()),
            parent_relationship: Some(relationship.to_owned()),
            total_cost: 1_541.0,
            plan_rows: 100_000.0,
            ..PlanNode::default()
        };
        let few = PlanNode {
            node_type: "Hash".to_owned(),
            plan_rows: 111.0,
            parent_relationship: Some("Inner".to_owned()),
            ..PlanNode::default()
        };
        let hash = PlanNode {
            node_type: "Hash Join".to_owned(),
            join_condition: Some("(o.customer = c.id)".to_owned()),
            total_cost: 1_908.0,
            children: vec![whole("orders", "o", "Outer"), few.clone()],
            ..PlanNode::default()
        };
        let advice = advise(&hash, Gates::default(), &facts(100_000.0, &[]));
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].rule, "join");
        assert_eq!(
            advice[0].statement,
            "CREATE INDEX CONCURRENTLY ON app.orders (customer)"
        );
        // A nested loop rescanning a materialized whole table.
        let nested = PlanNode {
            node_type: "Nested Loop".to_owned(),
            join_condition: Some("(o.customer = c.id)".to_owned()),
            total_cost: 5_319.0,
            children: vec![
                PlanNode {
                    parent_relationship: Some("Outer".to_owned()),
                    plan_rows: 40.0,
                    ..few.clone()
                },
                PlanNode {
                    node_type: "Materialize".to_owned(),
                    parent_relationship: Some("Inner".to_owned()),
                    children: vec![whole("orders", "o", "Outer")],
                    ..PlanNode::default()
                },
            ],
            ..PlanNode::default()
        };
        assert_eq!(
            advise(&nested, Gates::default(), &facts(100_000.0, &[]))[0].columns,
            ["customer"]
        );
        // Many rows on the other side: the hash join is the right plan.
        let mut many = hash.clone();
        many.children[1].plan_rows = 50_000.0;
        assert!(advise(&many, Gates::default(), &facts(100_000.0, &[])).is_empty());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn an_index_scan_fetching_many_rows_for_a_missing_column_gets_a_covering_index() {
        let bitmap = |rows: f64, output: &[&str]| PlanNode {
            node_type: "Bitmap Heap Scan".to_owned(),
            relation: Some("t".to_owned()),
            schema: Some("app".to_owned()),
            plan_rows: rows,
            output: output.iter().map(|o| (*o).to_owned()).collect(),
            children: vec![PlanNode {
                node_type: "Bitmap Index Scan".to_owned(),
                index_name: Some("t_org_idx".to_owned()),
                ..PlanNode::default()
            }],
            ..PlanNode::default()
        };
        let facts = facts(100_000.0, &[]);
        let advice = advise(&bitmap(100.0, &["org", "total"]), Gates::default(), &facts);
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].rule, "covering");
        assert_eq!(
            advice[0].statement,
            "CREATE INDEX CONCURRENTLY ON app.t (org) INCLUDE (total)"
        );
        // Few rows, nothing missing, an expression: nothing.
        assert!(advise(&bitmap(3.0, &["org", "total"]), Gates::default(), &facts).is_empty());
        assert!(advise(&bitmap(500.0, &["org"]), Gates::default(), &facts).is_empty());
        assert!(advise(&bitmap(500.0, &["(total * 2)"]), Gates::default(), &facts).is_empty());
        // Under a LIMIT of 20 the scan fetches 20 rows, whatever its estimate.
        let limited = PlanNode {
            node_type: "Limit".to_owned(),
            plan_rows: 20.0,
            children: vec![bitmap(100_000.0, &["org", "total"])],
            ..PlanNode::default()
        };
        assert!(advise(&limited, Gates::default(), &facts).is_empty());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn small_tables_unselective_filters_and_ors_get_nothing() {
        let gates = Gates::default();
        let small = scan("t", "(org = 7)", 200.0, 1.0);
        assert!(advise(&small, gates, &facts(5_000.0, &[])).is_empty());
        let unselective = scan("t", "(org > 7)", 2_000.0, 60_000.0);
        assert!(advise(&unselective, gates, &facts(100_000.0, &[])).is_empty());
        let or = scan("t", "((org = 7) OR (name = 'x'::text))", 2_000.0, 2.0);
        assert!(advise(&or, gates, &facts(100_000.0, &[])).is_empty());
        let function = scan("t", "(lower(name) = 'x'::text)", 2_000.0, 2.0);
        assert!(advise(&function, gates, &facts(100_000.0, &[])).is_empty());
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_advice_comes_from_the_statement_for_a_whole_table_scan() {
        let scan = |steps: &[&str]| {
            let steps: Vec<(i64, i64, String)> = steps
                .iter()
                .enumerate()
                .map(|(id, detail)| (i64::try_from(id).unwrap() + 2, 0, (*detail).to_owned()))
                .collect();
            PlanNode::from_query_plan(&steps)
        };
        let sizes = [("items".to_owned(), 10_000.0)];
        // The form of SQLite before 3.36 and after.
        for detail in ["SCAN TABLE items", "SCAN items"] {
            let advice = advise_sqlite(
                "SELECT * FROM items WHERE org = ? AND created > 5",
                &scan(&[detail]),
                Gates::default(),
                &sizes,
            );
            assert_eq!(advice.len(), 1, "{detail}: {advice:?}");
            assert_eq!(
                advice[0].statement,
                "CREATE INDEX perfkit_items_org_created ON items (org, created)"
            );
        }
        let sorted = advise_sqlite(
            "select id from items order by created desc, name limit 10",
            &scan(&["SCAN items", "USE TEMP B-TREE FOR ORDER BY"]),
            Gates::default(),
            &sizes,
        );
        assert_eq!(sorted[0].rule, "sort");
        assert_eq!(sorted[0].columns, ["created", "name"]);
        // Searched through an index, small, joined: nothing.
        let searched = scan(&["SEARCH items USING INDEX i (org=?)"]);
        assert!(
            advise_sqlite(
                "select * from items where org = 1",
                &searched,
                Gates::default(),
                &sizes
            )
            .is_empty()
        );
        let small = [("items".to_owned(), 99.0)];
        assert!(
            advise_sqlite(
                "select * from items where org = 1",
                &scan(&["SCAN items"]),
                Gates::default(),
                &small
            )
            .is_empty()
        );
        assert!(
            advise_sqlite(
                "select * from items join orgs on orgs.id = items.org where org = 1",
                &scan(&["SCAN items"]),
                Gates::default(),
                &sizes
            )
            .is_empty()
        );
    }

    #[test]
    fn identifiers_are_quoted_when_they_must_be() {
        assert_eq!(quote("org_id"), "org_id");
        assert_eq!(quote("Org"), "\"Org\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote("1st"), "\"1st\"");
    }
}
