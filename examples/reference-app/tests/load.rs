//! `perfkit-load` against a running app: closed loop and fixed rate, no
//! errors, its summary printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_throughput_latency_and_errors() {
    let app = common::embedded_app().await;
    for (route, extra) in [
        ("agents", vec!["--concurrency", "4", "--ids", "200"]),
        ("payments", vec!["--rate", "200", "--concurrency", "4"]),
    ] {
        let url = app.base.clone();
        let extra: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_perfkit-load"))
                .args([
                    "--url",
                    &url,
                    "--route",
                    route,
                    "--duration",
                    "1",
                    "--warmup",
                    "0",
                ])
                .args(&extra)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{route}: {printed}");
        assert!(printed.contains(" 0 errors; "), "{printed}");
        assert!(printed.contains("p99.9"), "{printed}");
        if route == "payments" {
            assert!(printed.contains("200 req/s offered"), "{printed}");
            // About 200 sent in the second measured (open loop), each a new payment.
            let ok: u64 = printed
                .lines()
                .nth(1)
                .and_then(|line| line.split_whitespace().next())
                .and_then(|count| count.parse().ok())
                .unwrap_or(0);
            assert!((150..=250).contains(&ok), "{printed}");
        }
    }
    app.stop().await;
}
