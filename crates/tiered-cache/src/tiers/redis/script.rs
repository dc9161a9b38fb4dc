//! The conditional fill, one Lua script.

/// The conditional fill: writes only if the key and the epoch are as the
/// lookup saw them, tags indexed before the value is visible.
///
/// `KEYS`: the key, the epoch, then tag sets. `ARGV`: key seen (`1`/`0`),
/// its bytes, epoch seen (`1`/`0`), its value, the new bytes, TTL in ms or `""`.
pub(super) static FILL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
local epoch = redis.call('GET', KEYS[2])
if ARGV[3] == '1' then
  if epoch ~= ARGV[4] then return 0 end
elseif epoch then
  return 0
end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if ARGV[6] == '' then
    redis.call('PERSIST', KEYS[i])
  else
    redis.call('PEXPIRE', KEYS[i], ARGV[6], 'NX')
    redis.call('PEXPIRE', KEYS[i], ARGV[6], 'GT')
  end
end
if ARGV[6] == '' then
  redis.call('SET', KEYS[1], ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
end
return 1
",
    )
});

/// The start of a tag invalidation in one bucket: moves the bucket's epoch
/// (so that no fill which looked before lands after), then removes the
/// keys on the first page of the bucket's share of the tag, and the share
/// itself when that page was the last. Returns `SSCAN`'s reply: the cursor
/// to go on from (`"0"` when done) and the keys removed.
///
/// `KEYS`: the epoch, the tag set. `ARGV`: the epoch's TTL in ms, the page size.
pub(super) static DELETE_TAG: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local page = redis.call('SSCAN', KEYS[2], '0', 'COUNT', ARGV[2])
local keys = page[2]
for i = 1, #keys, 500 do
  redis.call('UNLINK', unpack(keys, i, math.min(i + 499, #keys)))
end
if page[1] == '0' then
  redis.call('UNLINK', KEYS[2])
end
return page
",
    )
});
