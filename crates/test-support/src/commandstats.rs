//! What Redis itself counts: calls per command (`INFO commandstats`), for
//! tests that assert how many round trips an operation costs.

use std::collections::BTreeMap;

/// Calls per command since the last reset, then a reset (`CONFIG
/// RESETSTAT`), so that consecutive calls count what happened in between.
/// `INFO` and `CONFIG` (these calls' own) are left out. Subcommands are
/// named as Redis names them (`cluster|nodes`).
///
/// # Errors
///
/// When Redis fails either command.
pub async fn command_calls(
    connection: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec_async(connection)
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            let own = name.starts_with("info") || name.starts_with("config");
            (!own).then(|| (name.to_owned(), calls))
        })
        .collect())
}
