//! Following a slot that moves (feature `cluster`).
//!
//! While Redis Cluster moves a slot, its old owner answers a command on a
//! key it no longer holds with `ASK <slot> <host:port>`, and the new owner
//! serves that key only for a command that comes right after `ASKING` on the
//! same connection. Once the slot has moved, the old owner answers `MOVED`.
//! redis-rs's cluster connection (1.8) follows both for a lone command, but
//! sends `ASKING` as a request of its own on the node's shared, multiplexed
//! connection: another task's command sent in between takes the `ASKING`,
//! the new owner answers `MOVED` back to the old one, and the command fails
//! with `ASK` once its retries are spent (every command failed that way with
//! eight tasks sharing the connection). A pipeline or a transaction it
//! retries as a unit with the first redirection it finds (its stated
//! design: a pipeline is routed and rerouted whole), with the same `ASKING`.
//!
//! So [`LazyCluster`] follows what redis-rs gave up on: a command, or a
//! pipeline as a unit, redirected with `ASK` goes again to the new owner in
//! one pipeline with `ASKING` right before each command (a transaction: one
//! `ASKING` before its `MULTI`), written in one piece so that nothing comes
//! in between; a `MOVED` first has redis-rs look the key up (`EXISTS`),
//! which makes it follow and refresh its slot map, so later requests go
//! straight to the new owner. Every command the crates send is safe to send
//! again (the contract of [`run_once_more`](crate::run_once_more)), and a
//! redirected command has not run.
//!
//! A pipeline moves as a unit: while its slot moves, a pipeline on two keys
//! of the slot may be sent where only one of them is, and read the other as
//! missing. Read several keys with one command (`MGET`) or a script:
//! Redis then answers `TRYAGAIN` while they are split, and the command
//! fails rather than read wrong.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisResult, ServerErrorKind, Value};

use crate::cluster::LazyCluster;

/// How many times one request follows a redirection before its error is
/// returned (a slot moved twice during one request needs two).
const REDIRECTIONS: usize = 4;

/// Where a reply sends its command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Redirect {
    /// The slot is moving there: send the command behind `ASKING`.
    Ask(Address),
    /// The slot lives there now.
    Moved(Address),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    host: String,
    port: u16,
}

impl Redirect {
    /// From a reply's `ASK`/`MOVED` error: its kind and `<slot> <host:port>`.
    fn parse(kind: Option<ServerErrorKind>, details: Option<&str>) -> Option<Self> {
        let address = details?.split_ascii_whitespace().nth(1)?;
        let (host, port) = address.rsplit_once(':')?;
        let address = Address {
            host: host.to_owned(),
            port: port.parse().ok()?,
        };
        match kind? {
            ServerErrorKind::Ask => Some(Self::Ask(address)),
            ServerErrorKind::Moved => Some(Self::Moved(address)),
            _ => None,
        }
    }

    /// From a command's error, or a transaction's that a redirection of
    /// one of its commands aborted.
    fn of_error(error: &RedisError) -> Option<Self> {
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::ExecAbort) => error
                .clone()
                .into_server_errors()?
                .iter()
                .find_map(|(_, error)| Self::parse(error.kind(), error.details())),
            ErrorKind::Server(kind) => Self::parse(Some(kind), error.detail()),
            _ => None,
        }
    }

    fn address(&self) -> &Address {
        match self {
            Self::Ask(address) | Self::Moved(address) => address,
        }
    }

    fn route(&self) -> SingleNodeRoutingInfo {
        let Address { host, port } = self.address();
        SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        }
    }
}

/// The command's name, upper case.
fn name(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => name.to_ascii_uppercase(),
        _ => Vec::new(),
    }
}

/// A command with no key that acts on what the connection wrote before it
/// (`WAIT`, `WAITAOF`): sent again behind a redirected write, to where the
/// write went.
fn follows_the_writes(cmd: &Cmd) -> bool {
    matches!(name(cmd).as_slice(), b"WAIT" | b"WAITAOF")
}

/// The first key of `cmd`: its first argument, or for scripts and functions
/// (`EVAL`, `EVALSHA`, `FCALL`, and their `_RO` forms) the first after the
/// key count.
fn first_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let name = name(cmd);
    let scripted = name.starts_with(b"EVAL") || name.starts_with(b"FCALL");
    let mut args = cmd.args_iter().skip(1);
    if scripted {
        let keys = match args.nth(1)? {
            redis::Arg::Simple(count) => std::str::from_utf8(count).ok()?.parse::<u64>().ok()?,
            _ => return None,
        };
        if keys == 0 {
            return None;
        }
    }
    match args.next()? {
        redis::Arg::Simple(key) => Some(key.to_vec()),
        _ => None,
    }
}

/// Has redis-rs look `key` up by slot: a `MOVED` reply makes it follow and
/// refresh its slot map. Its outcome does not matter.
async fn refresh_slots(connection: &mut ClusterConnection, key: Option<Vec<u8>>) {
    if let Some(key) = key {
        let _ = redis::cmd("EXISTS")
            .arg(key)
            .query_async::<Value>(connection)
            .await;
    }
}

