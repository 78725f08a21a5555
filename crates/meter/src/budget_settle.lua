-- Replaces a reservation by the call's actual cost: adds ARGV[1] (actual
-- minus reserved, micro-units, may be negative) to the counter KEYS[1].
-- A counter Redis lost is left missing: the next reservation seeds it from
-- the durable ledger, which this call's cost reaches on its own.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return 0
