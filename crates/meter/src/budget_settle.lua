-- Replaces a reservation by the call's actual cost: adds ARGV[1] (actual
-- minus reserved, micro-units, may be negative) to the `spent` of counter
-- KEYS[1], if the counter is still the one the reservation was made in
-- (its `epoch` is ARGV[2]). A counter Redis lost and seeded again from the
-- durable ledger is left alone: the ledger holds this call's cost, or will.
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  return redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
end
return 0
