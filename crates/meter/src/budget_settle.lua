-- Replaces a reservation by the call's actual cost, in counter KEYS[1]:
-- ARGV[1] is actual minus reserved (micro-units, may be negative), ARGV[2]
-- the epoch of the counter the reservation was made in, ARGV[3] the actual
-- cost. In that counter, the difference is added. In a counter seeded
-- since (Redis lost the first), the reservation was never held, and the
-- ledger it was seeded from could not hold this call's cost yet (the call
-- reaches the ledger after it settles): the whole cost is added. A missing
-- counter is left missing, to be seeded from the ledger.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return 0
end
if epoch == ARGV[2] then
  return redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
end
return redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3])
