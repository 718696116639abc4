"""The Lua scripts behind a Redis level's coordination (see :mod:`.shared`).

Each script runs atomically on the server, which is what makes a compare-and-set of a
version, or a claim of several keys at once, safe between processes. The scripts are sent
with ``EVAL`` (the server caches them by digest; the body is a few hundred bytes).

Names: the value of a key lives under its storage name ``N``; its lease under ``N`` +
``"\\x00L"`` and its write lock under ``N`` + ``"\\x00W"``; the version counter of the
namespace under ``<namespace>:\\x00version``. A NUL never appears in a literal storage
name (names with control characters are hashed, see :mod:`stratacache.keys`), so no key
can collide with those, and all of them start with the namespace, so ``clear()`` removes
them with the values.

The version is read from the envelope itself, at its fixed offset (bytes 15 to 22,
little-endian, see :mod:`stratacache.serde`): a value that is not an envelope counts as
version -1, older than anything.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLAIM",
    "COUNTER",
    "FLOOR_SUFFIX",
    "LEASE_SUFFIX",
    "LOCK_SUFFIX",
    "PEEK",
    "RELEASE",
    "WRITE",
]

LEASE_SUFFIX: Final = "\x00L"
LOCK_SUFFIX: Final = "\x00W"
FLOOR_SUFFIX: Final = "\x00F"
COUNTER: Final = "\x00version"

#: A missing counter starts at the server's clock in microseconds, not at 0: after a
#: clear(), or a restart of a server that keeps nothing, new versions still come after
#: those a process saw, a journal kept or a flush mark holds.
_SEED = """
local function seed(counter)
  if redis.call('EXISTS', counter) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', counter, now[1] .. string.format('%06d', tonumber(now[2])))
  end
end
"""

_VERSION_OF = """
local function version_of(blob)
  if not blob or string.len(blob) < 22 or string.sub(blob, 1, 2) ~= 'SC' then
    return -1
  end
  local v = 0
  for i = 22, 15, -1 do v = v * 256 + string.byte(blob, i) end
  return v
end
"""

#: KEYS: value, lease, lock, floor, the namespace's counter. ARGV: envelope,
#: milliseconds to keep it (0: no expiry), version, mode ('write' or 'fill'), token ('' for
#: none), milliseconds a floor lasts. Returns 1 if stored, 0 if not.
#:
#: The floor: a write whose lock expired before it got here (its process stalled past
#: lock_ttl) cannot know whether another writer that went ahead reached the origin before
#: or after it. Neither value can be trusted, so the key is dropped, and a floor is set: a
#: fresh version from the counter below which no write or fill of the key is taken for a
#: while, so the other writer's value cannot land after the drop either. The next read
#: loads what the origin holds, under a lease numbered above the floor.
WRITE: Final = (
    _VERSION_OF
    + _SEED
    + """
local version = tonumber(ARGV[3])
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' then current = nil end  -- another type: overwrite it
local floor = tonumber(redis.call('GET', KEYS[4]) or '-1')
if ARGV[4] == 'fill' then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end       -- a write holds the key
  if ARGV[5] ~= '' then
    if redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end  -- the lease was lost
    redis.call('DEL', KEYS[2])
  end
  if floor > version then return 0 end
  if current and version_of(current) > version then return 0 end
else
  local mine = ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5]
  if ARGV[5] ~= '' and not mine then
    redis.call('DEL', KEYS[1], KEYS[2])
    seed(KEYS[5])
    local raised = redis.call('INCR', KEYS[5])
    redis.call('SET', KEYS[4], raised, 'PX', ARGV[6])
    return 0
  end
  if floor > version or (current and version_of(current) > version) then
    if mine then redis.call('DEL', KEYS[3]) end
    return 0
  end
  redis.call('DEL', KEYS[2])  -- a fill under an older lease would be older than this
  if mine then redis.call('DEL', KEYS[3]) end
end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""
)

#: KEYS: claim names..., then the counter. ARGV: token, milliseconds, kind, and for a
#: lease the lock name of each key, then its value's name: a key a write holds, or one
#: filled since the caller missed it, is not leased (it is reported held: the caller
#: reads it), unless the kind is 'lease-over' (the caller read it and could not use it).
#: Returns ``{version, held index, held pttl, held index, held pttl, ...}``.
CLAIM: Final = (
    _SEED
    + """
local n = #KEYS - 1
local counter = KEYS[#KEYS]
local kind = ARGV[3]
seed(counter)
if kind == 'version' then
  return {redis.call('INCRBY', counter, n)}
end
if kind == 'lock' then
  local held = {0}
  for i = 1, n do
    local left = redis.call('PTTL', KEYS[i])
    if left ~= -2 then table.insert(held, i); table.insert(held, left) end
  end
  if #held > 1 then return held end
  for i = 1, n do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
  return {redis.call('INCRBY', counter, n)}
end
local answer = {tonumber(redis.call('GET', counter) or '0')}
for i = 1, n do
  local left = redis.call('PTTL', ARGV[3 + i])
  if left == -2 and kind == 'lease' and redis.call('EXISTS', ARGV[3 + n + i]) == 1 then
    left = 0
  end
  if left ~= -2 or not redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    if left == -2 then left = redis.call('PTTL', KEYS[i]) end
    table.insert(answer, i); table.insert(answer, left)
  end
end
return answer
"""
)

#: KEYS: claim names. ARGV: token. Deletes each claim the token still holds.
RELEASE: Final = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
"""

#: KEYS: lease and lock names, in pairs. Returns the 1-based indexes of pairs held.
PEEK: Final = """
local held = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i], KEYS[i + 1]) > 0 then table.insert(held, (i + 1) / 2) end
end
return held
"""
