//! `InstrumentedPool` over a live PostgreSQL pool: in use and waiting under
//! contention, cancelled acquires, timeouts, gauges through a recorder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use std::sync::Arc;

use perfkit_pool_monitor::{Alert, Condition, InstrumentedPool, PoolMonitor, PoolSource};
use perfkit_test_support::concurrency::until;
use perfkit_test_support::metrics::Counters;
use perfkit_test_support::{TestPostgres, postgres};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;

async fn pool(max: u32, acquire_timeout: Duration) -> Option<(TestPostgres, sqlx::PgPool)> {
    let db = postgres().await?;
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .connect_with(db.connect_options())
        .await
        .unwrap();
    Some((db, pool))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_holders_on_three_connections_raise_one_alert_and_clear_it_once() {
    let Some((_db, pool)) = pool(3, Duration::from_secs(30)).await else {
        return;
    };
    let counters = Counters::default();
    let (pool, monitor) = metrics::with_local_recorder(&counters, || {
        let pool = Arc::new(
            InstrumentedPool::builder(pool)
                .name("contended")
                .build()
                .unwrap(),
        );
        let monitor = PoolMonitor::builder()
            .interval(Duration::from_millis(10))
            .build()
            .unwrap();
        (pool, monitor)
    });
    let mut events = monitor.subscribe();
    metrics::with_local_recorder(&counters, || {
        monitor
            .watch(
                "contended",
                &pool,
                vec![Alert::new(
                    "exhausted",
                    Condition::WaitingAbove(5),
                    Duration::from_millis(50),
                )],
            )
            .unwrap();
    });
    let (release, released) = watch::channel(false);
    let holders: Vec<_> = (0..10)
        .map(|_| {
            let pool = Arc::clone(&pool);
            let mut released = released.clone();
            tokio::spawn(async move {
                let mut held = pool.acquire().await.unwrap();
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *held)
                    .await
                    .unwrap();
                assert_eq!(one, 1);
                // Held until released: the first three hold theirs while the
                // other seven wait for one.
                released.wait_for(|released| *released).await.unwrap();
                drop(held);
            })
        })
        .collect();
    until("3 in use and 7 waiting", || {
        let snapshot = pool.snapshot();
        snapshot.in_use == 3 && snapshot.waiting == Some(7)
    })
    .await;
    let raised = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(raised.raised, "{raised:?}");
    assert_eq!(
        (raised.pool.as_str(), raised.alert.as_str()),
        ("contended", "exhausted")
    );
    assert_eq!(raised.snapshot.waiting, Some(7));
    // The gauges, as the monitor set them.
    until("the gauges show the contention", || {
        counters.gauge("perfkit_pool_waiting{pool=contended}") == Some(7.0)
            && counters.gauge("perfkit_pool_connections{pool=contended,state=in_use}") == Some(3.0)
    })
    .await;
    assert_eq!(
        counters.gauge("perfkit_pool_connections{pool=contended,state=max}"),
        Some(3.0)
    );
    release.send(true).unwrap();
    for holder in holders {
        holder.await.unwrap();
    }
    let cleared = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!cleared.raised, "{cleared:?}");
    // One of each: nothing more while calm.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
    // sqlx returns a dropped connection to the pool on a task of its own.
    until("nobody waiting and every connection back", || {
        let snapshot = pool.snapshot();
        snapshot.waiting == Some(0) && snapshot.in_use == 0
    })
    .await;
}