/// `cmd` on the node `redirect` names, behind `ASKING` for `ASK`, in one
/// pipeline.
async fn redirected_command(
    connection: &mut ClusterConnection,
    redirect: &Redirect,
    cmd: &Cmd,
) -> RedisResult<Value> {
    let mut pipeline = redis::pipe();
    let asking = matches!(redirect, Redirect::Ask(_));
    if asking {
        pipeline.cmd("ASKING");
    }
    pipeline.add_command(cmd.clone());
    let offset = usize::from(asking);
    let mut replies = connection
        .route_pipeline(pipeline, offset, 1, redirect.route())
        .await?;
    let reply = replies.pop().unwrap_or(Value::Nil);
    match reply {
        Value::ServerError(error) => Err(error.into()),
        reply => Ok(reply),
    }
}

/// `pipeline` again, whole, on the node `redirect` names: each command
/// behind `ASKING` for `ASK` (a transaction behind one, before its `MULTI`);
/// its replies from `offset`, `count` of them, as the caller asked of the
/// original.
async fn redirected_pipeline(
    connection: &mut ClusterConnection,
    redirect: &Redirect,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let asking = matches!(redirect, Redirect::Ask(_));
    let mut again = redis::pipe();
    if pipeline.is_transaction() {
        // [ASKING] MULTI c1 … cn EXEC: the caller asked for EXEC's reply.
        if asking {
            again.cmd("ASKING");
        }
        again.cmd("MULTI");
        for cmd in pipeline.cmd_iter() {
            again.add_command(cmd.clone());
        }
        again.cmd("EXEC");
        let skipped = again.len() - 1;
        return connection
            .route_pipeline(again, skipped, 1, redirect.route())
            .await;
    }
    let mut positions = Vec::new();
    for cmd in pipeline.cmd_iter() {
        if asking && !follows_the_writes(cmd) {
            again.cmd("ASKING");
        }
        positions.push(again.len());
        again.add_command(cmd.clone());
    }
    let total = again.len();
    let mut replies = connection
        .route_pipeline(again, 0, total, redirect.route())
        .await?;
    positions
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|at| match replies.get_mut(at) {
            Some(reply) => Ok(std::mem::replace(reply, Value::Nil)),
            None => Err(RedisError::from((
                ErrorKind::Parse,
                "a redirected pipeline came back short",
            ))),
        })
        .collect()
}

impl LazyCluster {
    /// `cmd`, routed by redis-rs, then sent again where an `ASK` or `MOVED`
    /// it could not follow says.
    pub(crate) async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (mut connection, generation) = self.connection().await?;
        let mut outcome = connection.req_packed_command(cmd).await;
        for _ in 0..REDIRECTIONS {
            let Some(redirect) = outcome.as_ref().err().and_then(Redirect::of_error) else {
                break;
            };
            if let Redirect::Moved(_) = redirect {
                refresh_slots(&mut connection, first_key(cmd)).await;
            }
            outcome = redirected_command(&mut connection, &redirect, cmd).await;
        }
        if let Err(error) = &outcome {
            self.forget_if_gone(generation, error);
        }
        outcome
    }

    /// `pipeline`, routed by redis-rs, then sent again, whole, where an
    /// `ASK` or `MOVED` it could not follow says.
    pub(crate) async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (mut connection, generation) = self.connection().await?;
        let mut outcome = connection
            .req_packed_commands(pipeline, offset, count)
            .await;
        for _ in 0..REDIRECTIONS {
            let Some(redirect) = outcome.as_ref().err().and_then(Redirect::of_error) else {
                break;
            };
            if let Redirect::Moved(_) = redirect {
                let key = pipeline.cmd_iter().find_map(first_key);
                refresh_slots(&mut connection, key).await;
            }
            outcome =
                redirected_pipeline(&mut connection, &redirect, pipeline, offset, count).await;
        }
        if let Err(error) = &outcome {
            self.forget_if_gone(generation, error);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_name_their_node() {
        let ask = Redirect::parse(Some(ServerErrorKind::Ask), Some("3999 127.0.0.1:6381"));
        assert_eq!(
            ask,
            Some(Redirect::Ask(Address {
                host: "127.0.0.1".to_owned(),
                port: 6381
            }))
        );
        let moved = Redirect::parse(Some(ServerErrorKind::Moved), Some("1 ::1:7000"));
        assert_eq!(
            moved.map(|m| m.address().clone()),
            Some(Address {
                host: "::1".to_owned(),
                port: 7000
            })
        );
        assert_eq!(
            Redirect::parse(Some(ServerErrorKind::TryAgain), Some("1 h:1")),
            None
        );
        assert_eq!(Redirect::parse(Some(ServerErrorKind::Ask), Some("1")), None);
        assert_eq!(Redirect::parse(None, Some("1 h:1")), None);
    }

    #[test]
    fn the_first_key_of_a_command_or_a_script() {
        let mut get = redis::cmd("get");
        get.arg("k");
        assert_eq!(first_key(&get), Some(b"k".to_vec()));
        let mut script = redis::cmd("EVALSHA");
        script.arg("abc").arg(2).arg("k1").arg("k2").arg("v");
        assert_eq!(first_key(&script), Some(b"k1".to_vec()));
        let mut keyless = redis::cmd("EVAL");
        keyless.arg("return 1").arg(0);
        assert_eq!(first_key(&keyless), None);
        assert_eq!(first_key(&redis::cmd("PING")), None);
        let mut wait = redis::cmd("wait");
        wait.arg(1).arg(100);
        assert!(follows_the_writes(&wait) && !follows_the_writes(&get));
    }
}
