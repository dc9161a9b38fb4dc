//! `perfkit-load`: a load generator for the reference app, with nothing else
//! to install. Fixed concurrency (each connection sends its next request
//! when the last is answered) or a fixed rate (requests scheduled on a
//! clock; latency counted from when each was due, so a stalled server is
//! not hidden: no coordinated omission). Latencies go into an HDR
//! histogram; it prints throughput, p50/p90/p99/p99.9/max and errors.
//!
//! ```text
//! cargo run --release -p perfkit-reference-app --bin perfkit-load -- \
//!     --url http://127.0.0.1:3000 --route agents --concurrency 64 --duration 10
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// What to load.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Route {
    /// `GET /agents/{id}`, ids 1 to `--ids` in turn (cached after their first read).
    Agents,
    /// `GET /prices?coins=btc,eth` (cached; one upstream call per TTL).
    Prices,
    /// `POST /payments`, a new idempotency key every time.
    Payments,
}

#[derive(Debug, Parser)]
#[command(
    name = "perfkit-load",
    about = "Load generator for the perfkit reference app"
)]
struct Args {
    /// The app's base URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// The route to load.
    #[arg(long, value_enum, default_value_t = Route::Agents)]
    route: Route,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Requests per second over all connections (open loop); without it,
    /// each connection sends as fast as it is answered (closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Agent ids to cycle through (the app seeds 10,000).
    #[arg(long, default_value_t = 1_000)]
    ids: u64,
    /// Seconds of load before measuring (warms caches and connections).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

struct Totals {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

fn authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs: {url}"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains(':') {
        Ok(host.to_owned())
    } else {
        Ok(format!("{host}:80"))
    }
}

fn request(args: &Args, host: &str, worker: usize, n: u64, run: u64) -> Request<Full<Bytes>> {
    let builder = Request::builder().header("host", host);
    let built = match args.route {
        Route::Agents => builder
            .method(Method::GET)
            .uri(format!("/agents/{}", n % args.ids.max(1) + 1))
            .body(Full::default()),
        Route::Prices => builder
            .method(Method::GET)
            .uri("/prices?coins=btc,eth")
            .body(Full::default()),
        Route::Payments => builder
            .method(Method::POST)
            .uri("/payments")
            .header("authorization", format!("Bearer load-{worker}"))
            .header("idempotency-key", format!("load-{run:x}-{worker}-{n}"))
            .header("content-type", "application/json")
            .body(Full::from(r#"{"amount_cents": 1999, "currency": "EUR"}"#)),
    };
    built.unwrap_or_default()
}

async fn worker(
    args: Arc<Args>,
    host: String,
    index: usize,
    run: u64,
    measure_from: Instant,
    until: Instant,
    sent: Arc<AtomicU64>,
) -> Result<Totals, String> {
    let stream = tokio::net::TcpStream::connect(&host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut totals = Totals {
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?,
        ok: 0,
        errors: 0,
        first_error: None,
    };
    // Open loop: this connection's share of the rate, on a clock.
    let interval = args.rate.map(|rate| {
        let per_connection = (rate as f64 / args.concurrency as f64).max(0.001);
        Duration::from_secs_f64(1.0 / per_connection)
    });
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        let due = match interval {
            Some(interval) => {
                let due = start + interval.mul_f64(n as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => Instant::now(),
        };
        if due >= until {
            break;
        }
        let request = request(&args, &host, index, n, run);
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        let outcome = match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(_) if status.is_success() => Ok(()),
                    Ok(_) => Err(format!("status {status}")),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Err(e) => Err(format!("request: {e}")),
        };
        let done = Instant::now();
        if due < measure_from {
            continue;
        }
        match outcome {
            Ok(()) => {
                totals.ok += 1;
                let micros =
                    u64::try_from(done.duration_since(due).as_micros()).unwrap_or(u64::MAX);
                let _ = totals.histogram.record(micros.max(1));
            }
            Err(error) => {
                totals.errors += 1;
                totals.first_error.get_or_insert(error);
                if sender.ready().await.is_err() {
                    break;
                }
            }
        }
    }
    Ok(totals)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Arc::new(Args::parse());
    let host = match authority(&args.url) {
        Ok(host) => host,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
        });
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let until = measure_from + Duration::from_secs(args.duration);
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|index| {
            tokio::spawn(worker(
                Arc::clone(&args),
                host.clone(),
                index,
                run,
                measure_from,
                until,
                Arc::clone(&sent),
            ))
        })
        .collect();
    let mut histogram = match Histogram::<u64>::new_with_bounds(1, 60_000_000, 3) {
        Ok(histogram) => histogram,
        Err(error) => {
            eprintln!("{error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (mut ok, mut errors, mut first_error) = (0_u64, 0_u64, None);
    for handle in workers {
        match handle.await {
            Ok(Ok(totals)) => {
                let _ = histogram.add(&totals.histogram);
                ok += totals.ok;
                errors += totals.errors;
                if first_error.is_none() {
                    first_error = totals.first_error;
                }
            }
            Ok(Err(error)) => {
                errors += 1;
                first_error.get_or_insert(error);
            }
            Err(error) => {
                errors += 1;
                first_error.get_or_insert(error.to_string());
            }
        }
    }
    let seconds = args.duration as f64;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
    println!(
        "{:?} {} {}, {} connections, {} s measured after {} s warm-up",
        args.route,
        args.url,
        args.rate.map_or_else(
            || "closed loop".to_owned(),
            |rate| format!("{rate} req/s offered")
        ),
        args.concurrency,
        args.duration,
        args.warmup
    );
    println!(
        "  {ok} ok, {errors} errors; {:.0} req/s; latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ok as f64 / seconds,
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1_000.0
    );
    if let Some(error) = first_error {
        println!("  first error: {error}");
    }
    if errors > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