/// Alerts on acquire time and on timeouts read the acquires of their last
/// `after`: each is raised once while slow acquires or timeouts are in that
/// window, and cleared once when they have left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_acquires_and_timeouts_raise_their_alerts_once_and_clear_them_once() {
    let Some((_db, pool)) = pool(1, Duration::from_millis(300)).await else {
        return;
    };
    let pool = Arc::new(
        InstrumentedPool::builder(pool)
            .name("windows")
            .build()
            .unwrap(),
    );
    let monitor = PoolMonitor::builder()
        .interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut events = monitor.subscribe();
    let window = Duration::from_millis(500);
    monitor
        .watch(
            "windows",
            &pool,
            vec![
                Alert::new(
                    "slow",
                    Condition::AcquireP99Above(Duration::from_millis(50)),
                    window,
                ),
                Alert::new("timeouts", Condition::TimeoutRateAbove(0.2), window),
            ],
        )
        .unwrap();

    // A caller waits ~150 ms for the one connection: a slow acquire.
    let held = pool.acquire().await.unwrap();
    let waiter = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { drop(pool.acquire().await.unwrap()) })
    };
    until("one waiting", || pool.snapshot().waiting == Some(1)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(held);
    waiter.await.unwrap();
    let raised = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (raised.alert.as_str(), raised.raised),
        ("slow", true),
        "{raised:?}"
    );
    let p99 = raised.acquires.unwrap().p99.unwrap();
    assert!(p99 >= Duration::from_millis(100), "{p99:?}");
    // Nothing slow since: cleared once the slow acquire leaves the window.
    let cleared = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cleared.alert.as_str(), cleared.raised),
        ("slow", false),
        "{cleared:?}"
    );

    // Three callers time out behind a long holder.
    let held = pool.acquire().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire().await.map(drop) })
        })
        .collect();
    for waiter in waiters {
        assert!(matches!(
            waiter.await.unwrap(),
            Err(sqlx::Error::PoolTimedOut)
        ));
    }
    drop(held);
    let raised = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (raised.alert.as_str(), raised.raised),
        ("timeouts", true),
        "{raised:?}"
    );
    // Raised at the first sample that saw a timeout (the three may end in
    // different samples).
    let window = raised.acquires.unwrap();
    assert!(
        window.timeouts >= 1 && window.timeout_rate() > 0.2,
        "{window:?}"
    );
    let cleared = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cleared.alert.as_str(), cleared.raised),
        ("timeouts", false),
        "{cleared:?}"
    );
    // One of each, nothing more while calm.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        events.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
}

/// sqlx's MySQL pool (on MariaDB), raw and instrumented: the same figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_pool_shows_its_holders_and_waiters() {
    let Some(db) = perfkit_test_support::mysql().await else {
        return;
    };
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(db.connect_options())
        .await
        .unwrap();
    let pool = Arc::new(
        InstrumentedPool::builder(pool)
            .name("mariadb")
            .build()
            .unwrap(),
    );
    let (release, released) = watch::channel(false);
    let holders: Vec<_> = (0..5)
        .map(|_| {
            let pool = Arc::clone(&pool);
            let mut released = released.clone();
            tokio::spawn(async move {
                let mut held = pool.acquire().await.unwrap();
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *held)
                    .await
                    .unwrap();
                assert_eq!(one, 1);
                released.wait_for(|released| *released).await.unwrap();
                drop(held);
            })
        })
        .collect();
    until("3 in use and 2 waiting", || {
        let snapshot = pool.snapshot();
        snapshot.in_use == 3 && snapshot.waiting == Some(2)
    })
    .await;
    let raw = pool.pool().snapshot();
    assert_eq!(
        (raw.max, raw.size, raw.in_use, raw.waiting),
        (3, 3, 3, None)
    );
    release.send(true).unwrap();
    for holder in holders {
        holder.await.unwrap();
    }
    until("all back", || {
        let snapshot = pool.snapshot();
        snapshot.in_use == 0 && snapshot.waiting == Some(0) && snapshot.idle == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_keeps_no_pool_alive_and_stops_when_dropped() {
    let Some((_db, pool)) = pool(2, Duration::from_secs(5)).await else {
        return;
    };
    let monitor = PoolMonitor::builder()
        .interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let pool = Arc::new(
        InstrumentedPool::builder(pool)
            .name("dropped")
            .build()
            .unwrap(),
    );
    let weak = Arc::downgrade(&pool);
    monitor.watch("dropped", &pool, Vec::new()).unwrap();
    assert_eq!(monitor.watched(), ["dropped"]);
    drop(pool);
    assert!(weak.upgrade().is_none(), "the monitor holds the pool");
    until("the dropped pool is forgotten", || {
        monitor.watched().is_empty()
    })
    .await;
    let stopped = monitor.stopped();
    drop(monitor);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("the sampling task stops when the monitor is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_timed_out_acquires_leave_nobody_waiting() {
    let Some((_db, pool)) = pool(1, Duration::from_millis(200)).await else {
        return;
    };
    let counters = perfkit_test_support::metrics::Counters::default();
    let pool = metrics::with_local_recorder(&counters, || {
        InstrumentedPool::builder(pool)
            .name("cancelled")
            .build()
            .unwrap()
    });
    let held = pool.acquire().await.unwrap();
    // An acquire dropped by a timeout around it, and one whose task is aborted.
    let timed_out = tokio::time::timeout(Duration::from_millis(50), pool.acquire()).await;
    assert!(timed_out.is_err());
    let aborted = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(drop) }
    });
    until("the aborted acquire waits", || pool.waiting() == 1).await;
    aborted.abort();
    let _ = aborted.await;
    assert_eq!(pool.waiting(), 0);
    // The pool's own acquire timeout: counted.
    assert!(matches!(
        pool.acquire().await,
        Err(sqlx::Error::PoolTimedOut)
    ));
    assert_eq!(pool.waiting(), 0);
    assert_eq!(
        counters.get("perfkit_pool_acquire_timeouts_total{pool=cancelled}"),
        1
    );
    drop(held);
    assert!(pool.acquire().await.is_ok());
}

