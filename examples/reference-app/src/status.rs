//! The status page: server-rendered HTML, no external assets, refreshed
//! every two seconds.

use std::fmt::Write as _;

use perfkit::pool::PoolSource;

use crate::Shared;
use crate::services::Figures;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `part / whole` as a percentage, or a dash without a whole.
fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1} %", 100.0 * part / whole)
    } else {
        "–".to_owned()
    }
}

pub(crate) fn page(shared: &Shared) -> String {
    let figures = Figures::parse(&shared.metrics.render());
    let sum = |name: &str, labels: &[(&str, &str)]| figures.sum(name, labels);
    let mut rows: Vec<(&str, String, String)> = Vec::new();

    // Cache: hit ratio per tier.
    let stats = shared.agents.stats();
    for tier in &stats.tiers {
        #[allow(clippy::cast_precision_loss)]
        let (hits, misses) = (tier.hits as f64, tier.misses as f64);
        rows.push((
            "cache",
            format!("agents hit ratio, tier {}", escape(&tier.name)),
            format!(
                "{} ({} hits, {} misses)",
                percent(hits, hits + misses),
                tier.hits,
                tier.misses
            ),
        ));
    }
    rows.push((
        "cache",
        "agents loads from the database".to_owned(),
        stats.loads.to_string(),
    ));
    rows.push((
        "cache",
        "invalidations sent / received".to_owned(),
        format!(
            "{} / {}",
            stats.invalidations_sent, stats.invalidations_received
        ),
    ));

    // Idempotency.
    let outcome = |outcome: &str| {
        sum(
            "perfkit_idempotency_requests_total",
            &[("outcome", outcome)],
        )
    };
    rows.push((
        "idempotency",
        "new payments".to_owned(),
        format!("{}", outcome("new")),
    ));
    rows.push((
        "idempotency",
        "replays".to_owned(),
        format!("{}", outcome("replayed")),
    ));
    rows.push((
        "idempotency",
        "conflicts (409) / key reused (422)".to_owned(),
        format!("{} / {}", outcome("conflict"), outcome("mismatch")),
    ));

    // Dedup in front of the price upstream.
    let executions = sum("perfkit_dedup_executions_total", &[("name", "prices")]);
    let coalesced = sum("perfkit_dedup_coalesced_total", &[("name", "prices")]);
    rows.push((
        "dedup",
        "price requests shared / executed".to_owned(),
        format!(
            "{coalesced} / {executions} ({} shared)",
            percent(coalesced, coalesced + executions)
        ),
    ));
    rows.push((
        "dedup",
        "upstream calls".to_owned(),
        shared.upstream.calls().to_string(),
    ));

    // Batcher.
    let batches = sum("perfkit_batcher_batches_total", &[("name", "embeddings")]);
    let items = sum("perfkit_batcher_batch_size_sum", &[("name", "embeddings")]);
    rows.push((
        "batcher",
        "embedding batches / mean size".to_owned(),
        format!(
            "{batches} / {}",
            if batches > 0.0 {
                format!("{:.1}", items / batches)
            } else {
                "–".to_owned()
            }
        ),
    ));
    let waits = sum(
        "perfkit_batcher_limiter_wait_seconds_count",
        &[("name", "embeddings")],
    );
    let waited = sum(
        "perfkit_batcher_limiter_wait_seconds_sum",
        &[("name", "embeddings")],
    );
    rows.push((
        "batcher",
        "mean rate-limiter wait".to_owned(),
        if waits > 0.0 {
            format!("{:.2} ms", 1e3 * waited / waits)
        } else {
            "–".to_owned()
        },
    ));

    // Pool.
    let snapshot = shared.db.pool.snapshot();
    rows.push((
        "pool",
        "connections in use / idle / max".to_owned(),
        format!("{} / {} / {}", snapshot.in_use, snapshot.idle, snapshot.max),
    ));
    rows.push((
        "pool",
        "callers waiting".to_owned(),
        snapshot
            .waiting
            .map_or_else(|| "–".to_owned(), |waiting| waiting.to_string()),
    ));

    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>perfkit reference app</title><style>\
         body{font:14px system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin-bottom:2em}\
         td,th{border-bottom:1px solid #ddd;padding:4px 12px;text-align:left;vertical-align:top}\
         th{background:#f4f4f4}code{font-size:12px}</style></head><body>\
         <h1>perfkit reference app</h1><p>Refreshes every 2 s. \
         <a href=\"/metrics\">metrics</a> · <a href=\"/health\">health</a> · \
         <a href=\"/debug/slow-queries\">slow queries</a></p>\
         <table><tr><th>crate</th><th>figure</th><th>value</th></tr>",
    );
    for (crate_name, figure, value) in rows {
        let _ = write!(
            html,
            "<tr><td>{crate_name}</td><td>{figure}</td><td>{value}</td></tr>"
        );
    }
    html.push_str("</table><h2>Slowest statements</h2><table><tr><th>statement</th><th>calls</th><th>mean</th><th>p99</th><th>advice</th></tr>");
    for stats in shared.db.auditor.report(10) {
        let advice = if stats.advice.is_empty() {
            "–".to_owned()
        } else {
            stats
                .advice
                .iter()
                .map(|a| format!("<code>{}</code>", escape(a)))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{:.2} ms</td><td>{:.2} ms</td><td>{advice}</td></tr>",
            escape(&stats.text),
            stats.calls,
            stats.mean.as_secs_f64() * 1e3,
            stats.p99.as_secs_f64() * 1e3,
        );
    }
    html.push_str("</table></body></html>");
    html
}
