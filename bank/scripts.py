"""The bank's mutations as Lua scripts: each runs atomically in Redis, so a write or delete happens
completely or not at all (key layout in ``bank.store``)."""

# ARGV: prefix, set name ('' for none), then (id, blob, source) triples in the order they join the set;
# source is the image the demonstration was made from, kept beside it when asked ('' otherwise). An empty
# blob (no stored blob is empty) means "already stored": those ids are checked before anything is
# written, and if any is missing the script writes nothing and returns them. Existing blobs are never
# overwritten (SET NX), so a known id costs no tensor bytes either way.
PUT = """
local prefix, set = ARGV[1], ARGV[2]
local missing, created = {}, {}
for i = 3, #ARGV, 3 do
  if ARGV[i + 1] == '' and redis.call('EXISTS', prefix .. 'demo:' .. ARGV[i]) == 0 then
    missing[#missing + 1] = ARGV[i]
  end
end
if #missing > 0 then return {missing, created} end
local changed = false
for i = 3, #ARGV, 3 do
  local id, blob, source = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  created[#created + 1] = blob ~= '' and redis.call('SET', prefix .. 'demo:' .. id, blob, 'NX') and 1 or 0
  if created[#created] == 1 and source ~= '' then redis.call('SET', prefix .. 'source:' .. id, source) end
  if set ~= '' then
    if redis.call('SADD', prefix .. 'set-members:' .. set, id) == 1 then
      redis.call('RPUSH', prefix .. 'set:' .. set, id)
      changed = true
    end
    redis.call('SADD', prefix .. 'demo-sets:' .. id, set)
  end
end
if set ~= '' and #created > 0 then redis.call('SADD', prefix .. 'sets', set) end
if changed then redis.call('INCR', prefix .. 'sets-version') end
return {missing, created}
"""

DELETE_DEMO = """
local prefix, id = ARGV[1], ARGV[2]
local existed = redis.call('DEL', prefix .. 'demo:' .. id)
local sets = redis.call('SMEMBERS', prefix .. 'demo-sets:' .. id)
if #sets > 0 then redis.call('INCR', prefix .. 'sets-version') end
for _, s in ipairs(sets) do
  redis.call('LREM', prefix .. 'set:' .. s, 0, id)
  redis.call('SREM', prefix .. 'set-members:' .. s, id)
  if redis.call('LLEN', prefix .. 'set:' .. s) == 0 then redis.call('SREM', prefix .. 'sets', s) end
end
redis.call('DEL', prefix .. 'demo-sets:' .. id, prefix .. 'source:' .. id)
return existed
"""

DELETE_SET = """
local prefix, s = ARGV[1], ARGV[2]
for _, id in ipairs(redis.call('LRANGE', prefix .. 'set:' .. s, 0, -1)) do
  redis.call('SREM', prefix .. 'demo-sets:' .. id, s)
end
redis.call('DEL', prefix .. 'set-members:' .. s)
redis.call('SREM', prefix .. 'sets', s)
local existed = redis.call('DEL', prefix .. 'set:' .. s)
if existed == 1 then redis.call('INCR', prefix .. 'sets-version') end
return existed
"""
