-- Programming errors raise before any traffic: each row calls the module with bad input and names
-- the exact message; afterwards the emulator must have seen no request at all.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local emu = T.emulator()
local c = T.client(emu)
local default = rtcadmin.config { access_key = T.AK, secret_key = T.SK, endpoint = emu.url }

local A, R, U = T.APP, "room1", "alice"
local SECRETS = { T.SK, T.SK2, T.STS_SK, T.STS_TOKEN, "Tm90QVNlY3JldFRvU2hvdw==" }

-- A plain message fragment as a Lua pattern.
local function P(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end
local function bad(fname, arg, rule) return P("rtcadmin." .. fname .. ": bad argument '" .. arg .. "': " .. rule) end

local ID_RULE = "expected 1-128 characters of A-Z a-z 0-9 @ . _ -, got "
local APP_RULE = "expected 1-128 printable ASCII characters without spaces, got "
local LONG = ("x"):rep(129)
local LONG_SHOWN = '"' .. ("x"):rep(40) .. '"...'

-- {value, how the message shows it} for room_id / user_id and for app_id.
local BAD_IDS = {
  { "", '""' }, { LONG, LONG_SHOWN }, { "a b", '"a b"' }, { "a/b", '"a/b"' }, { "a#b", '"a#b"' },
  { "caf\195\169", '"caf\\xC3\\xA9"' }, { "a\0b", '"a\\x00b"' }, { "a\r\nb", '"a\\x0D\\x0Ab"' },
}
local BAD_APPS = {
  { "", '""' }, { LONG, LONG_SHOWN }, { "app id", '"app id"' }, { "app\1", '"app\\x01"' },
  { "app\0", '"app\\x00"' }, { "\195\169", '"\\xC3\\xA9"' },
}
local WRONG_TYPES = { { 42, "number" }, { true, "boolean" }, { {}, "table" }, { print, "function" } }

local rows = {}
local function row(name, fn, pattern) rows[#rows + 1] = { name, fn, pattern } end

-- ---------------------------------------------------------------- IDs, for every method

local POSITIONAL = { { "kick_user", { "app_id", "room_id", "user_id" } }, { "online_users", { "app_id", "room_id" } } }
local ALL = { app_id = true, room_id = true, user_id = true }
local TABLED = { -- method, valid fields, required IDs
  { "ban_user", { app_id = A, room_id = R, user_id = U, duration = 60 }, { app_id = true } },
  { "unban_user", { app_id = A, room_id = R, user_id = U }, { app_id = true } },
  { "update_ban", { app_id = A, room_id = R, user_id = U, duration = 60 }, { app_id = true } },
  { "mute_user", { app_id = A, room_id = R, user_id = U }, ALL },
  { "unmute_user", { app_id = A, room_id = R, user_id = U }, ALL },
}

local function id_rows(fname, arg, call, required)
  local values = arg == "app_id" and BAD_APPS or BAD_IDS
  local rule = arg == "app_id" and APP_RULE or ID_RULE
  local name = fname .. " " .. arg .. " "
  if required then row(name .. "nil", function() call(nil) end, bad(fname, arg, "required, got nil")) end
  for _, w in ipairs(WRONG_TYPES) do
    row(name .. w[2], function() call(w[1]) end, bad(fname, arg, "expected a string, got " .. w[2]))
  end
  for _, v in ipairs(values) do
    row(name .. v[2], function() call(v[1]) end, bad(fname, arg, rule .. v[2]))
  end
end

for _, m in ipairs(POSITIONAL) do
  local fname, args = m[1], m[2]
  for i, arg in ipairs(args) do
    id_rows(fname, arg, function(value)
      local a = { A, R, U }
      a[i] = value
      c[fname](c, T.unpack(a, 1, #args))
    end, true)
  end
end

for _, m in ipairs(TABLED) do
  local fname, good, required = m[1], m[2], m[3]
  for _, arg in ipairs { "app_id", "room_id", "user_id" } do
    id_rows(fname, arg, function(value)
      local t = {}
      for k, v in pairs(good) do t[k] = v end
      t[arg] = value
      c[fname](c, t)
    end, required[arg])
  end
  row(fname .. " with a string", function() c[fname](c, "x") end,
    P("rtcadmin." .. fname .. ": expects a table {app_id"))
  row(fname .. " without an argument", function() c[fname](c) end, P("rtcadmin." .. fname .. ": expects a table {"))
end

row("module-level kick_user: bad user_id", function() rtcadmin.kick_user(A, R, "bad id!") end,
  bad("kick_user", "user_id", ID_RULE .. '"bad id!"'))
row("module-level ban_user: typo", function() rtcadmin.ban_user { app_id = A, user_id = U, duraton = 60 } end,
  P('rtcadmin.ban_user: unknown field "duraton"'))

-- ---------------------------------------------------------------- durations

local function with_duration(fname, d)
  return function() c[fname](c, { app_id = A, room_id = R, user_id = U, duration = d }) end
end

local WHOLE = "expected whole seconds, got "
-- Each duration row: {value, label, message after "bad argument 'duration': ", pattern suffix}; the
-- message defaults to the range rule with the value.
local DURATIONS = {
  { "ban_user", "update_ban", min = 10, max = 604800, rows = {
    { nil, "missing", "required (seconds; 0 = no lasting ban)" },
    { -1 }, { 5 }, { 9 }, { 604801 }, { 2 ^ 53, "2^53" }, { -2 ^ 53, "-2^53" },
    { 1.5, "1.5", WHOLE .. "1.5" }, { "600", "'600'", WHOLE .. "string" }, { true, "true", WHOLE .. "boolean" },
    { 0 / 0, "NaN", WHOLE, "%-?nan" }, { math.huge, "inf", WHOLE .. "inf" } } },
  { "mute_user", min = 60, max = 259200, rows = {
    { 30 }, { 259201 }, { -60 }, { 1 }, { 90.5, "90.5", WHOLE .. "90.5" }, { "120", "'120'", WHOLE .. "string" },
    { 0 / 0, "NaN", WHOLE, "%-?nan" }, { -math.huge, "-inf", WHOLE .. "-inf" } } },
}
for _, group in ipairs(DURATIONS) do
  local range = ("must be 0 or between %d and %d seconds, got "):format(group.min, group.max)
  for _, fname in ipairs(group) do
    for _, d in ipairs(group.rows) do
      local value = d[1]
      local message = d[3] or range .. ("%d"):format(value)
      row(fname .. " duration " .. (d[2] or tostring(value)), with_duration(fname, value),
        bad(fname, "duration", message) .. (d[4] or ""))
    end
  end
end

-- ---------------------------------------------------------------- scopes, fields, flags

local function method_row(name, fname, arg, message)
  row(name, function() c[fname](c, arg) end, P("rtcadmin." .. fname .. ": " .. message))
end
method_row("ban_user without a scope", "ban_user", { app_id = A, duration = 60 },
  "give at least one of room_id, user_id, ip (the ban's scope)")
for _, ip in ipairs { { "999.1.1.1", '"999.1.1.1"' }, { "not-an-ip", '"not-an-ip"' }, { "1.2.3.4/24", '"1.2.3.4/24"' },
  { "1.2.3.4\r\n", '"1.2.3.4\\x0D\\x0A"' }, { "1.2.3.4\0", '"1.2.3.4\\x00"' }, { "", '""' } } do
  method_row("ban_user ip " .. ip[2], "ban_user", { app_id = A, ip = ip[1], duration = 60 },
    "bad argument 'ip': expected an IPv4 or IPv6 address, got " .. ip[2])
end
method_row("ban_user ip number", "ban_user", { app_id = A, ip = 16909060, duration = 60 },
  "bad argument 'ip': expected a string, got number")
method_row("ban_user typo duraton", "ban_user", { app_id = A, user_id = U, duraton = 60 },
  'unknown field "duraton" (expected app_id, room_id, user_id, ip, duration)')
method_row("ban_user camel-case AppId", "ban_user", { AppId = A, user_id = U, duration = 60 }, 'unknown field "AppId"')
method_row("ban_user positional array", "ban_user", { A, R, U, 60 }, "unknown field ")
method_row("unban_user without a scope", "unban_user", { app_id = A },
  "give room_id, user_id or both (the ban's scope)")
method_row("unban_user with a duration", "unban_user", { app_id = A, user_id = U, duration = 0 },
  'unknown field "duration" (expected app_id, room_id, user_id)')
method_row("unban_user with an ip", "unban_user", { app_id = A, ip = "1.2.3.4" }, 'unknown field "ip"')
method_row("update_ban without a scope", "update_ban", { app_id = A, duration = 60 },
  "give room_id, user_id or both (the ban's scope)")
method_row("update_ban with an ip", "update_ban", { app_id = A, ip = "1.2.3.4", duration = 60 }, 'unknown field "ip"')

for _, fname in ipairs { "mute_user", "unmute_user" } do
  local function flags(audio, video) return { app_id = A, room_id = R, user_id = U, audio = audio, video = video } end
  method_row(fname .. " audio=false video=false", fname, flags(false, false),
    "audio and video are both false: nothing to do")
  method_row(fname .. " audio=false alone", fname, flags(false, nil), "audio and video are both false: nothing to do")
  method_row(fname .. " audio='yes'", fname, flags("yes", nil), "bad argument 'audio': expected a boolean, got string")
  method_row(fname .. " video=1", fname, flags(nil, 1), "bad argument 'video': expected a boolean, got number")
end
method_row("unmute_user with a duration", "unmute_user", { app_id = A, room_id = R, user_id = U, duration = 60 },
  'unknown field "duration" (expected app_id, room_id, user_id, audio, video)')

-- ---------------------------------------------------------------- call

local function call(...)
  local args = T.pack(...)
  return function() c:call(T.unpack(args, 1, args.n)) end
end
local DR, V = "DismissRoom", "2020-12-01"
local ACTION = bad("call", "action", 'expected an Action name such as "DismissRoom"')
local VERSION = bad("call", "version", 'expected a version such as "2020-12-01"')
local function params_row(name, params, message)
  row("call params " .. name, call(DR, V, params), bad("call", "params", message))
end
local function get_row(name, params, message)
  row("call GET " .. name, call("GetRoomOnlineUsers", "2023-11-01", params, { method = "GET" }),
    P("rtcadmin.call: " .. message))
end
local deep = {}
do
  local t = deep
  for _ = 1, 40 do
    t.a = {}
    t = t.a
  end
end
local cycle = {}
cycle.self = cycle

row("call action 'Kick User'", call("Kick User", V), ACTION)
row("call action ''", call("", V), ACTION)
row("call action nil", call(nil, V), ACTION)
row("call action of 65 letters", call(("A"):rep(65), V), ACTION)
row("call action Kick_User", call("Kick_User", V), ACTION)
row("call action a number", call(123, V), ACTION)
row("call action a table", call({}, V), ACTION)
row("call version '2020/12/01'", call(DR, "2020/12/01"), VERSION)
row("call version ''", call(DR, ""), VERSION)
row("call version nil", call(DR), VERSION)
row("call version a number", call(DR, 20201201), VERSION)
params_row("a string", "AppId=x", "expected a table, got string")
params_row("a function", print, "expected a table, got function")
params_row("holding a function", { f = print }, 'a function cannot be sent as JSON (in key "f")')
params_row("holding a userdata", { x = io.stdout }, 'a userdata cannot be sent as JSON (in key "x")')
params_row("sparse array", { [1] = 1, [3] = 3 }, "sparse array (keys are not exactly 1..n)")
params_row("nested sparse array", { list = { [1] = 1, [3] = 3 } },
  'sparse array (keys are not exactly 1..n) (in key "list")')
params_row("mixing array and keys", { 1, 2, x = 3 }, "table keys must be all strings or an array 1..n")
params_row("with a boolean key", { [true] = 1 }, "table keys must be all strings or an array 1..n")
params_row("40 levels deep", deep, "tables nested deeper than 32 (or a cycle)")
params_row("with a cycle", cycle, "tables nested deeper than 32 (or a cycle)")
params_row("non-UTF-8 value", { s = "\255" }, 'string is not valid UTF-8 (in key "s")')
params_row("non-UTF-8 key", { ["\255"] = 1 }, "table key is not valid UTF-8")
params_row("NUL in a key", { ["a\0b"] = 1 }, "table key contains a NUL byte")
params_row("NaN", { x = 0 / 0 }, 'NaN and infinity cannot be sent as JSON (in key "x")')
params_row("infinity", { x = { -math.huge } }, "NaN and infinity cannot be sent as JSON")
row("call method PUT", call(DR, V, {}, { method = "PUT" }), bad("call", "opts.method", 'expected "GET" or "POST"'))
row("call method get", call(DR, V, {}, { method = "get" }), bad("call", "opts.method", 'expected "GET" or "POST"'))
row("call method true", call(DR, V, {}, { method = true }), bad("call", "opts.method", 'expected "GET" or "POST"'))
row("call opts a string", call(DR, V, {}, "GET"), bad("call", "opts", "expected a table {method = ...}"))
row("call opts typo", call(DR, V, {}, { methd = "GET" }), P('rtcadmin.call: unknown field "methd" (expected method)'))
get_row("with a table value", { AppId = {} }, "GET parameter 'AppId' must be a string, number or boolean, got table")
get_row("with an array", { "a" }, "GET parameters must have string keys")
get_row("with a NUL", { AppId = "a\0b" }, "GET parameter 'AppId' contains a NUL byte")

-- ---------------------------------------------------------------- self: dot calls and closed clients

local METHODS = { "kick_user", "ban_user", "unban_user", "update_ban", "mute_user", "unmute_user", "online_users",
  "call" }
local closed = T.client(emu)
closed:close()
for _, m in ipairs(METHODS) do
  row("client." .. m .. " with a dot", function() c[m](A, R, U) end,
    P("rtcadmin." .. m .. ": expected a client as self (use client:" .. m .. "(...), not client." .. m .. "(...))"))
  row("closed client:" .. m, function() closed[m](closed, A, R, U) end, P("rtcadmin." .. m .. ": the client is closed"))
end
row("closed client:info", function() closed:info() end, P("rtcadmin.info: the client is closed"))

-- ---------------------------------------------------------------- rtcadmin.client options

-- changes: option = value, or option = false to leave it out.
local function client_row(name, changes, message)
  row("client " .. name, function()
    local opts = { endpoint = emu.url, access_key = T.AK, secret_key = T.SK }
    for k, v in pairs(changes) do
      if v == false then opts[k] = nil else opts[k] = v end
    end
    rtcadmin.client(opts)
  end, P("rtcadmin.client: " .. message))
end
local RANGE = "must be > 0 and <= 600 seconds"
local CREDENTIAL = "access key (from options) has a character that cannot stand in a credential"
local BOTH = "give both access_key and secret_key, or neither"

row("client with a string", function() rtcadmin.client("http://x") end, "rtcadmin%.client: .*table.*got string")
client_row("unknown option", { timeoutt = 5 }, 'unknown option "timeoutt" (known: access_key, secret_key,')
client_row("timeout '5'", { timeout = "5" }, "option 'timeout' must be a number of seconds, got string")
for _, t in ipairs { 0, -1, 601, 0 / 0, math.huge } do
  client_row("timeout " .. tostring(t), { timeout = t }, "option 'timeout' " .. RANGE)
end
client_row("connect_timeout 0", { connect_timeout = 0 }, "option 'connect_timeout' " .. RANGE)
for _, ep in ipairs { "my host:8080", "127.0.0.1:8080/api", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:",
  "user@127.0.0.1:8080", "127.0.0.1:8080?x=1" } do
  client_row("endpoint http://" .. ep, { endpoint = "http://" .. ep },
    "option 'endpoint': \"" .. ep .. "\" is not a valid host[:port]")
end
client_row("endpoint with CRLF", { endpoint = "http://127.0.0.1:80\r\nX-Evil: 1" },
  "option 'endpoint' contains NUL, CR or LF")
client_row("endpoint ftp", { endpoint = "ftp://127.0.0.1:21" }, "option 'endpoint': scheme must be http or https")
client_row("endpoint without scheme", { endpoint = "127.0.0.1:8080" },
  "option 'endpoint' must look like https://host[:port], got \"127.0.0.1:8080\"")
client_row("endpoint and host", { host = "127.0.0.1" }, "give either 'endpoint' or 'scheme'/'host', not both")
client_row("scheme ftp", { endpoint = false, scheme = "ftp", host = "127.0.0.1" },
  "options 'scheme'/'host': scheme must be http or https")
client_row("host with a space", { endpoint = false, scheme = "http", host = "my host" },
  "options 'scheme'/'host': \"my host\" is not a valid host[:port]")
client_row("access_key with a space", { access_key = "AKLT with space" }, CREDENTIAL)
client_row("access_key with a comma", { access_key = "AKLT,x" }, CREDENTIAL)
client_row("access_key a number", { access_key = 42 }, "option 'access_key' must be a string, got number")
client_row("access_key without secret_key", { secret_key = false }, BOTH)
client_row("secret_key without access_key", { access_key = false }, BOTH)
client_row("secret_key with CRLF", { secret_key = SECRETS[5] .. "\r\n" }, "option 'secret_key' contains NUL, CR or LF")
client_row("secret_key with NUL", { secret_key = SECRETS[5] .. "\0" }, "option 'secret_key' contains NUL, CR or LF")
client_row("secret_key empty", { secret_key = "" }, "option 'secret_key' must not be empty")
client_row("secret_key a number", { secret_key = 12345 }, "option 'secret_key' must be a string, got number")
client_row("session_token with LF", { session_token = T.STS_TOKEN .. "\n" },
  "option 'session_token' contains NUL, CR or LF")
client_row("region with a slash", { region = "cn/north-1" },
  "option 'region' has a character that cannot stand in a credential scope")
client_row("region with a space", { region = "cn north-1" },
  "option 'region' has a character that cannot stand in a credential scope")
client_row("region empty", { region = "" }, "option 'region' must not be empty")
client_row("versions bad entry", { versions = { KickUser = "2020/12/01" } },
  "option 'versions': bad entry \"KickUser\" = \"2020/12/01\"")
client_row("versions a string", { versions = "2020-12-01" }, "option 'versions' must be a table")

-- ---------------------------------------------------------------- run the rows

T.case("the emulator starts with no requests", function()
  emu.reset()
  T.eq(emu.stats().requests, 0, "requests")
end)

for _, r in ipairs(rows) do
  local name, fn, pattern = r[1], r[2], r[3]
  T.case(name, function()
    local before = c:info().requests + default:info().requests
    local ok, err = pcall(T.raises, pattern, fn)
    local sent = c:info().requests + default:info().requests - before
    if not ok then error(err .. (sent > 0 and " (and it sent " .. sent .. " request)" or ""), 0) end
    T.eq(sent, 0, "requests sent by the module")
    T.match(err, "^[^\n]*test_bad_input%.lua:%d+: ", "the message points at the caller's line")
    for _, secret in ipairs(SECRETS) do T.no_match(err, secret, "error message") end
  end)
end

T.case("close() twice is fine, and a closed client shows no credentials", function()
  local x = T.client(emu)
  x:close()
  x:close()
  for _, secret in ipairs(SECRETS) do T.no_match(tostring(x), secret, "tostring(closed client)") end
end)

T.case("after all rows the emulator saw no request", function()
  T.ok(#rows >= 200, "row count " .. #rows)
  T.eq(emu.stats().requests, 0, "API requests received by the emulator")
end)

T.run(function() emu.stop() end)
