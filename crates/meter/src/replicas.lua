-- One gateway replica's heartbeat, and the number of live replicas.
--
-- KEYS[1]  sorted set of replica ids scored by their last heartbeat, in
--          milliseconds of the Redis server's clock
-- ARGV[1]  this replica's id
-- ARGV[2]  how long a heartbeat counts, milliseconds
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%d', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
