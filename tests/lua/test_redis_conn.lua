-- rtcadmin.redis (a hiredis connection for plain Lua) against a real redis-server, and
-- rtcadmin.shard: the same shard for a room on every Lua (this suite runs on each of them).
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local PASSWORD = "Conn-Test-Pw+/="
local redis = T.redis(PASSWORD)
local function enc(s) return (s:gsub("[+/=]", function(c) return string.format("%%%02X", c:byte()) end)) end
local URL = "redis://:" .. enc(PASSWORD) .. "@127.0.0.1:" .. redis.port

local function connect(db, opts) return assert(rtcadmin.redis(URL .. (db and ("/" .. db) or ""), opts)) end

T.case("replies: strings, integers, nil, arrays, status", function()
  local c = connect(1)
  T.eq(c:call("FLUSHDB"), "OK")
  T.eq(c:call("SET", "k", "v\0w"), "OK", "binary-safe argument")
  T.eq(c:call("GET", "k"), "v\0w")
  T.eq(c:call("INCRBY", "n", 41), 41, "number argument")
  T.eq(c:call("INCR", "n"), 42)
  local n = c:call("INCR", "n")
  T.eq(n, 43)
  if math.type then T.eq(math.type(n), "integer") end
  T.eq(c:call("GET", "missing"), nil)
  T.eq(select("#", c:call("GET", "missing")), 1, "a nil reply is one nil, no error")
  T.eq(c:call("RPUSH", "l", "a", "b", 3.5), 3)
  T.same(c:call("LRANGE", "l", 0, -1), { "a", "b", "3.5" })
  T.same(c:call("MGET", "k", "missing", "n"), { "v\0w", false, "43" }, "nil inside an array is false")
  T.same(c:call("LRANGE", "missing", 0, -1), {})
  T.eq(c:where(), "127.0.0.1:" .. redis.port .. "/1")
  T.no_match(tostring(c), PASSWORD)
  c:close()
end)

T.case("an error reply: nil, err table; the connection stays usable", function()
  local c = connect(1)
  c:call("SET", "str", "x")
  local v, err = c:call("LPUSH", "str", "y")
  T.eq(v, nil)
  T.eq(err.code, "WRONGTYPE")
  T.eq(err.action, "LPUSH")
  T.eq(err.retryable, false)
  T.match(err.message, "WRONGTYPE Operation against a key")
  T.match(tostring(err), "^LPUSH failed: WRONGTYPE: Redis at 127%.0%.0%.1:%d+/1: ")
  v, err = c:call("nosuchcommand", "a")
  T.eq(v, nil)
  T.eq(err.code, "ERR")
  T.eq(err.action, "NOSUCHCOMMAND")
  T.eq(c:call("GET", "str"), "x", "still connected")
  c:close()
end)