/// Warnings and notices of the monitored pools: level, pool, message, and
/// the span the event belongs to (collected through the global subscriber:
/// the monitor logs from its own task).
#[derive(Debug, Clone)]
struct Logged {
    level: tracing::Level,
    pool: String,
    message: String,
    span: Option<&'static str>,
}

fn logged() -> &'static std::sync::Mutex<Vec<Logged>> {
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    struct Capture;
    impl<S> Layer<S> for Capture
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            if !event
                .metadata()
                .target()
                .starts_with("perfkit_pool_monitor")
            {
                return;
            }
            #[derive(Default)]
            struct Fields {
                pool: String,
                message: String,
            }
            impl tracing::field::Visit for Fields {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    if field.name() == "pool" {
                        value.clone_into(&mut self.pool);
                    }
                }
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.message = format!("{value:?}");
                    }
                }
            }
            let mut fields = Fields::default();
            event.record(&mut fields);
            LOGGED
                .get_or_init(Default::default)
                .lock()
                .unwrap()
                .push(Logged {
                    level: *event.metadata().level(),
                    pool: fields.pool,
                    message: fields.message,
                    span: ctx.event_span(event).map(|span| span.name()),
                });
        }
    }
    static LOGGED: std::sync::OnceLock<std::sync::Mutex<Vec<Logged>>> = std::sync::OnceLock::new();
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("the only global subscriber of this binary");
    });
    LOGGED.get_or_init(Default::default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_past_the_leak_threshold_is_reported_once_in_its_span() {
    use tracing::Instrument;

    let Some((_db, pool)) = pool(2, Duration::from_secs(5)).await else {
        return;
    };
    let logs = logged();
    let pool = Arc::new(
        InstrumentedPool::builder(pool)
            .name("leaky")
            .leak_threshold(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    let monitor = PoolMonitor::builder()
        .interval(Duration::from_millis(10))
        .build()
        .unwrap();
    monitor.watch("leaky", &pool, Vec::new()).unwrap();
    // A quick one: nothing to report.
    drop(pool.acquire().await.unwrap());
    async {
        let held = pool.acquire().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
    }
    .instrument(tracing::info_span!("nightly_report"))
    .await;
    let of_pool = || -> Vec<Logged> {
        logs.lock()
            .unwrap()
            .iter()
            .filter(|log| log.pool == "leaky")
            .cloned()
            .collect()
    };
    until("the report and the return", || of_pool().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let found = of_pool();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(found[0].level, tracing::Level::WARN);
    assert_eq!(found[0].span, Some("nightly_report"), "{found:#?}");
    assert!(found[0].message.contains("leak threshold"), "{found:#?}");
    assert_eq!(found[1].level, tracing::Level::INFO);
    assert_eq!(found[1].span, Some("nightly_report"));
}
