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
