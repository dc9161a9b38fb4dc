//! Walking the keyspace (`SCAN`) and the tag sets (`SSCAN`) in bounded pages.

use std::future::Future;

use redis::aio::ConnectionLike;

use super::CLEAR_BATCH;

/// Walks a cursor (`SCAN`, `SSCAN`) page by page from cursor `from` (`0`:
/// the start) and unlinks each page's keys that `select` accepts: bounded
/// memory and one round trip pair per page, never the whole set at once.
/// `seen` gets every page after it is unlinked. Keys are bytes: the tier's
/// own keys are not UTF-8.
pub(super) async fn unlink_scanned<F, Fut>(
    connection: &mut impl ConnectionLike,
    from: u64,
    mut page: F,
    select: impl Fn(&[u8]) -> bool,
    mut seen: impl FnMut(&[Vec<u8>]),
) -> redis::RedisResult<()>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = redis::RedisResult<(u64, Vec<Vec<u8>>)>>,
{
    let mut cursor = from;
    loop {
        let (next, mut keys) = page(cursor).await?;
        keys.retain(|key| select(key));
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .exec_async(connection)
                .await?;
            seen(&keys);
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// One page of `SCAN cursor MATCH pattern COUNT <batch>`.
pub(super) fn scan_page(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut page = redis::cmd("SCAN");
    page.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(CLEAR_BATCH);
    page
}

/// One page of `SSCAN set cursor COUNT <batch>`.
pub(super) fn sscan_page(set: &[u8], cursor: u64) -> redis::Cmd {
    let mut page = redis::cmd("SSCAN");
    page.arg(set).arg(cursor).arg("COUNT").arg(CLEAR_BATCH);
    page
}

/// Escapes Redis glob metacharacters so a prefix matches only itself.
pub(crate) fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
