-- GCRA on one key, atomically: the same algorithm as gcra.rs, for a limit
-- shared by every gateway replica.
--
-- KEYS[1]  the key's theoretical arrival time (TAT), in microseconds of the
--          Redis server's clock: TIME, not the caller's, so replicas whose
--          clocks disagree still share one bucket.
-- ARGV[1]  the emission interval, microseconds
-- ARGV[2]  the tolerance, microseconds: interval * (burst - 1)
--
-- Returns {allowed (1 or 0), remaining, reset, retry_after}, times in
-- microseconds. Microseconds keep every number exact in Lua's doubles.
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
-- A missing key is a full bucket, exactly as a TAT in the past.
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local ahead = tat - now
if ahead > tolerance then
  return {0, 0, ahead, ahead - tolerance}
end
local reset = ahead + interval
-- The key expires when the bucket is full again, when it stops mattering.
redis.call('SET', KEYS[1], string.format('%d', now + reset), 'PX', math.ceil(reset / 1000))
return {1, math.floor((tolerance - ahead) / interval), reset, 0}
