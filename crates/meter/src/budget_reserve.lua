-- Reserves a model call's most cost against a tenant's hard cap,
-- atomically: one counter per tenant and month that every gateway replica
-- shares, holding what was settled and what is reserved.
--
-- KEYS[1]  the tenant's counter this period, a hash: `spent` (micro-units)
--          and `epoch` (which seeding made it)
-- ARGV[1]  the reservation, micro-units
-- ARGV[2]  the hard cap, micro-units
-- ARGV[3]  the counter's time to live, seconds (past the period's end)
-- ARGV[4]  the spend the durable ledger holds, or '' when not read yet
-- ARGV[5]  the epoch of a counter seeded now
--
-- Returns {1, spend with the reservation, epoch} when reserved, {0, spend,
-- epoch} when the reservation would pass the cap, {-1, 0, ''} when the
-- counter is missing (a first call, or Redis lost it) and the ledger's
-- spend is needed. Micro-units stay exact in Lua's doubles below 2^53.
local spent = redis.call('HGET', KEYS[1], 'spent')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not spent then
  if ARGV[4] == '' then
    return {-1, 0, ''}
  end
  spent = ARGV[4]
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'spent', spent, 'epoch', epoch)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
spent = tonumber(spent)
local amount = tonumber(ARGV[1])
-- A counter without an epoch (written by hand) settles nothing into it.
epoch = epoch or ''
if spent + amount > tonumber(ARGV[2]) then
  return {0, spent, epoch}
end
return {1, redis.call('HINCRBY', KEYS[1], 'spent', amount), epoch}
