-- Reserves a model call's most cost against a tenant's hard cap,
-- atomically: one counter per tenant and month that every gateway replica
-- shares, holding what was settled and what is reserved.
--
-- KEYS[1]  the tenant's spend this period, micro-units
-- ARGV[1]  the reservation, micro-units
-- ARGV[2]  the hard cap, micro-units
-- ARGV[3]  the counter's time to live, seconds (past the period's end)
-- ARGV[4]  the spend the durable ledger holds, or '' when not read yet
--
-- Returns {1, spend with the reservation} when reserved, {0, spend} when
-- the reservation would pass the cap, {-1, 0} when the counter is missing
-- (a first call, or Redis lost it) and the ledger's spend is needed.
-- Micro-units stay exact in Lua's doubles below 2^53.
local spent = redis.call('GET', KEYS[1])
if not spent then
  if ARGV[4] == '' then
    return {-1, 0}
  end
  spent = ARGV[4]
  redis.call('SET', KEYS[1], spent, 'EX', ARGV[3])
end
spent = tonumber(spent)
local amount = tonumber(ARGV[1])
if spent + amount > tonumber(ARGV[2]) then
  return {0, spent}
end
return {1, redis.call('INCRBY', KEYS[1], amount)}