T.case("pipeline: replies in order, nil as false, error replies in place", function()
  local c = connect(2)
  c:call("FLUSHDB")
  local out = assert(c:pipeline {
    { "SET", "a", 1 }, { "GET", "nope" }, { "LPUSH", "a", "x" }, { "INCR", "a" }, { "MGET", "a", "nope" },
  })
  T.eq(#out, 5)
  T.eq(out[1], "OK")
  T.eq(out[2], false)
  T.eq(out[3].code, "WRONGTYPE")
  T.eq(getmetatable(out[3]) ~= nil, true, "an error table")
  T.eq(out[4], 2)
  T.same(out[5], { "2", false })
  T.same(c:pipeline {}, {})
  -- A large pipeline: 5 000 commands written at once.
  local cmds = {}
  for i = 1, 5000 do cmds[i] = { "RPUSH", "big", i } end
  out = assert(c:pipeline(cmds))
  T.eq(#out, 5000)
  T.eq(out[5000], 5000)
  T.eq(c:call("LLEN", "big"), 5000)
  c:close()
end)

T.case("configuration errors: wrong password, db, host are clear and never quote the password", function()
  local c, err = rtcadmin.redis("redis://:wrong-" .. enc(PASSWORD) .. "@127.0.0.1:" .. redis.port)
  T.eq(c, nil)
  T.eq(err.code, "RedisRefused")
  T.eq(err.retryable, false)
  T.match(tostring(err), "AUTH refused: WRONGPASS")
  T.no_match(tostring(err), PASSWORD)
  c, err = rtcadmin.redis(URL .. "/99")
  T.eq(c, nil)
  T.eq(err.code, "RedisRefused")
  T.match(err.message, "SELECT refused: ERR DB index is out of range")
  c, err = rtcadmin.redis("redis://127.0.0.1:" .. redis.port)
  T.eq(c, nil, "no password: PING is refused")
  T.match(err.message, "NOAUTH")
  c, err = rtcadmin.redis("redis://:" .. enc(PASSWORD) .. "@127.0.0.1:" .. T.free_port(), { timeout = 0.5 })
  T.eq(c, nil)
  T.eq(err.code, "ConnectionFailed")
  T.eq(err.retryable, true)
  T.match(err.message, "cannot connect")
  T.no_match(tostring(err), PASSWORD)
end)

T.case("programming errors raise before any traffic", function()
  T.raises("url must be a string", rtcadmin.redis, nil)
  T.raises("url must start with redis://", rtcadmin.redis, "http://127.0.0.1")
  T.raises("port must be 1%-65535", rtcadmin.redis, "redis://127.0.0.1:0")
  T.raises("timeout must be", rtcadmin.redis, URL, { timeout = 0 })
  T.raises("unknown option", rtcadmin.redis, URL, { timout = 1 })
  local ok, err = pcall(rtcadmin.redis, "redis://user:" .. PASSWORD .. "@127.0.0.1:0")
  T.eq(ok, false)
  T.no_match(err, PASSWORD)
  local c = connect()
  T.raises("expects a command", c.call, c)
  T.raises("argument 2 of the command must be a string or a number, got table", c.call, c, "GET", {})
  T.raises("command 2 must be a non%-empty list", c.pipeline, c, { { "PING" }, {} })
  T.raises("expects a list of commands", c.pipeline, c, "PING")
  T.raises("expects a connection", c.call, {}, "PING")
  c:close()
end)

T.case("close is idempotent, and __gc and __close do the same", function()
  local c = connect()
  T.eq(c:call("PING"), "PONG")
  c:close()
  c:close()
  T.eq(tostring(c), "rtcadmin.redis(closed)")
  T.raises("the connection is closed", c.call, c, "PING")
  T.raises("the connection is closed", c.pipeline, c, { { "PING" } })
  local before = tonumber(redis.cli("INFO clients"):match("connected_clients:(%d+)"))
  for _ = 1, 20 do connect() end
  collectgarbage()
  collectgarbage()
  local after = tonumber(redis.cli("INFO clients"):match("connected_clients:(%d+)"))
  T.ok(after <= before, "collected connections are closed (" .. before .. " -> " .. after .. ")")
  if _VERSION == "Lua 5.4" then
    local f = assert(load([[
      local rtcadmin, url = ...
      local kept
      do
        local c <close> = assert(rtcadmin.redis(url))
        kept = c
      end
      return tostring(kept)
    ]]))
    T.eq(f(rtcadmin, URL), "rtcadmin.redis(closed)")
  end
end)

T.case("Redis gone: ConnectionFailed; back: the next call connects again", function()
  local c = connect(3, { timeout = 1 })
  T.eq(c:call("SET", "a", "1"), "OK")
  redis.kill()
  local v, err = c:call("GET", "a")
  T.eq(v, nil)
  T.eq(err.code, "ConnectionFailed")
  T.eq(err.retryable, true)
  v, err = c:pipeline { { "PING" } }
  T.eq(v, nil)
  T.eq(err.code, "ConnectionFailed")
  redis.start()
  T.eq(c:call("PING"), "PONG")
  T.eq(c:call("GET", "a"), nil, "a new, empty Redis")
  c:close()
end)

T.case("shard: FNV-1a 32-bit of app, NUL, room, mod n - the same on every Lua", function()
  -- Reference values computed outside this module (Python, the FNV-1a definition).
  T.eq(rtcadmin.shard("app", "room1", 16), 10)
  T.eq(rtcadmin.shard("app", "room2", 16), 7)
  T.eq(rtcadmin.shard("app1", "r", 16), 5)
  T.eq(rtcadmin.shard("a", "", 1), 0)
  T.eq(rtcadmin.shard("myapp", "room-42", 16), 6)
  T.eq(rtcadmin.shard("myapp", "room-42", 7), 0)
  T.eq(rtcadmin.shard(string.rep("x", 100), string.rep("y", 128), 65536), 62415)
  T.eq(rtcadmin.shard("app\195\169", "r", 16), 2)
  local hit = {}
  for i = 1, 400 do hit[rtcadmin.shard("app", "room" .. i, 16)] = true end
  for s = 0, 15 do T.ok(hit[s], "400 rooms reach shard " .. s) end
  T.raises("n must be a whole number from 1 to 65536", rtcadmin.shard, "a", "b", 0)
  T.raises("n must be a whole number from 1 to 65536", rtcadmin.shard, "a", "b", 1.5)
  T.raises("app_id and room_id must be strings", rtcadmin.shard, "a", 1, 16)
end)

T.run(function() redis.stop() end)
