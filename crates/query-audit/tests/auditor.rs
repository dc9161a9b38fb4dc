//! The auditor without a database: statistics, the fingerprint bound,
//! concurrency, slow and N+1 warnings through the layer, and a hostile
//! corpus for the fingerprint scanner.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{sqlx_event, warnings, warnings_of};
use perfkit_query_audit::{Auditor, Fingerprint, OVERFLOW_TEXT};
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn statements_differing_in_constants_share_statistics() {
    let auditor = Auditor::builder().name("stats").build().unwrap();
    for (id, millis) in [(1, 5), (2, 10), (3, 15), (4, 20)] {
        auditor.record(
            &format!("SELECT name FROM users WHERE id = {id} /* call {id} */"),
            Duration::from_millis(millis),
            1,
        );
    }
    auditor.record("select count(*) from users", Duration::from_millis(1), 1);
    let report = auditor.report(10);
    assert_eq!(report.len(), 2);
    let users = &report[0];
    assert_eq!(users.text, "select name from users where id = ?");
    assert_eq!(users.calls, 4);
    assert_eq!(users.total, Duration::from_millis(50));
    assert_eq!(
        (users.min, users.max),
        (Duration::from_millis(5), Duration::from_millis(20))
    );
    assert_eq!(users.mean, Duration::from_micros(12_500));
    assert_eq!(users.rows, 4);
    // DDSketch: within 1 % of a value that was recorded.
    let near = |value: Duration, millis: f64| {
        (value.as_secs_f64() * 1_000.0 / millis - 1.0).abs() <= 0.011
    };
    // Nearest rank: the p50 of 4 is the 2nd, the p99 the slowest (never
    // below the mean for want of samples).
    assert!(near(users.p50, 10.0), "{:?}", users.p50);
    assert!(near(users.p95, 20.0), "{:?}", users.p95);
    assert!(near(users.p99, 20.0), "{:?}", users.p99);
    assert_eq!(report[1].text, "select count(*) from users");
    assert_eq!(auditor.report(1).len(), 1);
    auditor.reset();
    assert!(auditor.report(10).is_empty());
}

#[test]
fn dynamic_sql_stays_within_the_fingerprint_bound() {
    let auditor = Auditor::builder()
        .name("bound")
        .max_fingerprints(100)
        .build()
        .unwrap();
    for table in 0..10_000 {
        auditor.record(
            &format!("select * from t{table} where a = 1"),
            Duration::from_micros(10),
            0,
        );
    }
    assert_eq!(auditor.fingerprints(), 100);
    let report = auditor.report(1_000);
    assert_eq!(report.len(), 101);
    let overflow = report
        .iter()
        .find(|stats| stats.text == OVERFLOW_TEXT)
        .unwrap();
    assert_eq!((overflow.id, overflow.calls), (0, 9_900));
    assert_eq!(report.iter().map(|stats| stats.calls).sum::<u64>(), 10_000);
}

#[test]
fn concurrent_recording_loses_no_call() {
    let auditor = Auditor::builder().name("concurrent").build().unwrap();
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let auditor = &auditor;
            scope.spawn(move || {
                for i in 0..5_000 {
                    auditor.record(
                        &format!("select * from t where id = {}", thread * 10_000 + i),
                        Duration::from_micros(1),
                        1,
                    );
                    auditor.record("update t set a = a + 1", Duration::from_micros(2), 1);
                }
            });
        }
    });
    let report = auditor.report(10);
    assert_eq!(report.len(), 2);
    assert!(
        report
            .iter()
            .all(|stats| stats.calls == 20_000 && stats.rows == 20_000)
    );
}

#[test]
fn a_slow_query_is_logged_once_with_its_redacted_text() {
    let auditor = Auditor::builder()
        .name("slow")
        .slow_threshold(Duration::from_millis(50))
        .slow_threshold_for(
            "select * from reports where year = 2024",
            Duration::from_secs(2),
        )
        .build()
        .unwrap();
    warnings();
    let fast = auditor.record(
        "select * from users where email = 'a@b.c'",
        Duration::from_millis(10),
        1,
    );
    assert!(!fast.slow);
    let slow = auditor.record(
        "select * from users where email = 'secret@b.c'",
        Duration::from_millis(60),
        1,
    );
    assert!(slow.slow);
    // Its own, higher threshold.
    assert!(
        !auditor
            .record(
                "select * from reports where year = 1999",
                Duration::from_secs(1),
                9
            )
            .slow
    );
    let logged = warnings_of("slow", 1);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].message, "slow query");
    assert_eq!(logged[0].fingerprint, format!("{:016x}", slow.fingerprint));
    assert_eq!(auditor.stats(slow.fingerprint).unwrap().slow_calls, 1);
}

