//! Skip or require: both ways, through the pure decision and through a real
//! child `cargo test` process that reads the environment like CI does.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use perfkit_test_support::{Decision, Requirement, Service, TestPostgres, TestRedis, Unavailable};

/// Nothing listens on port 1 of the loopback interface.
const CLOSED_REDIS: &str = "redis://127.0.0.1:1";
const CLOSED_POSTGRES: &str = "postgres://postgres@127.0.0.1:1/test";
const HANG_GUARD: Duration = Duration::from_secs(30);

fn unavailable(service: Service) -> Unavailable {
    Unavailable {
        service,
        url: "tcp://nowhere".to_owned(),
        reason: "Connection refused".to_owned(),
    }
}

#[test]
fn require_services_variable_is_read_as_a_flag() {
    assert_eq!(Requirement::from_value(None), Requirement::Optional);
    assert_eq!(Requirement::from_value(Some("")), Requirement::Optional);
    assert_eq!(Requirement::from_value(Some("0")), Requirement::Optional);
    assert_eq!(Requirement::from_value(Some("1")), Requirement::Required);
    assert_eq!(
        Requirement::from_value(Some(" true ")),
        Requirement::Required
    );
    assert_eq!(Requirement::from_value(Some("YES")), Requirement::Required);
}

#[test]
fn optional_service_is_skipped_with_the_reason_and_how_to_run_it() {
    let Decision::Skip(message) = Requirement::Optional.decide(&unavailable(Service::Redis)) else {
        panic!("an optional service must be skipped");
    };
    assert!(message.contains("SKIPPED"), "{message}");
    assert!(
        message.contains("optional_service_is_skipped"),
        "names the test: {message}"
    );
    assert!(
        message.contains("tcp://nowhere") && message.contains("Connection refused"),
        "{message}"
    );
    assert!(message.contains("PERFKIT_REQUIRE_SERVICES=1"), "{message}");
    assert!(message.contains("REDIS_URL"), "{message}");
}

#[test]
fn required_redis_fails_saying_how_to_start_redis() {
    let Decision::Fail(message) = Requirement::Required.decide(&unavailable(Service::Redis)) else {
        panic!("a required service must fail the test");
    };
    assert!(message.contains("Redis is required"), "{message}");
    assert!(message.contains("redis-server"), "{message}");
    assert!(message.contains("REDIS_URL"), "{message}");
}

#[test]
fn required_postgres_fails_saying_how_to_start_postgres() {
    let Decision::Fail(message) = Requirement::Required.decide(&unavailable(Service::Postgres))
    else {
        panic!("a required service must fail the test");
    };
    assert!(message.contains("PostgreSQL is required"), "{message}");
    assert!(message.contains("pg_ctlcluster"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
}

// The skip path itself (printing, returning None) runs in the child process
// of `environment_decides_between_skip_and_failure`; these check the part
// before it quietly, so that CI logs show no SKIPPED line that is not a skip.
#[tokio::test]
async fn unreachable_redis_is_reported_without_hanging() {
    // A hang guard, not a speed target: connecting has its own short timeout.
    let outcome = tokio::time::timeout(HANG_GUARD, TestRedis::try_connect(CLOSED_REDIS)).await;
    let unavailable = outcome.expect("connect must not hang").unwrap_err();
    assert_eq!(unavailable.service, Service::Redis);
    assert_eq!(unavailable.url, CLOSED_REDIS);
    assert!(matches!(
        Requirement::Optional.decide(&unavailable),
        Decision::Skip(_)
    ));
}

#[tokio::test]
async fn unreachable_postgres_is_reported() {
    let unavailable = TestPostgres::try_connect(CLOSED_POSTGRES)
        .await
        .unwrap_err();
    assert_eq!(unavailable.service, Service::Postgres);
    assert!(matches!(
        Requirement::Optional.decide(&unavailable),
        Decision::Skip(_)
    ));
}

#[tokio::test]
#[should_panic(expected = "redis-server")]
async fn unreachable_redis_fails_the_test_when_required() {
    let _ = TestRedis::connect(CLOSED_REDIS, Requirement::Required).await;
}

#[tokio::test]
#[should_panic(expected = "pg_ctlcluster")]
async fn unreachable_postgres_fails_the_test_when_required() {
    let _ = TestPostgres::connect(CLOSED_POSTGRES, Requirement::Required).await;
}

/// Run only by [`environment_decides_between_skip_and_failure`], in a child
/// process whose environment points at a closed port.
#[tokio::test]
#[ignore = "runs in a child process of environment_decides_between_skip_and_failure"]
async fn child_needs_redis() {
    let Some(_redis) = perfkit_test_support::redis().await else {
        return;
    };
    panic!("REDIS_URL points at a closed port, yet Redis answered");
}

fn run_child(require: Option<&str>) -> std::process::Output {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "child_needs_redis",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("REDIS_URL", CLOSED_REDIS)
        .env_remove("PERFKIT_REQUIRE_SERVICES");
    if let Some(value) = require {
        command.env("PERFKIT_REQUIRE_SERVICES", value);
    }
    command.output().unwrap()
}

#[test]
fn environment_decides_between_skip_and_failure() {
    let skipped = run_child(None);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(
        skipped.status.success(),
        "without the flag the test passes: {stderr}"
    );
    assert!(
        stderr.contains("SKIPPED child_needs_redis"),
        "and says why: {stderr}"
    );
    assert!(stderr.contains(CLOSED_REDIS), "{stderr}");

    let failed = run_child(Some("1"));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(
        !failed.status.success(),
        "with PERFKIT_REQUIRE_SERVICES=1 the test fails: {output}"
    );
    assert!(output.contains("Redis is required"), "{output}");
    assert!(
        output.contains("redis-server"),
        "and says how to start Redis: {output}"
    );
}
