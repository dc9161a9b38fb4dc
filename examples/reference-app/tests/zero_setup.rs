//! The first command of the README, as a newcomer runs it: the binary, in an
//! empty directory, with no service configured. It starts, answers, and
//! stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_from_an_empty_directory_with_no_service_and_stops_on_sigterm() {
    let dir = common::TempDir::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_perfkit-reference-app"))
        .current_dir(&dir.0)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN", "127.0.0.1:0")
        // Unreachable if anything tried them: nothing may.
        .env("HOME", &dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    let url = loop {
        let line = printed
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no URL printed; so far: {banner:#?}"));
        banner.push(line.clone());
        if let Some(rest) = line.strip_prefix("open ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned();
        }
    };
    let banner = banner.join("\n");
    assert!(
        banner.contains("database        sqlite://perfkit-reference-app.db"),
        "{banner}"
    );
    assert!(banner.contains("redis           none"), "{banner}");
    assert!(banner.contains("built-in deterministic model"), "{banner}");

    let http = common::client();
    let health = http.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let agent: serde_json::Value = http
        .get(format!("{url}/agents/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agent["id"], 1);
    assert!(dir.0.join("perfkit-reference-app.db").exists());

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
