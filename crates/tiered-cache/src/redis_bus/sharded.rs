//! The bus's subscription on a Redis Cluster: sharded pub/sub
//! (`SSUBSCRIBE`), on the master that owns the channel's slot, found
//! through any node given and found again after every loss (a failover
//! moves the slot to the promoted replica).

use std::time::Duration;

use redis::{ConnectionAddr, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

/// A sharded subscription: the connection (for health-check `PING`s) and
/// the messages pushed on it.
pub(super) struct Sharded {
    pub(super) connection: redis::aio::MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

/// Subscribes to `channel` on the master that owns its slot, as `seed` (any
/// node of the cluster) reports it now.
pub(super) async fn subscribe(
    seed: &redis::Client,
    channel: &str,
    connect_timeout: Duration,
) -> redis::RedisResult<Sharded> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(connect_timeout));
    let mut asked = seed
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(channel)
        .query_async(&mut asked)
        .await?;
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut asked)
        .await?;
    let (host, port) = owner(&slots, slot).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Io,
            "no master serves the channel's slot now",
        ))
    })?;
    let seed_info = seed.get_connection_info().clone();
    let addr = match seed_info.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    let redis_settings = seed_info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = seed_info.set_addr(addr).set_redis_settings(redis_settings);
    let (sender, pushes) = mpsc::unbounded_channel();
    let mut connection = redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(None)
                .set_push_sender(sender),
        )
        .await?;
    redis::cmd("SSUBSCRIBE")
        .arg(channel)
        .exec_async(&mut connection)
        .await?;
    Ok(Sharded { connection, pushes })
}

/// The `(host, port)` of the master serving `slot` in a `CLUSTER SLOTS`
/// reply (`[[start, end, [host, port, id, …], replicas…], …]`).
fn owner(slots: &Value, slot: i64) -> Option<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&slot) {
            return None;
        }
        let host = match master.first()? {
            Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        Some((host, u16::try_from(*port).ok()?))
    })
}

impl Sharded {
    /// The next message's payload; `None` once the subscription is gone
    /// (the connection closed, or the slot moved away: Redis then
    /// unsubscribes the shard's clients).
    pub(super) async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let push = self.pushes.recv().await?;
            match push.kind {
                PushKind::SMessage => {
                    if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                        return Some(payload);
                    }
                }
                PushKind::Disconnection | PushKind::SUnsubscribe => return None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_the_master_of_the_range_holding_the_slot() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7004),
            ]),
        ]);
        assert_eq!(owner(&slots, 0), Some(("10.0.0.1".to_owned(), 7000)));
        assert_eq!(owner(&slots, 14_059), Some(("10.0.0.2".to_owned(), 7001)));
        assert_eq!(owner(&slots, 16_384), None);
    }
}
