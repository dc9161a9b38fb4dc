//! Invalidation transport on a Redis Cluster: classic `PUBLISH` (the
//! cluster forwards every message to every node, so a subscriber may sit on
//! any node) against sharded `SPUBLISH` (delivered only within the shard
//! that owns the channel's slot; the subscriber must sit on that shard), in
//! one run, in alternating blocks.
//!
//! Each block sends `BLOCK` messages one at a time (latency: from before
//! the publish to the subscriber's receipt) and then `BURST` messages at
//! once (throughput: until the last one is received). The `PUBLISH`
//! subscriber is on a master that does not own the channel's slot (the
//! message crosses the cluster bus, as for most instances of a service);
//! the `SSUBSCRIBE` one on the owning master. Each round prints both
//! medians and the per-round ratio; the summary gives the median of the
//! per-round ratios.
//!
//! Needs a cluster at `REDIS_CLUSTER_URLS` (default 127.0.0.1:7000-7005, as
//! `.ci/run` starts it); skipped with a message otherwise.
//!
//! `cargo bench -p perfkit-benches --bench cluster_bus`

// Benchmark harness: a setup that fails should stop the run.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_routing::Slot;
use tokio::sync::mpsc;

const CHANNEL: &str = "perfkit-bench:cluster-bus";
const BLOCK: usize = 200;
const BURST: usize = 2_000;
const ROUNDS: usize = 10;

fn urls() -> Vec<String> {
    std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            (7000..=7005)
                .map(|port| format!("redis://127.0.0.1:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// `(host:port, first slot, last slot)` of every master.
async fn masters(cluster: &mut redis::cluster_async::ClusterConnection) -> Vec<(String, u16, u16)> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(cluster)
        .await
        .unwrap();
    let mut found = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !fields[2].contains("master") || fields.len() < 9 {
            continue;
        }
        let address = fields[1].split('@').next().unwrap().to_owned();
        for range in &fields[8..] {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(first), Ok(last)) = (first.parse(), last.parse()) {
                found.push((address.clone(), first, last));
            }
        }
    }
    found
}

/// A RESP3 connection to `address` whose pushes (messages) arrive on the receiver.
async fn subscriber(
    address: &str,
    command: &str,
) -> (
    redis::aio::MultiplexedConnection,
    mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let (pushes, received) = mpsc::unbounded_channel();
    let client = redis::Client::open(format!("redis://{address}/?protocol=resp3")).unwrap();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(pushes);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    redis::cmd(command)
        .arg(CHANNEL)
        .exec_async(&mut connection)
        .await
        .unwrap();
    (connection, received)
}

/// Waits for the next message (skipping subscription confirmations).
async fn next_message(received: &mut mpsc::UnboundedReceiver<redis::PushInfo>) {
    loop {
        let push = received.recv().await.unwrap();
        if matches!(
            push.kind,
            redis::PushKind::Message | redis::PushKind::SMessage
        ) {
            return;
        }
    }
}

/// Median one-message latency over `BLOCK` messages, and the time for a
/// burst of `BURST`.
async fn block(
    cluster: &mut redis::cluster_async::ClusterConnection,
    received: &mut mpsc::UnboundedReceiver<redis::PushInfo>,
    command: &str,
) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(BLOCK);
    for i in 0..BLOCK {
        let start = Instant::now();
        redis::cmd(command)
            .arg(CHANNEL)
            .arg(i)
            .exec_async(cluster)
            .await
            .unwrap();
        next_message(received).await;
        latencies.push(start.elapsed());
    }
    latencies.sort_unstable();
    let start = Instant::now();
    let sends = (0..BURST).map(|i| {
        let mut cluster = cluster.clone();
        async move {
            redis::cmd(command)
                .arg(CHANNEL)
                .arg(i)
                .exec_async(&mut cluster)
                .await
        }
    });
    let (sent, ()) = tokio::join!(futures_util::future::join_all(sends), async {
        for _ in 0..BURST {
            next_message(received).await;
        }
    });
    assert!(sent.iter().all(Result::is_ok));
    (latencies[BLOCK / 2], start.elapsed())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ClusterClient::builder(urls()).build().unwrap();
        let Ok(mut cluster) = client.get_async_connection().await else {
            eprintln!("cluster_bus: no Redis Cluster at {:?}; skipped", urls());
            return;
        };
        let slot = Slot::for_key(CHANNEL);
        let masters = masters(&mut cluster).await;
        let owner_of = |slot: u16| {
            masters
                .iter()
                .find(|(_, first, last)| (*first..=*last).contains(&slot))
                .map(|(address, _, _)| address.clone())
                .unwrap()
        };
        // Slot::for_key gives a Slot; its number through its Debug form.
        let slot: u16 = format!("{slot:?}")
            .trim_start_matches("Slot(")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        let owner = owner_of(slot);
        let other = masters
            .iter()
            .map(|(address, _, _)| address.clone())
            .find(|address| *address != owner)
            .unwrap();
        let (_classic, mut classic) = subscriber(&other, "SUBSCRIBE").await;
        let (_sharded, mut sharded) = subscriber(&owner, "SSUBSCRIBE").await;
        eprintln!(
            "cluster_bus: channel slot {slot} on {owner}; PUBLISH subscriber on {other}, SSUBSCRIBE subscriber on {owner}"
        );
        let (mut latency_ratios, mut burst_ratios) = (Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            let (p_latency, p_burst) = block(&mut cluster, &mut classic, "PUBLISH").await;
            let (s_latency, s_burst) = block(&mut cluster, &mut sharded, "SPUBLISH").await;
            if round == 0 {
                continue; // warm-up
            }
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            latency_ratios.push(ratio(p_latency, s_latency));
            burst_ratios.push(ratio(p_burst, s_burst));
            eprintln!(
                "round {round}: one message PUBLISH {p_latency:?} SPUBLISH {s_latency:?} ({:.2}); burst of {BURST} PUBLISH {p_burst:?} SPUBLISH {s_burst:?} ({:.2})",
                ratio(p_latency, s_latency),
                ratio(p_burst, s_burst),
            );
        }
        let median = |ratios: &mut Vec<f64>| {
            ratios.sort_by(f64::total_cmp);
            ratios[ratios.len() / 2]
        };
        eprintln!(
            "PUBLISH / SPUBLISH, median of {ROUNDS} per-round ratios: one message {:.2} (min {:.2}, max {:.2}), burst {:.2} (min {:.2}, max {:.2})",
            median(&mut latency_ratios),
            latency_ratios[0],
            latency_ratios[latency_ratios.len() - 1],
            median(&mut burst_ratios),
            burst_ratios[0],
            burst_ratios[burst_ratios.len() - 1],
        );
    });
}