#[test]
fn the_layer_reads_sqlx_events_short_and_long() {
    let auditor = Auditor::builder().name("layer").build().unwrap();
    let subscriber = tracing_subscriber::registry().with(auditor.layer());
    tracing::subscriber::with_default(subscriber, || {
        sqlx_event("select 1", 1, Duration::from_micros(300));
        sqlx_event(
            "SELECT id, name FROM users WHERE org = $1 AND active ORDER BY name",
            25,
            Duration::from_millis(3),
        );
        // Not sqlx's: ignored.
        tracing::debug!(target: "sqlx::other", summary = "select 2", elapsed_secs = 0.1);
    });
    let report = auditor.report(10);
    assert_eq!(report.len(), 2, "{report:?}");
    assert_eq!(
        report[0].text,
        "select id, name from users where org = ? and active order by name"
    );
    assert_eq!((report[0].calls, report[0].rows), (1, 25));
    assert_eq!(report[0].total, Duration::from_millis(3));
    assert_eq!(report[1].text, "select ?");
}

#[test]
fn an_n_plus_one_loop_in_one_request_warns_once_and_separate_requests_never() {
    let auditor = Auditor::builder()
        .name("n+1")
        .n_plus_one(10)
        .build()
        .unwrap();
    warnings();
    let subscriber = tracing_subscriber::registry().with(auditor.layer());
    tracing::subscriber::with_default(subscriber, || {
        let request = tracing::info_span!("request", path = "/orders");
        let _entered = request.enter();
        for id in 0..50 {
            // Nested spans inside the request still count for it.
            let _item = tracing::info_span!("load_item", id).entered();
            sqlx_event(
                &format!("select * from items where id = {id}"),
                1,
                Duration::from_micros(50),
            );
        }
    });
    tracing::subscriber::with_default(tracing_subscriber::registry().with(auditor.layer()), || {
        for id in 0..50 {
            let _request = tracing::info_span!("request", id).entered();
            sqlx_event(
                &format!("select * from lines where id = {id}"),
                1,
                Duration::from_micros(50),
            );
        }
    });
    let logged = warnings_of("n+1", 1);
    // Anything else would have been logged by now (the notice thread is idle).
    std::thread::sleep(Duration::from_millis(200));
    let logged_later = warnings_of("n+1", 0);
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged_later.len(), 1, "{logged_later:?}");
    assert_eq!(
        logged[0].fingerprint,
        format!(
            "{:016x}",
            Fingerprint::of("select * from items where id = 1").id()
        )
    );
    assert!(logged[0].message.contains("10 times"), "{logged:?}");
    assert_eq!(
        auditor
            .report(10)
            .iter()
            .map(|stats| stats.calls)
            .sum::<u64>(),
        100
    );
}

/// Hostile input never panics: random mixes
/// of SQL's lexical forms cut anywhere, invalid UTF-8, deep comments,
/// a megabyte of quotes.
#[test]
fn the_scanner_survives_a_hostile_corpus() {
    const PIECES: [&[u8]; 24] = [
        b"select ",
        b"'",
        b"''",
        b"E'\\'",
        b"\"",
        b"$$",
        b"$a$",
        b"$1",
        b"/*",
        b"*/",
        b"--",
        b"\n",
        b"(",
        b")",
        b"[",
        b"]",
        b",",
        b"in ",
        b"values ",
        b"1e",
        b"-",
        b"?",
        b"\xff\xfe",
        b"\xc3",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..20_000 {
        let len = next() % 40;
        let mut sql = Vec::new();
        for _ in 0..len {
            let piece = PIECES[usize::try_from(next() % 24).unwrap()];
            sql.extend_from_slice(piece);
        }
        let fingerprint = Fingerprint::of(&sql);
        assert!(fingerprint.text().len() <= 4_096 + 3);
        // The same bytes always give the same fingerprint.
        assert_eq!(fingerprint, Fingerprint::of(&sql));
    }
    for huge in [
        vec![b'\''; 1 << 20],
        b"/*".repeat(1 << 19),
        b"select "
            .iter()
            .chain(b"1, ".repeat(300_000).iter())
            .copied()
            .collect(),
        b"(".repeat(1 << 20),
        b"$a$".repeat(1 << 18),
    ] {
        let fingerprint = Fingerprint::of(&huge);
        assert!(fingerprint.text().len() <= 4_096 + 3);
    }
}
