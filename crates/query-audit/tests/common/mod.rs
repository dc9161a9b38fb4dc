//! What the test binaries share: the auditors' warnings, collected through
//! the global subscriber, and sqlx-shaped query events.
// Each binary uses part of it.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// A warning the auditor logged: its auditor's name and its message.
#[derive(Debug, Clone)]
pub struct Warning {
    pub name: String,
    pub message: String,
    pub fingerprint: String,
}

/// Collects the auditors' warnings (logged from their own threads, so to
/// the global subscriber).
struct Capture(Arc<Mutex<Vec<Warning>>>);

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("perfkit_query_audit") {
            return;
        }
        struct Fields(Warning);
        impl Visit for Fields {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "audit.name" {
                    self.0.name = value.to_owned();
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.0.message = format!("{value:?}"),
                    "query.fingerprint" => self.0.fingerprint = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut fields = Fields(Warning {
            name: String::new(),
            message: String::new(),
            fingerprint: String::new(),
        });
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

pub fn warnings() -> &'static Arc<Mutex<Vec<Warning>>> {
    static WARNINGS: OnceLock<Arc<Mutex<Vec<Warning>>>> = OnceLock::new();
    WARNINGS.get_or_init(|| {
        let warnings = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(Capture(Arc::clone(&warnings))),
        )
        .expect("the only global subscriber of this binary");
        warnings
    })
}

/// The warnings of auditor `name` once `expected` have arrived (or after 5 s).
pub fn warnings_of(name: &str, expected: usize) -> Vec<Warning> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<Warning> = warnings()
            .lock()
            .unwrap()
            .iter()
            .filter(|warning| warning.name == name)
            .cloned()
            .collect();
        if found.len() >= expected || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What sqlx emits after a query (sqlx-core's `QueryLogger::finish`): the
/// summary, and the whole statement in `db.statement` when it is longer.
pub fn sqlx_event(statement: &str, rows: u64, elapsed: Duration) {
    let summary: String = statement
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ");
    let (summary, full) = if summary == statement {
        (summary, String::new())
    } else {
        (format!("{summary} …"), format!("\n\n{statement}\n"))
    };
    tracing::debug!(
        target: "sqlx::query",
        summary,
        db.statement = full,
        rows_affected = 0_u64,
        rows_returned = rows,
        ?elapsed,
        elapsed_secs = elapsed.as_secs_f64(),
    );
}
